"""``castream bench``: the speed benchmarks."""

from __future__ import annotations

import argparse

from ._options import COMMANDS, SUBCOMMAND, UsageError, _add_speed_options, positive_int


def _bench(args: argparse.Namespace) -> int:
    """Run the speed benchmarks and print their JSON (quick sizes by default, --full for the issues' ones)."""
    from castream import bench

    extra = ["--device", args.device] if args.device else []
    extra += ["--amp", args.amp] if args.amp else []
    extra += ["--channels-last"] if args.channels_last else []
    if args.images is not None:
        takes = {"causal", "claims", "evaluate", "plan", "precision", "report"}
        if not args.names or set(args.names) - takes:
            raise UsageError(
                f"--images applies to the benchmarks {sorted(takes)}; name them, e.g. castream bench report"
            )
        extra += ["--images", str(args.images)]
    bench.run(args.names or None, full=args.full, extra=extra)
    return 0


def _add_bench(sub) -> None:
    from castream.bench import QUICK

    p = sub.add_parser("bench", help=COMMANDS["bench"], description=_bench.__doc__, **SUBCOMMAND)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"among {list(QUICK)} (default: all)")
    p.add_argument("--full", action="store_true", help="224 x 224, ResNet-18/50 (slow on a CPU)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when present)")
    p.add_argument(
        "--images", type=positive_int, default=None, help="images of the named benchmarks (bench report)"
    )
    _add_speed_options(p)
    p.set_defaults(func=_bench)
