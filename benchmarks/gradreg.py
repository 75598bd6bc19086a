"""Gradient-regularized training step vs a standard step (thesis ch. 4): target ratio ≤ 3.0.

python benchmarks/gradreg.py --model cifar_resnet18 --size 32 --batch 128
"""

from castream.bench.gradreg import main

if __name__ == "__main__":
    main()
