import argparse
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


def _subcommands(parser, prefix="castream"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subcommands(sub, f"{prefix} {name}")


def test_every_subcommand_has_help():
    found = dict(_subcommands(build_parser()))
    assert {"castream demo", "castream synth", "castream train classifier", "castream train stream"} <= set(
        found
    )
    for name, sub in found.items():
        text = sub.format_help()
        assert text.startswith("usage: " + name) and "--quiet" in text and "--debug" in text


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "castream.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "castream" in out.stdout


def test_synth_and_train_commands(tmp_path, capsys):
    data = tmp_path / "synth"
    assert (
        main(
            [
                "synth",
                "--out",
                str(data),
                "--classes",
                "3",
                "--train",
                "16",
                "--val",
                "8",
                "--size",
                "32",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    common = [
        "--data",
        f"synthetic:{data}",
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--crop-scale",
        "0.6",
        "1.0",
        "--quiet",
    ]
    assert main(["train", "classifier", "--out", str(tmp_path / "clf"), *common]) == 0
    assert (tmp_path / "clf" / "model.safetensors").is_file()
    assert (
        main(
            [
                "train",
                "stream",
                "--out",
                str(tmp_path / "stream"),
                "--checkpoint",
                str(tmp_path / "clf" / "model.safetensors"),
                *common,
            ]
        )
        == 0
    )
    assert (tmp_path / "stream" / "stream.safetensors").is_file()
    capsys.readouterr()
    assert (
        main(["train", "stream", "--out", str(tmp_path / "x"), "--data", f"synthetic:{tmp_path / 'none'}"])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("castream train: error:") and "annotations.json" in err and "Traceback" not in err


def test_ctrl_c_during_start_up_prints_one_line():
    # Ctrl-C arrives exactly when main() starts importing torch (an import hook sends it): no race with the
    # machine's speed, as a fixed delay had
    script = (
        "import os, signal, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            sys.meta_path.remove(self)\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "from castream.cli import main\n"
        "assert 'torch' not in sys.modules\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.exit(main(['bench', '--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and proc.stderr.strip() == "castream: interrupted", proc.stderr


def test_synth_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert (
        main(
            ["synth", "--out", str(tmp_path), "--classes", "3", "--train", "2", "--val", "2", "--size", "32"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "not a castream synthetic set" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"
