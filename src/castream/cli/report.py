"""``castream report``: re-render a run's report from its stored records."""

from __future__ import annotations

import argparse

from ._options import COMMANDS, SUBCOMMAND, UsageError, _log


def _report(args: argparse.Namespace) -> int:
    """Re-render the report of an evaluation folder (results.md, .json, .csv and the figures) from its
    stored files alone (config.json, run.json, the shards and the saved maps): a finished run, or an
    interrupted one (each cell reports the images it has). Nothing is evaluated and no model is loaded."""
    import json
    from pathlib import Path

    from castream.evaluate.report import write_report
    from castream.evaluate.results import StoredRun

    out = Path(args.out)
    if not (out / "config.json").is_file():
        raise UsageError(f"{out} is not an evaluation folder (no config.json): give evaluate's --out")
    try:
        run = StoredRun(out, log=_log(args), accuracy_margin=args.accuracy_margin)
    except ValueError as err:
        raise UsageError(str(err)) from None
    results = write_report(run, overwrite=args.overwrite)
    print(json.dumps({"out": str(out), "cells": len(results["cells"]), "claims": len(results["claims"])}))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help=COMMANDS["report"], description=_report.__doc__, **SUBCOMMAND)
    p.add_argument("out", metavar="OUT", help="the evaluation folder (castream evaluate --out)")
    p.add_argument(
        "--accuracy-margin",
        type=float,
        default=None,
        help="the accuracy claim's equivalence margin, a fraction (default: the run's, 0.005 = 0.5 points)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace report files castream did not write there, or that changed since (a symbolic link is "
        "replaced, never written through)",
    )
    p.set_defaults(func=_report)
