"""Speed benchmark: see castream.bench.report (options: python benchmarks/report.py --help)."""

from castream.bench.report import main

if __name__ == "__main__":
    main()
