"""Hugging Face ``transformers`` classifiers, built from configs (no weights): ResNet, ConvNeXt and ViT go
through describe, attach_stream, every applicable method, the metrics, explain and evaluate."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import castream
from castream import metrics, saliency
from castream.maps import finalize_maps

transformers = pytest.importorskip("transformers")

STATS = castream.Preprocess()


def hf_resnet(classes=5):
    config = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1], num_labels=classes
    )
    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(config).eval()


def hf_convnext(classes=5):
    config = transformers.ConvNextConfig(
        hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1], num_labels=classes
    )
    torch.manual_seed(0)
    return transformers.ConvNextForImageClassification(config).eval()


def hf_vit(classes=5):
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=classes,
    )
    torch.manual_seed(0)
    return transformers.ViTForImageClassification._from_config(config, attn_implementation="eager").eval()


FAST = {"opticam": {"max_iter": 5}, "extremalperturbation": {"max_iter": 10}}  # they run; others test values
CNN_METHODS = [
    m for m in saliency.available() if m not in ("rawattention", "rollout", "transformerattribution")
]


@pytest.mark.parametrize("build, family", [(hf_resnet, "hf.resnet"), (hf_convnext, "hf.convnext")])
def test_hf_cnns_are_described_and_streamed(build, family):
    model, x = build(), torch.rand(2, 3, 64, 64)
    spec = castream.describe(model)
    assert (
        spec.family == family and spec.num_classes == 5 and len(spec.taps) == (5 if "resnet" in family else 4)
    )
    stream = castream.attach_stream(model, probe_size=64)
    with torch.no_grad():
        torch.testing.assert_close(stream(x, pooling="gap"), model(x).logits)
        assert stream(x).shape == (2, 5)
    assert castream.saliency.RawAttention(stream)(x).shape == (2, 64, 64)


@pytest.mark.parametrize("build", [hf_resnet, hf_convnext])
def test_every_cnn_method_runs_on_hf_models(build):
    model, x = build(), torch.rand(2, 3, 64, 64)
    for name in CNN_METHODS:
        cls = saliency.get(name)
        if name == "cam" and build is hf_convnext:  # a LayerNorm between the pooling and the linear layer
            with pytest.raises(ValueError, match="use gradcam instead"):
                cls(model)
            continue
        if name == "guidedbackprop" and build is hf_convnext:  # GELU only
            with pytest.raises(ValueError, match="no ReLU-type activation"):
                cls(model)(x)
            continue
        options = {"preprocess": STATS} if cls.masks_input else {}
        options.update(FAST.get(name, {}))
        maps = cls(model, **options)(x)
        assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1, name


def test_hf_gradcam_equals_a_hand_written_one():
    model, x = hf_resnet(), torch.rand(2, 3, 64, 64)
    layer = model.resnet.encoder.stages[3]
    store = {}
    handle = layer.register_forward_hook(lambda m, a, out: store.update(a=out))
    logits = model(x).logits
    handle.remove()
    target = logits.argmax(1)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), store["a"])
    raw = torch.relu((grad.mean((2, 3), keepdim=True) * store["a"]).sum(1)).detach()
    torch.testing.assert_close(
        saliency.GradCAM(model)(x), finalize_maps(raw, (64, 64), True), atol=1e-5, rtol=0
    )


def test_hf_vit_attention_maps_equal_the_models_own_attentions():
    model, x = hf_vit(), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        attentions = model(x, output_attentions=True).attentions  # (B, heads, N, N) per block
    last = attentions[-1].mean(1)[:, 0, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(saliency.RawAttention(model)(x), finalize_maps(last, (32, 32), True))
    eye = torch.eye(17)
    rollout = eye
    for a in attentions:
        mixed = 0.5 * a.mean(1) + 0.5 * eye
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    expected = finalize_maps(rollout[:, 0, 1:].reshape(2, 4, 4), (32, 32), True)
    found = saliency.Rollout(model)(x)
    assert found.shape == (2, 32, 32)
    # castream's rollout convention is checked against the paper elsewhere; here the attentions it
    # reads must be the model's: the same maps from the same attentions
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-4)
    assert saliency.TransformerAttribution(model)(x).shape == (2, 32, 32)
    for name in ("gradcam", "gradcam++", "scorecam"):
        cls = saliency.get(name)
        options = {"preprocess": STATS} if cls.masks_input else {}
        assert cls(model, reshape=True, **options)(x).shape == (2, 32, 32)


@pytest.mark.parametrize("build, size", [(hf_resnet, 64), (hf_vit, 32)])
def test_metrics_take_hf_outputs(build, size):
    model, x = build(), torch.rand(2, 3, size, size)
    maps = torch.rand(2, size, size)
    r = metrics.recognition(model, x, maps, None, preprocess=STATS)
    with torch.no_grad():
        p = model(x).logits.softmax(1).amax(1)
    torch.testing.assert_close(r["p"], p)
    assert metrics.insertion(model, x, maps, None, preprocess=STATS).shape == (2,)


FACTORY = """
import torch, transformers

def net():
    config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1],
                                       num_labels=3, id2label={0: "apple", 1: "pear", 2: "plum"},
                                       label2id={"apple": 0, "pear": 1, "plum": 2})
    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(config)
"""


def test_hf_models_through_explain_and_evaluate(tmp_path, capsys):
    from castream.cli import main

    (tmp_path / "net.py").write_text(FACTORY)
    rng = np.random.default_rng(0)
    for name in ("plum", "apple"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / name / f"{k}.png"
            )
    spec = f"{tmp_path / 'net.py'}:net"
    stats = ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]
    args = ["explain", str(tmp_path / "photos"), "--model", spec, "--size", "64", *stats, "--json"]
    assert main([*args, "--out", str(tmp_path / "e")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 4 and {r["explained"]["name"] for r in records} <= {"apple", "pear", "plum"}
    out = tmp_path / "run"
    args = ["evaluate", "--model", spec, "--data", f"folder:{tmp_path / 'photos'}", "--out", str(out)]
    args += ["--size", "64", "--resize", "64", *stats, "--methods", "gradcam", "--metrics", "recognition"]
    assert main([*args, "--quiet", "--baselines"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["models"][0]["accuracy"]["images"] == 4
