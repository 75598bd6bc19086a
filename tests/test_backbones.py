import pytest
import torch
import torchvision
from torch import nn

import castream
from castream import saliency
from castream.backbones import describe

from _models import lite_net, tiny_vit


@pytest.mark.parametrize(
    "name,dims,strides",
    [
        ("resnet18", (64, 64, 128, 256, 512), (4, 4, 8, 16, 32)),
        ("resnet50", (64, 256, 512, 1024, 2048), (4, 4, 8, 16, 32)),
        ("resnext50_32x4d", (64, 256, 512, 1024, 2048), (4, 4, 8, 16, 32)),
        ("wide_resnet50_2", (64, 256, 512, 1024, 2048), (4, 4, 8, 16, 32)),
        ("convnext_tiny", (96, 192, 384, 768), (4, 8, 16, 32)),
    ],
)
def test_torchvision_families(name, dims, strides):
    spec = describe(getattr(torchvision.models, name)())
    assert spec.dims == dims and spec.strides == strides
    assert spec.num_classes == 1000 and spec.in_channels == 3


def test_timm_families():
    timm = pytest.importorskip("timm")
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    spec = describe(resnet)
    assert spec.family == "timm.resnet" and spec.dims == (64, 64, 128, 256, 512)
    convnext = timm.create_model("convnext_tiny", pretrained=False, num_classes=10).eval()
    spec = describe(convnext)
    assert (
        spec.family == "timm.convnext" and spec.dims == (96, 192, 384, 768) and spec.strides == (4, 8, 16, 32)
    )
    for backbone in (resnet, convnext):
        model = castream.attach_stream(backbone)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(model(x, pooling="gap"), backbone(x))
            q, _ = model.stream(model._capture(x, stop_early=True)[0])
            # the stream's vector enters the head where pooled features went: norm_pre/head on a 1x1 map
            if model.spec.family == "timm.convnext":
                expected = backbone.head(backbone.norm_pre(q[:, :, None, None]))
            else:
                expected = backbone.fc(q)
            torch.testing.assert_close(model(x), expected)


def test_explicit_description_for_another_model():
    mobilenet = torchvision.models.mobilenet_v2(num_classes=10).eval()
    model = castream.attach_stream(
        mobilenet, taps=["features.3", "features.6", "features.13", "features.18"], head="classifier"
    )
    assert model.spec.dims == (24, 32, 96, 1280) and model.spec.family == "custom"
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    # the head can also be given as the module itself
    assert castream.attach_stream(mobilenet, taps=["features.18"], head=mobilenet.classifier).spec.head == (
        "classifier",
    )


def test_unsupported_model_lists_families_and_explicit_form():
    # VGG's classifier reads a 7 x 7 grid: there is no global average pooling for a stream to replace
    with pytest.raises(ValueError, match=r"no global pooling.*Known layouts: torchvision ResNet.*taps=\["):
        castream.attach_stream(torchvision.models.vgg11())
    with pytest.raises(ValueError, match="explicit head"):
        castream.attach_stream(torchvision.models.vgg11(), taps=["features.20"])
    with pytest.raises(ValueError, match=r"no global pooling.*taps=\["):
        describe(tiny_vit(), probe_size=32)  # a transformer: no spatial grid for the rule
    with pytest.raises(ValueError, match=r"forward fails on a \(1, 3, 224, 224\) input.*taps=\["):
        describe(tiny_vit())  # its forward only takes 32 x 32 images


def _check_family(backbone, taps, pre_pool=None, how="meta device", default_layer=None):
    """The description, then: GAP path bit-identical, a stream step changes no backbone tensor, Grad-CAM
    runs with the default layer (the last tap unless given)."""
    backbone.eval()
    spec = describe(backbone, probe_size=64)
    assert spec.taps == tuple(taps) and spec.pre_pool == pre_pool and how in spec.how
    model = castream.attach_stream(backbone, probe_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(x)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    stream = {k: v.clone() for k, v in model.stream.state_dict().items()}
    model.train()
    optimizer = torch.optim.SGD(model.stream.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    optimizer.step()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, model.stream.state_dict()[k]) for k, v in stream.items())
    with torch.no_grad():
        assert torch.equal(model(x, pooling="gap"), expected)
    layer = castream.saliency.GradCAM(backbone).layers[0][0]
    assert layer == (default_layer or taps[-1])
    assert castream.saliency.GradCAM(backbone)(x).shape == (2, 64, 64)
    return spec


@pytest.mark.parametrize(
    "name,taps,pre_pool",
    [
        ("efficientnet_b0", ["features.1", "features.2", "features.3", "features.5", "features"], None),
        ("regnet_y_400mf", ["stem", *(f"trunk_output.block{i}" for i in (1, 2, 3)), "trunk_output"], None),
        (
            "densenet121",
            ["features.relu0", *(f"features.denseblock{i}" for i in (1, 2, 3)), "features"],
            "relu",
        ),
        ("mobilenet_v3_small", ["features.0", "features.1", "features.3", "features.8", "features"], None),
    ],
)
def test_torchvision_families_described_by_rule(name, taps, pre_pool):
    spec = _check_family(getattr(torchvision.models, name)(num_classes=5), taps, pre_pool)
    assert spec.family == "auto" and spec.strides == (2, 4, 8, 16, 32)


def test_mobilenet_v2_resnext_and_vgg():
    mobilenet = torchvision.models.mobilenet_v2(num_classes=5)
    taps = ["features.1", "features.3", "features.6", "features.13", "features"]
    _check_family(mobilenet, taps, default_layer="features.18")  # its earlier default: the same tensor
    resnext = torchvision.models.resnext50_32x4d(num_classes=5)
    _check_family(resnext, ["maxpool", "layer1", "layer2", "layer3", "layer4"], how="layout")
    vgg = torchvision.models.vgg16_bn(num_classes=5)
    assert castream.saliency.GradCAM(vgg)(torch.randn(1, 3, 64, 64)).shape == (1, 64, 64)


def test_timm_families_described_by_feature_info():
    timm = pytest.importorskip("timm")
    for name, taps in (
        ("efficientnet_b0", ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "bn2"]),
        ("regnetx_002", ["stem", "s1", "s2", "s3", "final_conv"]),
    ):
        backbone = timm.create_model(name, pretrained=False, num_classes=5)
        spec = _check_family(backbone, taps)
        assert spec.how.startswith("timm feature_info")
    # EfficientViT's head convolves before it pools: the last tap and the pooling share the top-level
    # module `head`, so the head is found inside it (a top-level head would run the convolution twice)
    spec = _check_family(
        timm.create_model("efficientvit_b0", pretrained=False, num_classes=5),
        ["stages.0", "stages.1", "stages.2", "head.in_conv"],
    )
    assert spec.head == ("head.classifier",) and spec.head_input == "flat"
    for name, taps in (  # known layouts
        ("convnextv2_atto", ["stem", "stages.1.downsample", "stages.2.downsample", "stages.3"]),
        ("resnet18d", ["maxpool", "layer1", "layer2", "layer3", "layer4"]),
    ):
        _check_family(timm.create_model(name, pretrained=False, num_classes=5), taps, how="layout")


class _DataDependent(torch.nn.Module):
    """A forward whose control flow reads tensor values: fake tensors cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
        self.stage = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        if x.mean() > 10:  # never true for these weights, but unknowable without values
            x = x * 2
        return self.fc(self.stage(x).mean((2, 3)))


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
        self.head, self.head_dist = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)

    def forward(self, x):
        q = self.features(x).mean((2, 3))
        return (self.head(q) + self.head_dist(q)) / 2


def test_rule_falls_back_to_a_real_forward_and_names_candidate_heads():
    model = _DataDependent()
    spec = describe(model, probe_size=32)
    assert spec.taps == ("stem", "stage") and spec.head == ("fc",) and "real forward" in spec.how
    assert "traced with a real forward" in str(spec)
    with pytest.raises(ValueError, match=r"candidate heads: \['head', 'head_dist'\].*taps=\["):
        describe(_TwoHeads(), probe_size=32)


def test_auto_described_stream_round_trips(tmp_path):
    backbone = torchvision.models.densenet121(num_classes=5).eval()
    model = castream.attach_stream(backbone, probe_size=64).eval()
    path = castream.save_stream(model, tmp_path / "s.safetensors")
    loaded = castream.load_stream(backbone, path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert loaded.spec.pre_pool == "relu"
        torch.testing.assert_close(loaded(x), model(x))
        # the pooled vector is the CA mean of the ReLU'd last tap, exactly where DenseNet pools
        features, _ = model._capture(x, stop_early=True)
        features[-1] = torch.relu(features[-1])
        q, _ = model.stream(features)
        torch.testing.assert_close(model(x), backbone.classifier(q))


def test_unknown_names_suggest_nearest():
    with pytest.raises(ValueError, match=r"no tap named 'layer5'.*'layer4'"):
        castream.attach_stream(torchvision.models.resnet18(), taps=["layer5"])
    with pytest.raises(ValueError, match="head_input"):
        castream.attach_stream(torchvision.models.resnet18(), taps=["layer4"], head="fc", head_input="vector")


def test_non_map_tap_is_rejected():
    with pytest.raises(ValueError, match="4-D feature map"):
        castream.attach_stream(torchvision.models.resnet18(), taps=["fc"], head="fc")


# --- third-party patterns (issue 20): a shared activation module, TF-SAME padding, view(bs, -1) ----------


def test_rule_reads_a_shared_activation_as_pre_pool_and_skips_padding_resolutions():
    """The pooled map is the second call of one ReLU6 instance (before: 'tap _swish ran 2 times'), and the
    ZeroPad2d inside every stride-2 convolution (64 -> 65 ...) no longer hides the stage taps (before: a
    one-tap stream)."""
    model = lite_net()
    spec = castream.describe(model, probe_size=64)
    assert spec.taps == ("_blocks.0", "_blocks.2", "_blocks.3", "_blocks.5", "_bn1")
    assert spec.pre_pool == "relu6" and spec.head == ("_dropout", "_fc") and spec.head_input == "flat"
    streamed = castream.attach_stream(model, probe_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(streamed(x, pooling="gap"), model(x))
        assert streamed(x).shape == (2, 5)
    maps = saliency.ScoreCAM(model, batch_size=16)(x)  # its view(bs, -1) fails on an empty batch
    assert maps.shape == (2, 64, 64)


def test_explicit_descriptions_are_verified():
    """An explicit description without the ReLU6 between the last tap and the pooling gives wrong logits
    (before: accepted silently); the error shows the difference. pre_pool= and description= fix it."""
    model = lite_net()
    taps = ["_blocks.0", "_blocks.2", "_blocks.3", "_blocks.5", "_bn1"]
    with pytest.raises(ValueError, match=r"max \|difference\| [0-9.]+ for logits up to .*pre_pool="):
        castream.attach_stream(model, taps=taps, head=["_dropout", "_fc"], probe_size=64)
    fixed = castream.attach_stream(
        model, taps=taps, head=["_dropout", "_fc"], pre_pool="relu6", probe_size=64
    )
    described = castream.attach_stream(
        model, description=castream.describe(model, probe_size=64), probe_size=64
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fixed(x, pooling="gap"), model(x)) and torch.equal(
            described(x, pooling="gap"), model(x)
        )
    with pytest.raises(TypeError, match="description= takes"):
        castream.attach_stream(model, description=castream.describe(model, probe_size=64), taps=taps)


class _SharedConv(nn.Module):
    """The pooled map comes from a convolution instance that also ran earlier: no activation to hoist."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.mix(self.stem(x))
        return self.fc(self.mix(x).mean((2, 3)))


def test_a_shared_module_chosen_as_a_tap_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"'mix' \(Conv2d\) as a tap, but this module instance runs 2 times.*taps="
    ):
        castream.describe(_SharedConv(), probe_size=32)


def test_a_probe_too_small_is_named_as_such():
    """describe(model, probe_size=8) said 'it has no global pooling' of a model that has one (issue 21)."""
    with pytest.raises(ValueError, match=r"probe of 8 x 8 pixels is too small .* probe_size"):
        castream.describe(torchvision.models.efficientnet_b0(), probe_size=8)


def test_timm_swin_channels_last_maps_are_permuted():
    """timm Swin's stages are (B, H, W, C): the default layer is the final norm the head pools, and every
    CAM method permutes it. Grad-CAM checked against the formula evaluated by hand on that tensor."""
    timm = pytest.importorskip("timm")
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=5,
        img_size=64,
        window_size=4,
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
    ).eval()
    castream.Preprocess().declare(swin)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cam = saliency.GradCAM(swin)
    assert cam.layers[0][0] == "norm" and isinstance(cam.reshape, saliency.ChannelsLastReshape)
    store = {}
    handle = swin.norm.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        logits = swin(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[:, 3].sum(), store["a"])
    a, g = store["a"].permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)  # (B, C, h, w)
    by_hand = (g.mean((2, 3), keepdim=True) * a).sum(1).relu()
    torch.testing.assert_close(
        cam(x, 3, upsample=False, normalize=False), by_hand.detach(), rtol=1e-4, atol=1e-6
    )
    for name in ("gradcam++", "layercam", "scorecam", "ablationcam"):  # (a random Swin's maps may be all 0)
        maps = saliency.get(name)(swin)(x, 3)
        assert maps.shape == (2, 64, 64) and maps.isfinite().all() and 0 <= maps.min() <= maps.max() <= 1


def test_a_compiled_model_is_described_and_explained_through_the_module_it_wraps():
    model = torchvision.models.resnet18(num_classes=5).eval()
    castream.Preprocess().declare(model)
    compiled = torch.compile(model)  # lazy: nothing is compiled unless the wrapper itself runs
    x = torch.rand(2, 3, 64, 64)
    assert describe(compiled) == describe(model)
    torch.testing.assert_close(saliency.GradCAM(compiled)(x), saliency.GradCAM(model)(x), rtol=0, atol=0)
    assert castream.attach_stream(compiled, probe_size=64).backbone is model
