"""Speed benchmark: see castream.bench.evaluate (options: python benchmarks/evaluate.py --help)."""

from castream.bench.evaluate import main

if __name__ == "__main__":
    main()
