"""``castream report``: re-render a run's report from its stored records."""

from __future__ import annotations

import argparse

from ._options import COMMANDS, SUBCOMMAND, UsageError, _log


def _report(args: argparse.Namespace) -> int:
    """Re-render the report of an evaluation folder (results.md, .json, .csv and the figures) from its
    config.json and shards: a finished run, or an interrupted one (each cell reports the images it has).
    Nothing is evaluated; the weights named in config.json must still be there and unchanged, since the
    report states their accuracy and cost and draws its figures with them."""
    import json
    from pathlib import Path

    from castream.evaluate import EvalConfig, Runner
    from castream.evaluate.report import write_report
    from castream.evaluate.results import read_config

    out = Path(args.out)
    if not (out / "config.json").is_file():
        raise UsageError(f"{out} is not an evaluation folder (no config.json): give evaluate's --out")
    stored = read_config(out)
    fields = {k: v for k, v in stored.items() if k != "weights"}
    try:
        config = EvalConfig(**fields, out=str(out))
    except TypeError as err:
        raise UsageError(f"{out}/config.json is not a configuration this castream reads ({err})") from None
    runner = Runner(config, progress=False, log=_log(args))
    runner.claim()  # the stored identity: weights changed since the run are an error naming them
    results = write_report(runner)
    print(json.dumps({"out": str(out), "cells": len(results["cells"]), "claims": len(results["claims"])}))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help=COMMANDS["report"], description=_report.__doc__, **SUBCOMMAND)
    p.add_argument("out", metavar="OUT", help="the evaluation folder (castream evaluate --out)")
    p.set_defaults(func=_report)
