"""Speed benchmark: see castream.bench.gradreg (options: python benchmarks/gradreg.py --help)."""

from castream.bench.gradreg import main

if __name__ == "__main__":
    main()
