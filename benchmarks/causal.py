"""Insertion + deletion speed: their time vs the pure forward cost of the same number of perturbed images
at the best batch size, measured in the same run (target ≤ 1.2); also images per second.

    python benchmarks/causal.py --model resnet50 --size 224 --images 2
"""

from castream.bench.causal import main

if __name__ == "__main__":
    main()
