"""Speed benchmark: see castream.bench.train (options: python benchmarks/train.py --help)."""

from castream.bench.train import main

if __name__ == "__main__":
    main()
