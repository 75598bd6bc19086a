"""Simulation benchmark: see castream.bench.claims (options: python benchmarks/claims.py --help)."""

from castream.bench.claims import main

if __name__ == "__main__":
    main()
