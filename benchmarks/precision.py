"""Precision check: see castream.bench.precision (options: python benchmarks/precision.py --help)."""

from castream.bench.precision import main

if __name__ == "__main__":
    main()
