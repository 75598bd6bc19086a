"""Speed benchmark: see castream.bench.saliency (options: python benchmarks/saliency.py --help)."""

from castream.bench.saliency import main

if __name__ == "__main__":
    main()
