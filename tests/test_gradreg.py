"""The interpretable-gradient regularizer (thesis ch. 4) against hand-written references."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from castream.cli import main
from castream.data import SyntheticShapes, cifar_train_transform
from castream.data.synthetic import generate
from castream.models import build_model
from castream.preprocess import CIFAR100_MEAN, CIFAR100_STD
from castream.train import ERRORS, GradientRegularizer

from _models import TinyNet
from conftest import state_snapshot


def tiny_mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).double()


def test_guided_and_standard_gradients_match_hand_references():
    net = tiny_mlp()
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    reg = GradientRegularizer("cosine", lam=1.0)
    total, parts = reg(net, x, y)
    l1, l2 = net[0], net[2]
    with torch.no_grad():
        pre = l1(x)
        dlogits = (torch.softmax(l2(pre.clamp(min=0)), 1) - F.one_hot(y, 3)) / len(x)  # d mean-CE / d logits
        upstream = dlogits @ l2.weight
        guided = (upstream.clamp(min=0) * (pre > 0)) @ l1.weight  # positive gradients, positive inputs
    torch.testing.assert_close(reg.last["guided"], guided)
    xr = x.clone().requires_grad_(True)
    (standard,) = torch.autograd.grad(F.cross_entropy(net(xr), y), xr)
    torch.testing.assert_close(reg.last["standard"], standard)
    expected_r = (-F.cosine_similarity(standard, guided, dim=1)).mean()
    torch.testing.assert_close(parts["regularization"], expected_r.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        total, (parts["classification"] + expected_r).to(total.dtype), rtol=1e-5, atol=1e-6
    )


def test_error_functions_by_formula():
    a = torch.tensor([[1.0, -2.0, 2.0], [0.0, 3.0, -4.0]])
    b = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 4.0]])
    torch.testing.assert_close(ERRORS["mae"](a, b), torch.tensor([5 / 3, 8 / 3]))
    torch.testing.assert_close(ERRORS["mse"](a, b), torch.tensor([13 / 3, 64 / 3]))
    cos = torch.tensor([(1 - 2) / (3 * 2**0.5), (9 - 16) / 25])
    torch.testing.assert_close(ERRORS["cosine"](a, b), -cos)
    # histograms |a|/5 = (.2, .4, .4), |b|/2 = (.5, .5, 0): intersection .2 + .4 + 0
    torch.testing.assert_close(ERRORS["histogram"](a[:1], b[:1]), torch.tensor([-0.6]))
    g = torch.randn(8, 50)
    torch.testing.assert_close(ERRORS["cosine"](g, g), -torch.ones(8))
    torch.testing.assert_close(ERRORS["histogram"](g, 3 * g), -torch.ones(8))
    h = ERRORS["histogram"](torch.randn(100, 30), torch.randn(100, 30))
    assert (h >= -1).all() and (h <= 0).all()


def test_regularization_reaches_the_parameters_and_not_the_teacher():
    torch.manual_seed(0)
    model = TinyNet(classes=4)
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    params = [p for p in model.parameters()]
    with_r = torch.autograd.grad(GradientRegularizer(lam=1.0)(model, x, y)[0], params)
    reg = GradientRegularizer(lam=0.0)
    without_r = torch.autograd.grad(reg(model, x, y)[0], params)
    difference = [(a - b).abs().sum() for a, b in zip(with_r, without_r)]
    assert all(d > 0 for d in difference[:-1])  # every weight before the last bias gets a second-order term
    assert not reg.last["guided"].requires_grad and reg.last["guided"].grad_fn is None


def test_model_unchanged_besides_its_parameters():
    model = build_model("cifar_resnet18", num_classes=5)
    before = state_snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    total, _ = GradientRegularizer()(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    total.backward()
    optimizer.step()
    after = state_snapshot(model)
    for key in ("types", "hooks", "requires_grad", "training"):
        assert before[key] == after[key], key


def test_a_few_steps_reduce_both_losses(tmp_path):
    root = generate(tmp_path / "s", classes=3, train=96, val=8, size=32, workers=1, scale=(0.2, 0.3))
    data = SyntheticShapes(root, "train", transform=cifar_train_transform(32))
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([s.label for s in data.samples])
    torch.manual_seed(0)
    model = TinyNet(classes=3)
    reg = GradientRegularizer("cosine", lam=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(12):
        for i in range(0, 96, 32):
            total, parts = reg(model, images[i : i + 32], labels[i : i + 32])
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append((float(parts["classification"]), float(parts["regularization"])))
    first, last = torch.tensor(history[:6]).mean(0), torch.tensor(history[-6:]).mean(0)
    assert last[0] < first[0] and last[1] < first[1]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown error function"):
        GradientRegularizer("l3")
    with pytest.raises(ValueError, match="non-negative"):
        GradientRegularizer(lam=-1)
    tanh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="guided backpropagation is undefined"):
        GradientRegularizer()(tanh, torch.randn(2, 3), torch.tensor([0, 1]))


def test_pixel_reduction_is_the_printed_formula():
    model = TinyNet().eval()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    for error in ("mae", "mse"):
        _, mean = GradientRegularizer(error, 1.0)(model, x, y)
        regularizer = GradientRegularizer(error, 1.0, reduction="pixels")
        _, pixels = regularizer(model, x, y)
        delta = (regularizer.last["standard"] - regularizer.last["guided"]).flatten(1)
        power = 1 if error == "mae" else 2
        by_hand = (delta.abs() ** power).sum(1) / (16 * 16)  # (4.5)-(4.6): 1/p over p = H*W pixels
        torch.testing.assert_close(pixels["regularization"], by_hand.mean())
        torch.testing.assert_close(pixels["regularization"], 3 * mean["regularization"])
    with pytest.raises(ValueError, match="applies to the mae and mse"):
        GradientRegularizer("cosine", reduction="pixels")
    with pytest.raises(ValueError, match="reduction must be one of"):
        GradientRegularizer("mae", reduction="sum")


def test_lambda_presets_and_the_cifar100_preset():
    from castream.preprocess import CIFAR100_MEAN
    from castream.train.gradreg import default_lambda, thesis_config

    assert default_lambda("cifar_mobilenet_v2") == 1e-3 and default_lambda("cifar_resnet18") == 7.5e-3
    assert thesis_config().warmup_epochs == 0 and thesis_config("pytorch-cifar100").warmup_epochs == 1
    rotate = [t for t in cifar_train_transform(32, rotation=15).transforms if "Rotation" in type(t).__name__]
    assert len(rotate) == 1 and list(rotate[0].degrees) == [-15.0, 15.0]
    assert CIFAR100_MEAN[0] == pytest.approx(0.5071, abs=1e-4)
    with pytest.raises(ValueError, match="unknown preset"):
        thesis_config("fast")


def test_cifar_variants_keep_spatial_maps():
    import castream

    resnet = build_model("cifar_resnet18", num_classes=100)
    assert castream.describe(resnet, probe_size=32).strides == (1, 1, 2, 4, 8)  # layer4: 4 x 4 at 32 px
    mobilenet = build_model("cifar_mobilenet_v2", num_classes=100)
    with torch.no_grad():
        assert mobilenet.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("cifar_resnet18", weights="IMAGENET1K_V1")


def test_cli_gradreg(tmp_path):
    root = generate(tmp_path / "s", classes=3, train=16, val=8, size=32, workers=1)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "gradreg",
            "--data",
            f"synthetic:{root}",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--error",
            "mse",
            "--reduction",
            "pixels",
            "--preset",
            "pytorch-cifar100",
            "--quiet",
        ]
    )
    assert code == 0 and (out / "model.safetensors").is_file()
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert {"train_classification", "train_regularization", "acc"} <= set(record)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["recipe"] == "gradreg" and checkpoint["config"]["extra"]["error"] == "mse"
    extra = checkpoint["config"]["extra"]
    assert extra["lam"] == 7.5e-3 and extra["normalization"] == {
        "mean": list(CIFAR100_MEAN),
        "std": list(CIFAR100_STD),
    }  # the preset's
    assert checkpoint["config"]["warmup_epochs"] == 1
    assert (
        tuple(checkpoint["config"]["milestones"]) == (60, 120, 160) and checkpoint["config"]["gamma"] == 0.2
    )
