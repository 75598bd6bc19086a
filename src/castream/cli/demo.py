"""``castream demo``: the offline end-to-end demo."""

from __future__ import annotations

import argparse

from ._options import COMMANDS, SUBCOMMAND, _log


def _demo(args: argparse.Namespace) -> int:
    """The offline end-to-end demo: synthetic benchmark with several classes per scene, a torchvision
    ResNet classifier with a CA-Stream (shipped weights, or --retrain), GAP vs CA evaluation of Grad-CAM,
    Grad-CAM++, Score-CAM and Opti-CAM against the Fake-CAM and random-map baselines, report (printed at
    the end). Cached: a second run reuses everything."""
    from castream.demo import run_demo

    run_demo(args.out, retrain=args.retrain, progress=not args.quiet, log=_log(args))
    if not args.quiet:
        from pathlib import Path

        print((Path(args.out) / "report" / "results.md").read_text())
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help=COMMANDS["demo"], description=_demo.__doc__, **SUBCOMMAND)
    p.add_argument("--out", default="runs/demo", help="output folder (cache and report)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train the classifier and the stream here (about 18 minutes on 2 CPU cores) instead of "
        "using the shipped weights",
    )
    p.set_defaults(func=_demo)
