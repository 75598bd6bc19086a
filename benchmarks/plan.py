"""Speed benchmark: see castream.bench.plan (options: python benchmarks/plan.py --help)."""

from castream.bench.plan import main

if __name__ == "__main__":
    main()
