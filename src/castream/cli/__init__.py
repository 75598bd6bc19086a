"""The ``castream`` command line: a thin layer over the public API, one module per subcommand.

Errors are printed as one readable line (the full traceback with ``--debug``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

import castream

from ._options import COMMANDS, UsageError, _common


def build_parser(full: bool = True) -> argparse.ArgumentParser:
    """The ``castream`` parser. ``full=False`` lists the subcommands by their one-line help only, so that
    ``castream --help`` answers at once (a subcommand's own options import torch for their defaults)."""
    parser = argparse.ArgumentParser(
        prog="castream", description=castream.__doc__.splitlines()[0], parents=[_common(False)]
    )
    parser.add_argument("--version", action="version", version=f"castream {castream.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if not full:
        for name, text in COMMANDS.items():
            sub.add_parser(name, help=text, add_help=False)
        return parser
    from .bench import _add_bench
    from .demo import _add_demo
    from .evaluate import _add_evaluate
    from .explain import _add_explain
    from .report import _add_report
    from .synth import _add_synth
    from .train import _add_train

    for add in (_add_demo, _add_synth, _add_train, _add_explain, _add_evaluate, _add_report, _add_bench):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        command = any(arg in COMMANDS for arg in argv)
        parser = build_parser(full=command)  # a subcommand imports torch: Ctrl-C here is one line too
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:  # argparse's usage errors (2) and --help (0): returned, as every code
            return stop.code if isinstance(stop.code, int) else 2
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return _run(args)
    except KeyboardInterrupt:
        print("castream: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except UsageError as err:
        print(f"castream {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"castream {args.command}: error: {err}", file=sys.stderr)
        return 1
