"""The ``castream`` command line: a thin layer over the public API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import castream


def _demo(args: argparse.Namespace) -> int:
    """Smoke example: build a streamed ResNet-50 (random weights, no download) and print its size."""
    import torch
    import torchvision

    model = castream.attach_stream(torchvision.models.resnet50())
    stream = castream.count_parameters(model.stream)
    total = castream.count_parameters(model, trainable_only=False)
    gap = castream.count_flops(model, (1, 3, 224, 224), pooling="gap")
    ca = castream.count_flops(model, (1, 3, 224, 224), pooling="ca")
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    print(f"ResNet-50 + CA-Stream: stream {stream:,} parameters, total {total:,} ({total / 1e6:.2f} M)")
    print(f"GFLOPs per 224x224 image: GAP {gap / 1e9:.3f}, CA {ca / 1e9:.3f} (+{(ca - gap) / 1e9:.4f})")
    print(f"logits {tuple(logits.shape)}, raw attention maps {[tuple(a.shape) for a in model.attention]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="castream", description=castream.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"castream {castream.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the offline demo", description=_demo.__doc__)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
