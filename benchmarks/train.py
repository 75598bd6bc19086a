"""CA-Stream training step vs the backbone's inference forward on the same batch (target ≤ 1.3), and the
synthetic benchmark's generation throughput (images/s).

    python benchmarks/train.py --model resnet50 --size 224 --batch 32
"""

from castream.bench.train import main

if __name__ == "__main__":
    main()
