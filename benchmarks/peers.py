"""castream against pytorch-grad-cam and TorchCAM: see castream.bench.peers (--help for options)."""

from castream.bench.peers import main

if __name__ == "__main__":
    main()
