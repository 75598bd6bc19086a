import subprocess
import sys

import pytest

import castream
from castream.cli import build_parser, main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert castream.__version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "usage: castream" in capsys.readouterr().out


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices
    for name, subparser in sub.choices.items():
        assert subparser.format_help().startswith("usage: castream " + name)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "castream.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "castream" in out.stdout
