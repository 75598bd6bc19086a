import argparse
import subprocess
import sys

import pytest
import torch

import castream
from castream.cli import build_parser, main


def test_version_and_help(capsys):
    assert main(["--version"]) == 0  # argparse's exits are returned as codes
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
    # machine's speed, as a fixed delay had. Python's own SIGINT handler is installed first: a process
    # started from a background job inherits SIGINT ignored, and Python then installs none
    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
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


# --- a user's own model and input statistics (issue 20) ---------------------------------------------------


def _photo(path):
    from PIL import Image

    pixels = (torch.rand(40, 50, 3) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return str(path)


def test_explain_takes_a_model_factory_and_explicit_statistics(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(
        "import torchvision\n\ndef make():\n    return torchvision.models.resnet18(num_classes=7)\n"
    )
    image = _photo(tmp_path / "a.png")
    args = ["explain", image, "--model", f"{tmp_path / 'mine.py'}:make", "--size", "64", "--quiet"]
    assert (
        main(
            [*args, "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--out", str(tmp_path / "o")]
        )
        == 0
    )
    assert capsys.readouterr().out.count(",") == 4  # the factory's 7 classes, top-5 printed
    assert (tmp_path / "o" / "a_gradcam.png").is_file()
    assert main([*args, "--mean", "0.5", "--out", str(tmp_path / "p")]) == 2
    assert "mean and std go together" in capsys.readouterr().err
    # a method variant: its inline options reach the method (an unknown one is named), safe file names
    stats = ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--out", str(tmp_path / "o")]
    assert main([*args, *stats, "--method", "gradcam[layer=layer3]"]) == 0
    capsys.readouterr()
    import numpy as np

    layer3, layer4 = (np.load(tmp_path / "o" / f"a_{t}.npy") for t in ("gradcam_layer_layer3", "gradcam"))
    assert layer3.shape == layer4.shape and not np.allclose(layer3, layer4)
    assert main([*args, *stats, "--method", "gradcam[colour=red]"]) == 1
    assert "has no option ['colour']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "source, factory, message",
    [
        (None, "no_such_package_castream.models:make", "cannot import 'no_such_package_castream.models'"),
        ("def make():\n    return 3\n", "make", "returned a int, not a torch.nn.Module"),
        ("def make():\n    raise RuntimeError('boom')\n", "make", r"make\(\) raised RuntimeError: boom"),
        ("def make():\n    pass\n", "other", "has no attribute 'other'"),
        ("make = 5\n", "make", "make is a int, not a callable"),
        ("import no_such_module_castream\n", "make", "running .* failed \\(ModuleNotFoundError"),
    ],
)
def test_model_factory_failures_are_one_clear_line(tmp_path, capsys, source, factory, message):
    import re

    if source is not None:
        (tmp_path / "mine.py").write_text(source)
        factory = f"{tmp_path / 'mine.py'}:{factory}"
    code = main(["explain", _photo(tmp_path / "a.png"), "--model", factory, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and re.search(message, err), err


def test_timm_models_default_to_their_pretrained_statistics(tmp_path, capsys, monkeypatch):
    """tf_efficientnet_lite0's pretrained_cfg says mean = std = 0.5 and 224 px: explain uses them and
    says so (before: ImageNet statistics, silently)."""
    pytest.importorskip("timm")
    from castream.data import transforms

    seen = {}

    real = transforms.eval_transform

    def spy(size, **kw):
        seen.update(size=size, mean=kw.get("mean"), std=kw.get("std"))
        return real(size, **kw)

    monkeypatch.setattr("castream.data.eval_transform", spy)
    args = [
        "explain",
        _photo(tmp_path / "a.png"),
        "--model",
        "timm:tf_efficientnet_lite0",
        "--num-classes",
        "3",
    ]
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "from its pretrained_cfg" in out and seen["size"] == 224
    assert seen["mean"] == pytest.approx((0.5, 0.5, 0.5)) and seen["std"] == pytest.approx((0.5, 0.5, 0.5))


def test_train_takes_explicit_statistics_and_records_them(tmp_path, capsys):
    data = tmp_path / "synth"
    assert (
        main(["synth", "--out", str(data), "--classes", "3", "--train", "8", "--val", "4", "--size", "32"])
        == 0
    )
    args = ["train", "classifier", "--data", f"synthetic:{data}", "--size", "32", "--epochs", "1"]
    args += ["--batch-size", "4", "--workers", "0", "--quiet", "--out", str(tmp_path / "run")]
    assert main([*args, "--mean", "0.4", "0.4", "0.4", "--std", "0.2", "0.2", "0.2"]) == 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["config"]["extra"]["normalization"] == {"mean": [0.4] * 3, "std": [0.2] * 3}
    capsys.readouterr()
    assert (
        main([*args, "--normalization", "cifar100", "--mean", "0.4", "0.4", "0.4", "--std", "1", "1", "1"])
        == 2
    )
    assert "give either a named normalization or mean/std" in capsys.readouterr().err


def test_option_values_parse_python_booleans():
    """``--option ep.jitter=False`` passed the string "False", which counts as on (issue 21)."""
    from castream.cli.evaluate import _dotted_options

    parsed = _dotted_options(
        ["ep.jitter=False", "ep.lr=0.1", "ep.areas=[0.1,0.2]", "x.y=text"], "--option", "F"
    )
    assert parsed == {"ep": {"jitter": False, "lr": 0.1, "areas": [0.1, 0.2]}, "x": {"y": "text"}}


def test_import_castream_defers_importlib_metadata():
    """The version is looked up on first use, so the console script's start imports less before main()
    installs its Ctrl-C handler (issue 21)."""
    code = "import sys, castream; print('importlib.metadata' in sys.modules); print(castream.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "False" and out[1] == castream.__version__
