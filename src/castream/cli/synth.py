"""``castream synth``: write the synthetic benchmark."""

from __future__ import annotations

import argparse

from ._options import COMMANDS, SUBCOMMAND, _log, nonnegative_int, positive_int


def _synth(args: argparse.Namespace) -> int:
    """Generate the synthetic benchmark (cached: an identical existing set is reused)."""
    from castream.data import synthetic

    root = synthetic.generate(
        args.out,
        classes=args.classes,
        train=args.train,
        val=args.val,
        size=args.size,
        bias=args.bias,
        seed=args.seed,
        scale=tuple(args.shape_scale),
        others=args.others,
        workers=args.workers,
    )
    _log(args)(f"synthetic benchmark in {root}")
    return 0


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help=COMMANDS["synth"], description=_synth.__doc__, **SUBCOMMAND)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", type=positive_int, default=10)
    p.add_argument("--train", type=positive_int, default=10_000, help="training images")
    p.add_argument("--val", type=positive_int, default=1_000, help="validation images")
    p.add_argument("--size", type=positive_int, default=128, help="resolution (pixels)")
    p.add_argument("--bias", type=float, default=0.0, help="probability of a class-coloured background")
    p.add_argument(
        "--others", type=float, default=0.75, help="probability that a scene holds other classes too"
    )
    p.add_argument(
        "--shape-scale",
        type=float,
        nargs=2,
        default=(0.1, 0.2),
        metavar=("MIN", "MAX"),
        help="radius of the class shapes as a fraction of the image size",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument(
        "--workers", type=positive_int, default=None, help="processes (default: CPU count, at most 8)"
    )
    p.set_defaults(func=_synth)
