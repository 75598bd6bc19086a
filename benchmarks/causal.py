"""Speed benchmark: see castream.bench.causal (options: python benchmarks/causal.py --help)."""

from castream.bench.causal import main

if __name__ == "__main__":
    main()
