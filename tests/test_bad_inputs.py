"""A catalogue of bad inputs: each gets a clear error naming what was expected and what was given.

API cases assert the exception type and a message fragment; CLI cases assert the exit code (2 usage,
1 runtime) and one stderr line without a traceback."""

import json

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
