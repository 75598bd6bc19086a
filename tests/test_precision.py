"""Reduced precision (bf16 autocast, runnable on the CPU) and channels_last: every method and metric works
inside the caller's ``torch.autocast``, keeps its fragile steps in float32 and returns the images' dtype."""

import importlib

import numpy as np
import pytest
import scipy.ndimage as ndimage
import torch
import torch.nn.functional as F
import torchvision

from castream import metrics, saliency
from castream.metrics import sanity

from _models import IMAGENET, TinyNet, tiny_vit

loc = importlib.import_module(
    "castream.metrics.localization"
)  # the module (metrics.localization is a function)

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)
# measured cosine of bf16 maps to float32 maps (TinyNet, 32 px, 4 images): >= 0.99 for every method but
# Opti-CAM (0.9): its Adam steps are normalized, so rounding in a small gradient flips their
# sign and the optimization takes another path (the same happens between CPU and CUDA in float32). The
# thresholds leave a margin for other CPUs' bf16 kernels.
MIN_COSINE = {"opticam": 0.8}
VIT_ONLY = ("rollout", "transformerattribution")


def _options(name):
    if name == "extremalperturbation":
        return {"max_iter": 10, "step": 2, "sigma": 3, "max_blur": 3}
    options = {"preprocess": IMAGENET} if saliency.get(name).masks_input else {}
    return {**options, "max_iter": 10} if name == "opticam" else options


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return IMAGENET.declare(torchvision.models.resnet18(num_classes=10).eval())


def _cosine(a, b):
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double()).min().item()


@pytest.mark.parametrize("name", [n for n in saliency.available() if n not in ("rawattention", *VIT_ONLY)])
def test_every_cnn_method_under_bf16_autocast(name):
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    method = saliency.get(name)(model, **_options(name))
    reference = method(x, [1, 2, 3, 4])
    with BF16:
        maps = method(x, [1, 2, 3, 4])
    assert maps.dtype == torch.float32 and maps.shape == (4, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1
    if reference.flatten(1).amax(1).min() > 0:  # fakecam/random/... are identical; all maps have signal
        assert _cosine(maps, reference) >= MIN_COSINE.get(name, 0.98), name


def test_opticam_under_bf16_runs_every_iteration():
    """bf16 logits cannot resolve a loss change of tol: the stopping rule must not end the optimization
    after a few iterations (ResNet-18 stopped after 5-28 of 100 before)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    method = saliency.OptiCAM(TinyNet().eval(), max_iter=60)
    with BF16:
        method(x, [0, 1])
    assert method.iterations.tolist() == [60, 60]


@pytest.mark.parametrize("name", VIT_ONLY)
def test_vit_methods_under_bf16_autocast(name):
    torch.manual_seed(0)
    vit = tiny_vit().eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision's zero head gives no relevance at all
    x = torch.randn(2, 3, 32, 32)
    method = saliency.get(name)(vit)
    reference = method(x, [0, 3])
    with BF16:  # transformer attribution refused this before: its block check had no bf16 tolerance
        maps = method(x, [0, 3])
    assert reference.flatten(1).amax(1).min() > 0
    assert _cosine(maps, reference) >= 0.95


def test_metrics_under_bf16_keep_float32_probabilities(resnet):
    x = torch.randn(2, 3, 64, 64)
    maps = torch.rand(2, 64, 64)
    reference = metrics.insertion(resnet, x, maps, [0, 1], protocol="coarse")
    with BF16:
        auc, curves = metrics.insertion(resnet, x, maps, [0, 1], protocol="coarse", return_curves=True)
        drop = metrics.recognition(resnet, x, maps, [0, 1])["drop"]
    assert auc.dtype == curves.probabilities.dtype == drop.dtype == torch.float32
    assert (auc - reference).abs().max() < 0.02


def test_channels_last_model_and_images_give_the_same_maps(resnet):
    x = torch.randn(2, 3, 64, 64)
    reference = saliency.GradCAM(resnet)(x, [0, 1])
    fast = torchvision.models.resnet18(num_classes=10).eval()
    fast.load_state_dict(resnet.state_dict())
    fast.to(memory_format=torch.channels_last)
    maps = saliency.GradCAM(fast)(x.contiguous(memory_format=torch.channels_last), [0, 1])
    torch.testing.assert_close(maps, reference, atol=1e-4, rtol=0)


def test_sanity_check_keeps_the_device_and_random_state(resnet):
    """The ranks are computed with numpy; the correlations come back on the maps' device (CUDA before:
    'Expected all tensors to be on the same device'). The caller's RNG is left as found."""
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    assert sanity.spearman(a, b).device == a.device
    images = torch.randn(2, 3, 64, 64)
    state = torch.random.get_rng_state()
    rho = metrics.sanity_check(lambda m: saliency.GradCAM(m), resnet, images, layers=["fc"])
    assert set(rho) == {"fc"} and torch.equal(torch.random.get_rng_state(), state)


# --- BoxAcc's component tree ------------------------------------------------------------------------


def _scipy_boxes(m, etas):
    """Today's definition, one scipy label per threshold."""
    return np.array(
        [loc.largest_component_box(m > eta) or (-1, -1, -1, -1) for eta in np.asarray(etas, np.float32)]
    )


def _maps():
    rng = np.random.default_rng(0)
    out = []
    for k in range(40):
        h, w = (int(v) for v in rng.integers(1, 48, size=2))
        m = rng.random((h, w))
        if k % 5 == 1:  # few distinct values: ties between components of equal size
            m = np.round(m * 4) / 4
        elif k % 5 == 2:
            m = ndimage.gaussian_filter(m, 3)
            m = (m - m.min()) / (np.ptp(m) + 1e-9)
        elif k % 5 == 3:  # a checkerboard-like binary map: many equal components
            m = (rng.random((h, w)) < 0.5) * 0.5
        elif k % 5 == 4:
            m = np.zeros((h, w))
        out.append(m.astype(np.float32))
    yy, xx = np.mgrid[:30, :30]
    out.append(((yy // 3 + xx // 3) % 2 * 0.7).astype(np.float32))  # squares touching at corners only
    out.append(np.full((5, 7), 0.01, np.float32))  # exactly on a threshold: map > 0.01 is empty
    return out


@pytest.mark.parametrize("compiled", [True, False])
def test_threshold_boxes_equal_one_label_per_threshold(compiled, monkeypatch):
    if compiled and loc._components is None:
        pytest.skip("castream._components was not built (no C compiler at install time)")
    if not compiled:
        monkeypatch.setattr(loc, "_components", None)
    for m in _maps():
        np.testing.assert_array_equal(loc.threshold_boxes(m), _scipy_boxes(m, loc.ETAS))
    m = _maps()[2]
    for etas in ([0.5, 0.1, 0.9, 0.3], [0.2], [0.3, 0.3]):  # any order, one threshold, duplicates
        np.testing.assert_array_equal(loc.threshold_boxes(m, etas), _scipy_boxes(m, etas))


def test_threshold_ious_equal_the_per_threshold_definition():
    rng = np.random.default_rng(1)
    maps = torch.from_numpy(
        np.stack([ndimage.gaussian_filter(rng.random((40, 50)), 4) for _ in range(3)]).astype(np.float32)
    )
    maps = (maps - maps.amin((1, 2), keepdim=True)) / (
        maps.amax((1, 2), keepdim=True) - maps.amin((1, 2), keepdim=True)
    )
    boxes = [
        torch.tensor([[5.0, 4, 30, 25]]),
        torch.zeros(0, 4),
        torch.tensor([[0.0, 0, 10, 10], [20, 8, 50, 40]]),
    ]
    ious = metrics.threshold_ious(maps, boxes)
    assert ious[1].isnan().all()
    for i in (0, 2):
        expected = [
            loc.box_iou(loc.largest_component_box(maps[i].numpy() > eta), boxes[i]) for eta in loc.ETAS
        ]
        assert ious[i].tolist() == torch.tensor(expected, dtype=torch.float32).tolist()
