"""A catalogue of bad inputs: each gets a clear error naming what was expected and what was given.

API cases assert the exception type and a message fragment; CLI cases assert the exit code (2 usage,
1 runtime) and one stderr line without a traceback."""

import json
import math

import numpy as np
import pytest
import torch

import castream
from castream import metrics, saliency
from castream.cli import main
from castream.interop.quantus import explain as quantus_explain
from castream.models import build_model

from _models import TinyNet


@pytest.fixture(scope="module")
def net():
    return castream.Preprocess().declare(build_model("resnet10_os16", num_classes=4).eval())


def _images(n=2, size=32):
    return torch.rand(n, 3, size, size)


API_CASES = {
    "targets as strings": (
        lambda m: saliency.GradCAM(m)(_images(), ["a", "b"]),
        TypeError,
        "targets must be",
    ),
    "targets with None": (lambda m: saliency.GradCAM(m)(_images(), [1, None]), TypeError, "targets must be"),
    "targets out of range": (lambda m: saliency.GradCAM(m)(_images(), [1, 9]), ValueError, r"\[0, 4\)"),
    "float64 images": (lambda m: saliency.GradCAM(m)(_images().double()), TypeError, "torch.float64 but"),
    "zero-size images": (
        lambda m: saliency.GradCAM(m)(torch.rand(2, 3, 0, 32)),
        ValueError,
        "non-empty batch",
    ),
    "integer images": (
        lambda m: saliency.GradCAM(m)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
        TypeError,
        "floating-point",
    ),
    "layer after global pooling": (
        lambda m: saliency.GradCAM(m, layer="avgpool")(_images()),
        ValueError,
        "1 x 1 feature map",
    ),
    "input below the minimum": (lambda m: saliency.GradCAM(m)(_images(size=1)), ValueError, "smaller than"),
    "1x1 maps from a small input": (
        lambda m: saliency.GradCAM(m)(_images(size=16)),
        ValueError,
        "1 x 1 feature map",
    ),
    "unknown layer": (lambda m: saliency.GradCAM(m, layer="layer9"), ValueError, "nearest valid names"),
    "bad output selector": (
        lambda m: saliency.GradCAM(m, output="logits")(_images()),
        ValueError,
        "does not select",
    ),
    "numpy maps": (
        lambda m: metrics.insertion(m, _images(), np.zeros((2, 32, 32))),
        TypeError,
        "torch.Tensor",
    ),
    "maps in [0, 255]": (
        lambda m: metrics.deletion(m, _images(), torch.full((2, 32, 32), 255.0)),
        ValueError,
        r"\[0, 1\]",
    ),
    "NaN maps": (
        lambda m: metrics.recognition(m, _images(), torch.full((2, 32, 32), float("nan"))),
        ValueError,
        "NaN",
    ),
    "step 0": (
        lambda m: metrics.insertion(m, _images(), torch.rand(2, 32, 32), step=0),
        ValueError,
        "step must be",
    ),
    "negative batch": (
        lambda m: metrics.aopc(m, _images(), torch.rand(2, 32, 32), batch_size=-1),
        ValueError,
        "batch_size must be",
    ),
    "zero regions": (
        lambda m: metrics.aopc(m, _images(), torch.rand(2, 32, 32), regions=0),
        ValueError,
        "regions must be",
    ),
    "attach_stream given a string": (
        lambda m: castream.attach_stream("resnet50"),
        TypeError,
        "torch.nn.Module",
    ),
    "sanity_check given a method": (
        lambda m: metrics.sanity_check(saliency.GradCAM(m), m, _images()),
        TypeError,
        "method_factory",
    ),
    "random map with a float grid": (
        lambda m: saliency.get("random")(m, grid=2.5),
        TypeError,
        "grid must be an integer",
    ),
    # issue 21: numbers that ran silently before
    "extremal perturbation with an infinite lr": (
        lambda m: saliency.get("ep")(m, lr=float("inf")),
        ValueError,
        "lr must be a finite number",
    ),
    "extremal perturbation with a negative area growth": (
        lambda m: saliency.get("ep")(m, area_growth=-1),
        ValueError,
        "area_growth .* need > 0",
    ),
    "extremal perturbation with jitter as a string": (
        lambda m: saliency.get("ep")(m, jitter="False"),
        TypeError,
        "jitter must be True or False",
    ),
    "fading rate above 1": (
        lambda m: metrics.fading_rate(torch.tensor([[0.5, 1.5]])),
        ValueError,
        r"fractions in \[0, 1\]",
    ),
    "fading rate with NaN": (
        lambda m: metrics.fading_rate(torch.tensor([[float("nan"), 0.5]])),
        ValueError,
        r"fractions in \[0, 1\]",
    ),
    "fading rate of a list": (
        lambda m: metrics.fading_rate([[0.5, 0.5]]),
        TypeError,
        "floating-point tensor",
    ),
    "fading rate of integers": (
        lambda m: metrics.fading_rate(torch.tensor([[0, 1]])),
        TypeError,
        "floating-point tensor",
    ),
    "quantus explain with fractional targets": (
        lambda m: quantus_explain(m, _images().numpy(), np.array([0.7, 1.9])),
        TypeError,
        "targets must be integer class indices",
    ),
    "quantus explain with bool targets": (
        lambda m: quantus_explain(m, _images().numpy(), np.array([True, False])),
        TypeError,
        "targets must be integer class indices",
    ),
    "quantus explain with uint8 images": (
        lambda m: quantus_explain(m, (_images() * 255).to(torch.uint8).numpy(), [0, 1]),
        TypeError,
        "floating-point model inputs",
    ),
    "quantus explain with channels-last images": (
        lambda m: quantus_explain(m, _images(2, 64).permute(0, 2, 3, 1).numpy(), [0, 1]),
        ValueError,
        "look channels-last",
    ),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_bad_input(net, name):
    call, kind, fragment = API_CASES[name]
    with pytest.raises(kind, match=fragment):
        call(net)


def test_scalar_targets_are_accepted(net):
    images = _images()
    reference = saliency.GradCAM(net)(images, 2)
    for scalar in (np.int64(2), torch.tensor(2), np.array(2)):
        torch.testing.assert_close(saliency.GradCAM(net)(images, scalar), reference)


def test_meta_model_is_refused():
    with torch.device("meta"):
        model = TinyNet()
    with pytest.raises(ValueError, match="meta device"):
        saliency.GradCAM(model, layer="features")(torch.rand(1, 3, 8, 8))


def test_synthetic_generate_bad_numbers(tmp_path):
    from castream.data.synthetic import generate

    with pytest.raises(TypeError, match="size must be an integer"):
        generate(tmp_path / "x", size=64.0)
    with pytest.raises(ValueError, match="train must be an integer >= 0, got -1"):
        generate(tmp_path / "x", train=-1)
    assert not (tmp_path / "x").exists()


def test_corrupt_evaluation_config_names_the_file(tmp_path):
    from castream.evaluate import EvalConfig, Runner

    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=0, val=4, size=32, workers=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{broken")
    config = EvalConfig(
        model="resnet10_os16",
        data=f"synthetic:{root}",
        out=str(tmp_path / "out"),
        poolings=("gap",),
        methods=("gradcam",),
        size=32,
        resize=32,
    )
    with pytest.raises(ValueError, match=r"config\.json"):
        Runner(config, progress=False).run()


CLI_CASES = [
    (  # issue 21: an option of a method that is not evaluated was ignored with exit code 0
        [
            *("evaluate", "--model", "resnet18", "--data", "synthetic:x", "--out", "o"),
            *("--methods", "gradcam", "--option", "scorecam.batch_size=abc"),
        ],
        1,
        "not among the methods",
    ),
    (
        ["evaluate", "--model", "resnet18", "--data", "synthetic:x", "--out", "o", "--compare", "nopath"],
        2,
        "LABEL=PATH",
    ),
    (["synth", "--out", "SYNTH", "--classes", "3", "--size", "8"], 1, "size must be an integer >= 32, got 8"),
    (["synth", "--out", "SYNTH", "--classes", "30"], 1, "classes must lie in [2, 12]"),
]


@pytest.mark.parametrize("argv,code,fragment", CLI_CASES)
def test_cli_bad_input(tmp_path, capsys, argv, code, fragment):
    argv = [str(tmp_path / "synth") if a == "SYNTH" else a for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_cli_evaluate_compare_runs_side_by_side(tmp_path, capsys):
    from castream.models import save_weights

    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=0, val=4, size=32, workers=1)
    torch.manual_seed(0)
    save_weights(build_model("resnet10_os16", num_classes=3), tmp_path / "a.safetensors")
    argv = [
        "evaluate",
        "--model",
        "resnet10_os16",
        "--data",
        f"synthetic:{root}",
        "--checkpoint",
        str(tmp_path / "a.safetensors"),
    ]
    argv += [
        "--methods",
        "gradcam",
        "--baselines",
        "--metrics",
        "recognition",
        "--images",
        "2",
        "--size",
        "32",
    ]
    argv += [
        "--resize",
        "32",
        "--compare",
        f"copy={tmp_path / 'a.safetensors'}",
        "--out",
        str(tmp_path / "o"),
        "--quiet",
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {(c["model"], c["method"]) for c in results["cells"]} == {
        ("resnet10_os16", "gradcam"),
        ("copy", "gradcam"),
    }


def test_cli_explain_and_weights_errors(tmp_path, capsys, monkeypatch):
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "x.png")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    base = [
        "explain",
        str(tmp_path / "x.png"),
        "--model",
        "resnet18",
        "--size",
        "64",
        "--out",
        str(tmp_path / "o"),
    ]
    cases = [
        (["--num-classes", "0"], 2, "--num-classes must be a positive integer, got 0"),
        (
            ["--num-classes", "3", "--labels", str(tmp_path / "labels.txt")],
            2,
            "--labels names 2 classes, but the model has 3 outputs",
        ),
        (
            ["--weights", "NOPE"],
            1,
            "unknown weights 'NOPE' for resnet18; valid: ['IMAGENET1K_V1', 'DEFAULT']",
        ),
    ]
    for extra, code, fragment in cases:
        assert main([*base, *extra]) == code, extra
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1, err
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    assert main([*base, "--weights", "IMAGENET1K_V1"]) == 1
    err = capsys.readouterr().err
    assert "not in the local cache" in err and "--checkpoint" in err and len(err.strip().splitlines()) == 1


def test_boxes_option_only_for_imagenet(tmp_path):
    from castream.data.registry import open_dataset

    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=0, val=2, size=32, workers=1)
    with pytest.raises(
        ValueError, match="imagenet data only, not synthetic; the synthetic benchmark has its own"
    ):
        open_dataset(f"synthetic:{root}", "eval", boxes=str(tmp_path))


def test_evaluate_size_below_the_model_minimum(tmp_path):
    from castream.evaluate import EvalConfig, Runner

    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=0, val=2, size=32, workers=1)
    config = EvalConfig(
        model="resnet10_os16",
        data=f"synthetic:{root}",
        out=str(tmp_path / "o"),
        poolings=("gap",),
        size=8,
        resize=8,
    )
    with pytest.raises(
        ValueError, match="size 8 is smaller than resnet10_os16 accepts: its last stage has stride 16"
    ):
        Runner(config, progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_malformed_method_option(tmp_path, capsys):
    argv = [
        "evaluate",
        "--model",
        "resnet18",
        "--data",
        "synthetic:x",
        "--out",
        str(tmp_path),
        "--option",
        "scorecam=3",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--option takes METHOD.KEY=VALUE" in err and len(err.strip().splitlines()) == 1


def test_checkpoint_of_another_architecture_lists_the_keys(tmp_path):
    """The cause was cut off after 'Error(s) in loading state_dict for ResNet:' (issue 21)."""
    import torchvision

    from castream.models import load_weights, save_weights

    save_weights(torchvision.models.resnet18(num_classes=5), tmp_path / "r18.safetensors")
    with pytest.raises(ValueError) as info:
        load_weights(torchvision.models.resnet34(num_classes=10), tmp_path / "r18.safetensors")
    message = str(info.value)
    assert (
        "r18.safetensors does not fit ResNet" in message
        and "96 missing keys (layer1.2.conv1.weight" in message
    )
    assert "fc.weight (5, 512) vs (10, 512)" in message


def test_strides_are_measured_not_read_from_a_small_probe():
    """A ResNet probed at 56 px has a 2 x 2 last map; its strides are still 4..32 (they read as 28 before,
    and 28-px images were then accepted with all-zero attention maps)."""
    import torchvision

    expected = castream.describe(torchvision.models.resnet18()).strides
    assert expected[-1] == 32
    for size in (56, 100, 112):
        assert castream.describe(torchvision.models.resnet18(), probe_size=size).strides == expected
    model = castream.attach_stream(torchvision.models.resnet18(), probe_size=56)
    with pytest.raises(ValueError, match="at least 32 pixels"):
        model(torch.randn(1, 3, 28, 28))


# --- reliability round 3 (issue 32): the regressions ----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "x.png", "--size", "0"],
        ["evaluate", "--model", "m", "--data", "synthetic:x", "--out", "o", "--size", "0"],
        ["evaluate", "--model", "m", "--data", "synthetic:x", "--out", "o", "--images", "0"],
        ["evaluate", "--model", "m", "--data", "synthetic:x", "--out", "o", "--metric-batch", "-3"],
        ["evaluate", "--model", "m", "--data", "synthetic:x", "--out", "o", "--batch-size", "0"],
        ["explain", "x.png", "--batch-size", "0"],
        ["synth", "out", "--train", "0"],
        ["train", "classifier", "--model", "m", "--data", "synthetic:x", "--out", "o", "--epochs", "0"],
        ["train", "classifier", "--model", "m", "--data", "synthetic:x", "--out", "o", "--seed", "-1"],
    ],
)
def test_zero_and_negative_counts_are_refused_not_defaulted(argv, capsys):
    """``--size 0`` once ran at 224 px (``size or 224``): every count and size is checked as given."""
    assert main(argv) == 2  # argparse's usage error, returned as a code
    assert "must be" in capsys.readouterr().err


def test_describe_on_the_meta_device_and_nan_weights():
    import torchvision

    import castream

    plain = castream.describe(torchvision.models.resnet18())
    with torch.device("meta"):
        meta = torchvision.models.resnet18()
    found = castream.describe(meta)  # no values to verify: the layout only
    assert (found.taps, found.dims, found.strides) == (plain.taps, plain.dims, plain.strides)
    broken = torchvision.models.resnet18()
    broken.fc.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite logits .*\['fc.weight'\]"):
        castream.describe(broken)
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        castream.attach_stream(broken)


def test_extremal_perturbation_with_a_step_above_the_image_size():
    import torchvision

    import castream
    from castream import saliency

    model = castream.Preprocess().declare(torchvision.models.resnet18(num_classes=5).eval())
    x = torch.randn(1, 3, 32, 32)
    for step in (1000, 33):
        maps = saliency.ExtremalPerturbation(model, step=step, max_iter=2)(x)
        assert maps.shape == (1, 32, 32) and torch.isfinite(maps).all()


# --- reliability round 3 (issue 32): silent or destructive, by class ---------------------------------


@pytest.mark.parametrize(
    "mean,std,error,fragment",
    [
        ((124, 116, 104), (58, 57, 57), ValueError, r"0-255 statistics\? divided by 255 .*0\.4863"),
        ((0.5,) * 3, (255,) * 3, ValueError, "each std at most 1"),
        ((-0.1, 0.5, 0.5), (0.2,) * 3, ValueError, r"each mean in \[0, 1\]"),
        ((float("nan"), 0.5, 0.5), (0.2,) * 3, ValueError, "must be finite"),
        ((0.5,) * 3, (float("inf"), 0.2, 0.2), ValueError, "must be finite"),
        ((0.5,) * 3, (1e-30,) * 3, ValueError, "below 0.001"),
        ((0.5,) * 3, (0.0, 0.2, 0.2), ValueError, "std must be positive"),
        ((True, False, True), (0.2,) * 3, TypeError, "real numbers"),
        (("0.5", "0.5", "0.5"), (0.2,) * 3, TypeError, "real numbers"),
        ("0.5", (0.2,), TypeError, "sequence of numbers"),
    ],
)
def test_impossible_input_statistics_are_refused(mean, std, error, fragment):
    with pytest.raises(error, match=fragment):
        castream.Preprocess(mean, std)


def test_possible_input_statistics_are_kept():
    """Raw pixels (0, 1), [-1, 1] inputs (0.5, 0.5) and a model of 0-255 pixels (0, 1/255) stay legal."""
    for mean, std in (((0.0,) * 3, (1.0,) * 3), ((0.5,) * 3, (0.5,) * 3), ((0.0,) * 3, (1 / 255,) * 3)):
        assert castream.Preprocess(mean, std).std == std
    assert castream.Preprocess(torch.tensor([0.5]), np.array([0.25])).mean == (0.5,)


@pytest.mark.parametrize("stats", [["124", "116", "104", "--std", "58", "57", "57"], ["0.5", "--std", "nan"]])
def test_cli_refuses_impossible_statistics_before_any_work(tmp_path, capsys, stats):
    argv = ["evaluate", "--model", "resnet18", "--data", "synthetic:x", "--out", str(tmp_path / "o")]
    assert main([*argv, "--mean", *stats]) == 2
    err = capsys.readouterr().err
    assert "statistics" in err or "finite" in err, err
    assert not (tmp_path / "o").exists()


def test_training_statistics_are_recorded_with_the_weights_and_reused(tmp_path, capsys):
    """One rule for train and evaluate: the statistics of training travel in model.safetensors, evaluate
    and explain use them when none are given, and refuse other explicit ones naming both."""
    from castream.models import load_weights

    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=6, val=4, size=32, workers=1)
    stats = ["--mean", "0.4", "0.5", "0.6", "--std", "0.2", "0.25", "0.3"]
    train = ["train", "classifier", "--model", "resnet10_os16", "--data", f"synthetic:{root}"]
    train += ["--out", str(tmp_path / "t"), "--epochs", "1", "--batch-size", "4", "--size", "32"]
    assert main([*train, "--resize", "32", "--workers", "0", "--quiet", *stats]) == 0
    weights = tmp_path / "t" / "model.safetensors"
    loaded = load_weights(build_model("resnet10_os16", num_classes=3), weights)
    assert loaded.castream_preprocess == castream.Preprocess((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    evaluate = ["evaluate", "--model", "resnet10_os16", "--data", f"synthetic:{root}", "--checkpoint"]
    evaluate += [str(weights), "--methods", "gradcam", "--baselines", "--metrics", "recognition"]
    evaluate += ["--images", "2", "--size", "32", "--resize", "32"]
    assert main([*evaluate, "--out", str(tmp_path / "e")]) == 0
    assert "recorded with" in capsys.readouterr().out
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert (config["mean"], config["std"]) == ([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    assert main([*evaluate, "--out", str(tmp_path / "f"), "--normalization", "imagenet", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was trained with input statistics mean (0.4, 0.5, 0.6)" in err and "0.485" in err, err
    from castream.evaluate import EvalConfig

    with pytest.raises(ValueError, match="was trained with input statistics"):
        EvalConfig(
            model="resnet10_os16",
            data="x",
            out="o",
            checkpoint=str(weights),
            mean=(0.5,) * 3,
            std=(0.2,) * 3,
            poolings=("gap",),
        )
    assert (
        EvalConfig(
            model="resnet10_os16", data="x", out="o", checkpoint=str(weights), poolings=("gap",)
        ).preprocess()
        == loaded.castream_preprocess
    )


def test_a_timm_model_gets_the_same_default_statistics_in_train_and_evaluate():
    pytest.importorskip("timm")
    from castream.cli._options import _inputs
    from castream.cli.train import _training_stats
    from castream.preprocess import input_statistics

    expected, source = input_statistics(model="timm:vit_small_patch16_224")
    assert expected.mean == (0.5, 0.5, 0.5) and "pretrained_cfg" in source
    args = __import__("argparse").Namespace(
        model="timm:vit_small_patch16_224",
        mean=None,
        std=None,
        normalization=None,
        checkpoint=None,
        size=224,
        quiet=True,
    )
    assert _inputs(args)[1] == expected
    assert _training_stats(args)[0] == {"mean": expected.mean, "std": expected.std}


def _tiny_evaluation(tmp_path, out="o"):
    """A 2-image GAP-only evaluation of a random resnet10_os16 (seconds): its argv and the folder."""
    from castream.models import save_weights

    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=0, val=4, size=32, workers=1)
    weights = tmp_path / "w.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        save_weights(build_model("resnet10_os16", num_classes=3), weights)
    argv = ["evaluate", "--model", "resnet10_os16", "--data", f"synthetic:{root}", "--checkpoint"]
    argv += [str(weights), "--methods", "gradcam", "--baselines", "--metrics", "recognition", "--images", "2"]
    argv += ["--size", "32", "--resize", "32", "--out", str(tmp_path / out), "--quiet"]
    return argv, tmp_path / out


def test_evaluate_never_writes_through_a_symlink_or_over_a_foreign_file(tmp_path, capsys):
    """Issue 32 item 7: the report wrote results.md/.json/.csv and the figures through symlinks."""
    argv, out = _tiny_evaluation(tmp_path)
    assert main(argv) == 0
    outside = tmp_path / "precious.txt"
    outside.write_text("mine")
    for name in ("results.md", "results.json", "results.csv", "per_image.csv", "curves.png"):
        if not (out / name).exists() and name == "curves.png":
            continue
        (out / name).unlink()
        (out / name).symlink_to(outside)
        assert main(["report", str(out)]) == 1
        err = capsys.readouterr().err
        assert name in err and "castream report OUT --overwrite" in err, err
        assert outside.read_text() == "mine"
        assert main(["report", str(out), "--overwrite"]) == 0  # replaces the link, not its target
        assert not (out / name).is_symlink() and outside.read_text() == "mine"
    (out / "results.md").write_text("my own notes")  # a file castream did not write, whatever its name
    assert main(argv) == 1 and "results.md" in capsys.readouterr().err
    assert (out / "results.md").read_text() == "my own notes"


def test_run_records_are_never_appended_through_a_symlink(tmp_path, capsys):
    argv, out = _tiny_evaluation(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out.mkdir()
    argv += ["--batch-size", "1"]  # a record per image
    assert main(argv) == 0
    shard = next((out / "shards").glob("*.jsonl"))
    first = shard.read_bytes().splitlines(keepends=True)[0]  # the second image is left to compute
    (outside / shard.name).write_bytes(first)
    shard.unlink()
    shard.symlink_to(outside / shard.name)
    assert main(argv) == 1
    assert "is a symbolic link" in capsys.readouterr().err
    assert (outside / shard.name).read_bytes() == first
    second, folder = _tiny_evaluation(tmp_path, "p")
    assert main(second) == 0
    (folder / "maps").rename(tmp_path / "maps")
    (tmp_path / "maps" / "grid.json").unlink()  # the grid's files are written again
    (folder / "maps").symlink_to(tmp_path / "maps", target_is_directory=True)
    assert main(second) == 1 and "maps is a symbolic link" in capsys.readouterr().err
    assert not (tmp_path / "maps" / "grid.json").exists()


def test_non_finite_and_foreign_records_are_listed_and_never_averaged(tmp_path, capsys):
    """Issue 32 item 8: an Infinity metric value, or a record of an image outside the selection, was
    averaged into the report's means and intervals."""
    argv, out = _tiny_evaluation(tmp_path)
    assert main([*argv, "--batch-size", "1"]) == 0
    shard = next((out / "shards").glob("*-gap-gradcam.rank0.jsonl"))
    first, second = (json.loads(line) for line in shard.read_text().splitlines())
    clean = next(
        c for c in json.loads((out / "results.json").read_text())["cells"] if c["method"] == "gradcam"
    )
    second["images"][0]["ad"] = float("inf")
    foreign = {**first, "images": [{**first["images"][0], "index": 99, "ad": 100.0}]}
    shard.write_text("".join(json.dumps(r) + "\n" for r in (first, second, foreign)))
    assert main(["report", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    cell = next(c for c in results["cells"] if c["method"] == "gradcam")
    ad = cell["metrics"]["ad"]
    assert (
        ad["n"] == 1 and math.isfinite(ad["mean"]) and ad["mean"] == pytest.approx(first["images"][0]["ad"])
    )
    assert clean["metrics"]["ad"]["n"] == 2
    ignored = " ".join(results["ignored_records"])
    assert "non-finite values (ad)" in ignored and "outside the run's selection [99]" in ignored, ignored


def test_no_test_of_infinite_values_and_no_significance_on_too_few_images():
    """Issue 32 items 8-9: paired_bootstrap of an infinite value was "significant", judge of infinite
    bounds "reproduced"; the GAP-vs-CA table called one pair of 10 images significant."""
    from castream.evaluate import claims

    a, b = torch.zeros(40), torch.ones(40)
    b[3] = float("inf")
    for test in (metrics.paired_bootstrap, metrics.paired_test):
        with pytest.raises(ValueError, match="must be finite"):
            test(a, b)
    entry = {
        "n": 40,
        "mean": 1.0,
        "low": -float("inf"),
        "high": float("inf"),
        "p_greater": 0.001,
        "p_less": 1.0,
    }
    with pytest.raises(ValueError, match="non-finite"):
        claims.judge({"ad": entry}, {"ad": 1})
    with pytest.raises(ValueError, match="non-finite"):
        claims.judge_equivalence({**entry, "low": 0.0, "high": float("inf")}, 0.005)
    ten = metrics.paired_test(torch.zeros(10), torch.arange(10.0) + 1)
    assert ten["p_greater"] <= claims.ALPHA and not claims.significant(ten)  # clear, but on 10 images
    many = metrics.paired_test(torch.zeros(30), torch.arange(30.0) + 1)
    assert claims.significant(many)
    # the batched tests equal one call each (the same draws of the seed; a batched std may differ in
    # the last bit)
    pairs = {"x": (torch.rand(50), torch.rand(50)), "y": (torch.rand(50), torch.rand(50))}
    together = metrics.paired_tests(pairs, seed=4)
    for key, pair in pairs.items():
        alone = metrics.paired_test(*pair, seed=4)
        assert together[key] == pytest.approx(alone, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    "body,fragment",
    [
        ("import sys\nsys.exit(0)\n", "it called sys.exit(0)"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        ("def net():\n    raise SystemExit(3)\n", "net() raised SystemExit (it called sys.exit(3))"),
    ],
)
def test_a_factory_that_exits_is_an_error_not_a_silent_success(tmp_path, capsys, body, fragment):
    (tmp_path / "net.py").write_text(body)
    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=0, val=2, size=32, workers=1)
    argv = ["evaluate", "--model", f"{tmp_path / 'net.py'}:net", "--data", f"synthetic:{root}"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert fragment in err and "model factory" in err, err


def test_a_factory_head_is_replaced_only_when_asked(tmp_path, capsys):
    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=4, val=2, size=32, workers=1)
    (tmp_path / "net.py").write_text(
        "from castream.models import build_model\n\n\n"
        "def net():\n    return build_model('resnet10_os16', num_classes=5)\n"
    )
    argv = ["train", "classifier", "--model", f"{tmp_path / 'net.py'}:net", "--data", f"synthetic:{root}"]
    argv += ["--epochs", "1", "--batch-size", "4", "--size", "32", "--resize", "32", "--workers", "0"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "has 5 outputs but" in err and "--new-head" in err, err
    assert main([*argv, "--out", str(tmp_path / "b"), "--new-head"]) == 0
    assert "5-class head is replaced" in capsys.readouterr().out


def test_an_interrupted_owned_write_never_locks_its_folder(tmp_path, monkeypatch):
    """Issue 32 item 11: a write killed between a file's rename and the manifest's update left a file
    the next run called "not castream's"; an unreadable manifest gave the same false reason."""
    import os
    from pathlib import Path

    from castream import utils

    def text(value):
        return lambda tmp: tmp.write_text(value)

    utils.write_owned(tmp_path, {"a.txt": text("1"), "b.txt": text("1")}, overwrite=False)
    real = os.replace

    def dies_after_first_rename(src, dst):
        if Path(dst).name == "b.txt":
            raise KeyboardInterrupt  # a kill after a.txt was replaced, before b.txt and the manifest
        return real(src, dst)

    monkeypatch.setattr(utils.os, "replace", dies_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        utils.write_owned(tmp_path, {"a.txt": text("2"), "b.txt": text("2")}, overwrite=False)
    monkeypatch.setattr(utils.os, "replace", real)
    assert (tmp_path / "a.txt").read_text() == "2" and (tmp_path / "b.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [utils.MANIFEST, "a.txt", "b.txt"]  # no temp file
    utils.write_owned(tmp_path, {"a.txt": text("3"), "b.txt": text("3")}, overwrite=False)  # both castream's
    (tmp_path / utils.MANIFEST).write_text("{broken")
    with pytest.raises(FileExistsError, match=r"cannot read castream's record .* cannot tell its a.txt"):
        utils.write_owned(tmp_path, {"a.txt": text("4")}, overwrite=False)
    utils.write_owned(tmp_path, {"a.txt": text("4")}, overwrite=True)
    utils.write_owned(tmp_path, {"a.txt": text("5")}, overwrite=False)  # the manifest is whole again


@pytest.mark.parametrize(
    "raised",
    [
        lambda: __import__("safetensors").SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
        lambda: OSError("100000 requested and 8176 written"),  # numpy's short write
        lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
    ],
)
def test_a_full_disk_is_reported_as_one_whichever_library_writes(tmp_path, raised):
    from castream import utils

    def write(tmp):
        tmp.write_text("partial")
        raise raised()

    (tmp_path / "w.safetensors").write_text("previous")
    with pytest.raises(
        OSError, match=r"No space left on the disk while writing .* previous w\.safetensors is intact"
    ):
        utils.atomic_write(tmp_path / "w.safetensors", write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    assert (tmp_path / "w.safetensors").read_text() == "previous"


def test_a_full_disk_for_real_when_a_small_filesystem_can_be_mounted(tmp_path):
    import subprocess

    from castream.models import save_weights

    folder = tmp_path / "full"
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        with pytest.raises(OSError, match="No space left on the disk"):
            save_weights(build_model("resnet10_os16", num_classes=3), folder / "m.safetensors")
        with pytest.raises(OSError, match="No space left on the disk"):
            castream.evaluate.store.Store(folder).save_array(folder / "x.npy", np.zeros(100_000))
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_kill_during_the_first_checkpoint_write_does_not_block_the_folder(tmp_path):
    from castream.train import ClassifierRecipe, TrainConfig, Trainer

    root = castream.data.synthetic.generate(tmp_path / "s", classes=3, train=4, val=0, size=32, workers=1)
    train = castream.data.SyntheticShapes(
        root, "train", transform=castream.data.eval_transform(32, resize=32)
    )
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pt.k3x_9q.tmp").write_bytes(b"half a checkpoint")  # what a SIGKILL leaves
    config = TrainConfig(epochs=1, batch_size=4, workers=0, milestones=())
    Trainer(
        ClassifierRecipe(build_model("resnet10_os16", num_classes=3)),
        train,
        None,
        config,
        out,
        progress=False,
    ).fit()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl"]


def test_adversarial_verification_refuses_host_photos_of_another_dtype(net):
    images = _images(2)
    hosts = (torch.rand(2, 3, 3, 32, 32) * 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"got torch\.uint8 on cpu: normalize 0-255 photos"):
        metrics.adversarial_verification(net, images, torch.rand(2, 32, 32), hosts, [0, 1])
    with pytest.raises(TypeError, match=r"got torch\.float64"):
        metrics.adversarial_verification(net, images, torch.rand(2, 32, 32), hosts.double(), [0, 1])


def test_benchmarks_time_a_subject_and_its_reference_in_turn():
    """Issue 32 item 15: a reference timed in one block and the subject in another let a load change
    between the blocks into the ratio (1.39 printed where interleaved timing gives 1.00-1.03)."""
    from castream.bench._timing import interleaved, ratio_fields

    calls = []
    times = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), 3
    )
    assert calls == ["a", "b"] * 4  # one warm-up round, then a and b alternate in every repeat
    assert set(times["a"]) == {"min", "median"} and times["a"]["min"] <= times["a"]["median"]
    fields = ratio_fields({"min": 1.0, "median": 2.0}, {"min": 0.5, "median": 0.5}, factor=2)
    assert fields["ratio"] == 2.0 and fields["ratio_min"] == 1.0 and fields["reference_seconds"] == 1.0
