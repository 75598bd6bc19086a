"""CA-Stream against a naive per-sample evaluation of paper eqs. (4), (6), (10), (11); paper numbers."""

import copy
import itertools
import math

import pytest
import torch
import torchvision

import castream
from castream.stream import StreamModel


def resnet_features(m, x):
    """Stage outputs of a torchvision ResNet, by calling its layers directly (independent of hooks)."""
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    feats = [x]
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        x = layer(x)
        feats.append(x)
    return feats


def convnext_features(m, x):
    feats = []
    for i, f in enumerate(m.features):
        x = f(x)
        if i in (0, 2, 4, 7):  # stem, down1, down2, stage4
            feats.append(x)
    return feats


def naive_stream_logits(model: StreamModel, feats, head, query_rows):
    """Per-sample loop with plain tensor ops: a = softmax(K q / sqrt d), CA = V^T a, q' = W CA + b."""
    out = []
    for b in range(feats[0].shape[0]):
        q = model.stream.query[query_rows[b]]
        for blk, f in zip(model.stream.blocks, feats[model.config.start :]):
            d = f.shape[1]
            F = f[b].reshape(d, -1).T  # (p, d)
            K = F @ blk.key.weight.T + blk.key.bias if blk.key is not None else F
            V = F @ blk.value.weight.T + blk.value.bias if blk.value is not None else F
            a = torch.softmax(K @ q / math.sqrt(d), dim=0)
            q = blk.proj.weight @ (V.T @ a) + blk.proj.bias
        out.append(head(q[None]))
    return torch.cat(out)


CASES = [
    ("resnet18", resnet_features, lambda m: lambda q: m.fc(q), [0, 2, 4], 64),
    (
        "convnext_tiny",
        convnext_features,
        lambda m: lambda q: m.classifier(q[:, :, None, None]),
        [0, 2, 3],
        64,
    ),
]


@pytest.mark.parametrize("name,features,head,starts,size", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("block", ["ca", "proj"])
def test_stream_matches_naive_loop(name, features, head, starts, size, block):
    backbone = getattr(torchvision.models, name)(num_classes=10).double().eval()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        feats = features(backbone, x)
        for start in starts:
            model = castream.attach_stream(backbone, start=start, block=block)
            logits = model(x)
            expected = naive_stream_logits(model, feats, head(backbone), [0, 0, 0])
            torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
            # raw attention: softmax weights per tap, (B, h_l, w_l), each summing to 1
            assert [tuple(a.shape[1:]) for a in model.attention] == [
                tuple(f.shape[2:]) for f in feats[start:]
            ]
            for a in model.attention:
                torch.testing.assert_close(a.sum((1, 2)), torch.ones(3, dtype=a.dtype))


def test_class_specific_uses_labels_in_training_and_gap_prediction_at_inference():
    backbone = torchvision.models.resnet18(num_classes=7).double().eval()
    model = castream.attach_stream(backbone, class_specific=True)
    assert model.stream.query.shape == (7, 64)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    labels = torch.tensor([3, 0, 6, 3])
    with torch.no_grad():
        feats = resnet_features(backbone, x)
        gap_pred = backbone(x).argmax(1)
    model.train()
    torch.testing.assert_close(
        model(x, labels=labels), naive_stream_logits(model, feats, backbone.fc, labels)
    )
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), naive_stream_logits(model, feats, backbone.fc, gap_pred))


def test_gap_pooling_is_bit_identical_to_the_original_model():
    original = torchvision.models.resnet18(num_classes=10).eval()
    reference = copy.deepcopy(original)
    model = castream.attach_stream(original)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x, pooling="gap"), reference(x))


def test_taps_captured_in_one_forward_without_running_the_original_head():
    backbone = torchvision.models.resnet18(num_classes=10).eval()
    model = castream.attach_stream(backbone)
    calls = {"fc": 0, "layer4": 0}
    backbone.fc.register_forward_hook(lambda *a: calls.__setitem__("fc", calls["fc"] + 1))
    backbone.layer4.register_forward_hook(lambda *a: calls.__setitem__("layer4", calls["layer4"] + 1))
    model(torch.randn(1, 3, 64, 64))
    assert calls == {"fc": 1, "layer4": 1}  # fc runs once: as the stream's head, not after GAP


# --- numbers from the papers (random weights suffice) ----------------------------------------------


def stream_params(dims, class_rows=1, proj=False):
    """Hand formula: q_0 + sum_l (d_l * d_l+1 + d_l+1) [+ 2 (d_l^2 + d_l) for W^K, W^V]."""
    outs = [*dims[1:], dims[-1]]
    n = class_rows * dims[0] + sum(d * o + o for d, o in zip(dims, outs))
    return n + (sum(2 * (d * d + d) for d in dims) if proj else 0)


def test_resnet50_parameter_counts_match_paper():
    backbone = torchvision.models.resnet50()
    model = castream.attach_stream(backbone)
    dims = [64, 256, 512, 1024, 2048]
    assert model.spec.dims == tuple(dims)
    assert castream.count_parameters(model.stream) == stream_params(dims) == 6_963_264 + 5_888
    assert round(castream.count_parameters(model, trainable_only=False) / 1e6, 2) == 32.53
    # placements S1-S4 ... S4-S4 (paper Table 5)
    expected = {1: 6_952_704, 2: 6_821_376, 3: 6_296_576, 4: 4_198_400}
    for start, count in expected.items():
        streamed = castream.attach_stream(backbone, start=start)
        assert castream.count_parameters(streamed.stream) == count == stream_params(dims[start:])
        assert streamed.stream.query.shape == (1, dims[start])
    proj = castream.attach_stream(backbone, block="proj")
    assert castream.count_parameters(proj.stream) == 18_126_272 == stream_params(dims, proj=True)
    specific = castream.attach_stream(backbone, class_specific=True)
    assert round(castream.count_parameters(specific, trainable_only=False) / 1e6, 2) == 32.59
    assert castream.count_parameters(backbone) == 0  # frozen in place


@pytest.mark.parametrize(
    "name,total",
    [("resnet18", 12.13), ("convnext_small", 51.20), ("convnext_base", 90.33)],
)
def test_total_parameter_counts_match_thesis_table_3_3(name, total):
    model = castream.attach_stream(getattr(torchvision.models, name)())
    assert round(castream.count_parameters(model, trainable_only=False) / 1e6, 2) == total


def test_resnet50_gflops_overhead_matches_thesis():
    model = castream.attach_stream(torchvision.models.resnet50())
    gap = castream.count_flops(model, (1, 3, 224, 224), pooling="gap")
    ca = castream.count_flops(model, (1, 3, 224, 224), pooling="ca")
    # Hand count (multiply-add = 2): per tap F q and F^T a (2 p d MACs), plus W_l (d_l * d_l+1 MACs).
    taps = [(56 * 56, 64), (56 * 56, 256), (28 * 28, 512), (14 * 14, 1024), (7 * 7, 2048)]
    widths = [64, 256, 512, 1024, 2048, 2048]
    macs = sum(2 * p * d for p, d in taps) + sum(a * b for a, b in itertools.pairwise(widths))
    assert ca - gap == 2 * macs
    assert abs((ca - gap) / 1e9 - (8.288 - 8.268)) < 1e-3  # thesis Table 3.3


# --- frozen backbone, batch independence, dtypes ---------------------------------------------------


def test_training_step_changes_only_the_stream():
    backbone = torchvision.models.resnet18(num_classes=5)
    model = castream.attach_stream(backbone).train()
    assert not backbone.training and all(not m.training for m in backbone.modules())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    stream_before = {k: v.clone() for k, v in model.stream.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None for p in model.stream.parameters())
    for k, v in backbone.state_dict().items():  # parameters and buffers (BatchNorm statistics)
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, stream_before[k]) for k, v in model.stream.state_dict().items())


def test_batch_independence():
    model = castream.attach_stream(torchvision.models.resnet18(num_classes=10).double()).eval()
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        other = model(torch.cat([x[2:3], torch.randn(5, 3, 64, 64, dtype=torch.float64)]))
    torch.testing.assert_close(full[2], other[0], rtol=1e-12, atol=1e-12)


def test_dtypes_and_autocast():
    model = castream.attach_stream(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    model64 = model.double()
    assert model64(x.double()).dtype == torch.float64


def test_spatial_sizes_without_forward_and_attention_map():
    model = castream.attach_stream(torchvision.models.resnet18(num_classes=10)).eval()
    sizes = model.spec.spatial_sizes(model.backbone, (96, 64))
    with torch.no_grad():
        model(torch.randn(2, 3, 96, 64))
    assert sizes == [tuple(a.shape[1:]) for a in model.attention]
    for tap in (-1, 0, "mean"):
        m = model.attention_map(tap)
        assert m.shape == (2, 96, 64) and m.min() >= 0 and m.max() <= 1


# --- checkpoints -----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    backbone = torchvision.models.resnet18(num_classes=10).eval()
    model = castream.attach_stream(copy.deepcopy(backbone), block="proj", start=1, class_specific=True)
    with torch.no_grad():
        for p in model.stream.parameters():
            p.add_(torch.randn_like(p))
    path = castream.save_stream(model, tmp_path / "stream.safetensors")
    loaded = castream.load_stream(backbone, path).eval()
    model.eval()
    assert loaded.config == model.config
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_onto_another_architecture_or_corrupt_file_raises(tmp_path):
    model = castream.attach_stream(torchvision.models.resnet18(num_classes=10))
    path = castream.save_stream(model, tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match=r"made for torchvision\.resnet .*backbone is torchvision\.resnet"):
        castream.load_stream(torchvision.models.resnet34(num_classes=10), path)  # same widths, other net
    with pytest.raises(ValueError, match="made for"):
        castream.load_stream(torchvision.models.convnext_tiny(num_classes=10), path)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"corrupt|not a readable"):
        castream.load_stream(torchvision.models.resnet18(num_classes=10), corrupt)


# --- bad input -------------------------------------------------------------------------------------


def test_bad_input_errors():
    model = castream.attach_stream(torchvision.models.resnet18(num_classes=10))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown pooling"):
        model(torch.randn(1, 3, 64, 64), pooling="max")
    with pytest.raises(ValueError, match="start must be"):
        castream.attach_stream(torchvision.models.resnet18(), start=5)
    with pytest.raises(ValueError, match="unknown block"):
        castream.attach_stream(torchvision.models.resnet18(), block="mlp")
    specific = castream.attach_stream(
        torchvision.models.resnet18(num_classes=10), class_specific=True
    ).train()
    with pytest.raises(ValueError, match="needs labels"):
        specific(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="2 integer class indices"):
        specific(torch.randn(2, 3, 64, 64), labels=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        specific(torch.randn(2, 3, 64, 64), labels=torch.tensor([1, 10]))


@pytest.mark.parametrize(
    "metadata, fragment",
    [
        ({}, "has no 'config' entry"),
        ({"config": "{not json"}, "config is not JSON"),
        ({"config": "[1, 2]"}, "config is a list"),
        ({"config": '{"family": "x"}'}, "invalid stream config .*lacks"),
    ],
)
def test_stream_checkpoint_with_bad_metadata_names_the_file(tmp_path, metadata, fragment):
    """A bare JSONDecodeError / KeyError: 'config' before (issue 21)."""
    from safetensors.torch import save_file

    from castream.stream import CHECKPOINT_FORMAT, read_stream_config

    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": CHECKPOINT_FORMAT, **metadata})
    with pytest.raises(ValueError, match=f"bad.safetensors: .*{fragment}"):
        read_stream_config(path)
