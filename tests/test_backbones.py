import pytest
import torch
import torchvision

import castream
from castream.backbones import describe


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
    with pytest.raises(ValueError, match=r"Supported families: torchvision ResNet.*taps=\["):
        castream.attach_stream(torchvision.models.vgg11())
    with pytest.raises(ValueError, match="explicit head"):
        castream.attach_stream(torchvision.models.vgg11(), taps=["features.20"])


def test_unknown_names_suggest_nearest():
    with pytest.raises(ValueError, match=r"no tap named 'layer5'.*'layer4'"):
        castream.attach_stream(torchvision.models.resnet18(), taps=["layer5"])
    with pytest.raises(ValueError, match="head_input"):
        castream.attach_stream(torchvision.models.resnet18(), taps=["layer4"], head="fc", head_input="vector")


def test_non_map_tap_is_rejected():
    with pytest.raises(ValueError, match="4-D feature map"):
        castream.attach_stream(torchvision.models.resnet18(), taps=["fc"], head="fc")
