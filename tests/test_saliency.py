"""Saliency methods against naive per-image references with the formulas written out here."""

import copy
import gc
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import castream
from castream import Preprocess, saliency

from _models import IMAGENET, TinyNet, tiny_vit
from conftest import assert_same_state, state_snapshot

# --- naive references -------------------------------------------------------------------------------


def naive_acts_grads(model, layer, x, targets):
    """Per image: activation A (K, h, w) of ``layer`` and dy_c/dA by torch.autograd.grad."""
    acts, grads = [], []
    store = {}
    for i in range(len(x)):
        handle = layer.register_forward_hook(lambda m, a, o: store.__setitem__("a", o))
        try:
            y = model(x[i : i + 1].clone().requires_grad_(True))[0, targets[i]]
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(y, store["a"])
        acts.append(store["a"][0].detach())
        grads.append(g[0])
    return acts, grads


def ref_gradcam(A, g):
    return sum(g[k].mean() * A[k] for k in range(len(A))).clamp(min=0)


def ref_gradcampp_weight(a, g):
    """Chattopadhyay et al. eq. 19 with exponential assumption, for one channel a, g (h, w)."""
    num = g**2
    den = 2 * g**2 + a.sum() * g**3
    alpha = torch.where(den != 0, num / torch.where(den != 0, den, 1), 0)
    return (alpha * g.clamp(min=0)).sum()


def ref_gradcampp(A, g):
    return sum(ref_gradcampp_weight(A[k], g[k]) * A[k] for k in range(len(A))).clamp(min=0)


def ref_xgradcam(A, g):
    out = torch.zeros_like(A[0])
    for k in range(len(A)):
        if A[k].sum() != 0:
            out += (A[k] * g[k]).sum() / A[k].sum() * A[k]
    return out.clamp(min=0)


def ref_hirescam(A, g):
    return sum(g[k] * A[k] for k in range(len(A))).clamp(min=0)


def ref_layercam(A, g):
    return sum(g[k].clamp(min=0) * A[k] for k in range(len(A))).clamp(min=0)


REFERENCES = {
    "gradcam": ref_gradcam,
    "gradcam++": ref_gradcampp,
    "xgradcam": ref_xgradcam,
    "hirescam": ref_hirescam,
    "layercam": ref_layercam,
}


def minmax(m):
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def up(a, size):
    return F.interpolate(a[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


# --- gradient methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REFERENCES))
def test_gradient_methods_match_per_image_autograd(name):
    model = TinyNet(dead=(2,)).double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 3, 4])
    maps = saliency.get(name)(model, "features")(x, targets, upsample=False, normalize=False)
    acts, grads = naive_acts_grads(model, model.features, x, targets)
    expected = torch.stack([REFERENCES[name](a, g) for a, g in zip(acts, grads)])
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)


def test_gradcam_through_the_stream_matches_autograd():
    model = castream.attach_stream(torchvision.models.resnet18(num_classes=6).double()).eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    targets = torch.tensor([1, 5])
    maps = saliency.GradCAM(model)(x, targets, upsample=False, normalize=False)
    acts, grads = naive_acts_grads(model, model.backbone.layer4, x, targets)
    torch.testing.assert_close(maps, torch.stack([ref_gradcam(a, g) for a, g in zip(acts, grads)]))
    # the stream changes the gradient: GAP and CA Grad-CAMs differ
    gap = saliency.GradCAM(model, forward_kwargs={"pooling": "gap"})(
        x, targets, upsample=False, normalize=False
    )
    assert not torch.allclose(gap, maps)


def test_layercam_fuses_layers_by_mean_of_normalized_maps():
    # each layer's map goes through the standard pipeline (upsample, then min-max), then the mean
    model = TinyNet().double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    fused = saliency.LayerCAM(model, ["features.1", "features"])(x, [1, 2], upsample=False, normalize=False)
    expected = []
    for layer in ("features.1", "features"):
        acts, grads = naive_acts_grads(model, model.get_submodule(layer), x, [1, 2])
        expected.append([minmax(up(ref_layercam(a, g), (16, 16))) for a, g in zip(acts, grads)])
    torch.testing.assert_close(fused, torch.stack([(p + q) / 2 for p, q in zip(*expected)]))


def test_relu_cam_equals_gradcam_up_to_positive_factor():
    model = TinyNet().double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    cam = saliency.CAM(model, "features", classifier="fc")(x, upsample=False, normalize=False)
    grad = saliency.GradCAM(model, "features")(x, upsample=False, normalize=False)
    # GAP + linear: dy_c/dA^k = W_ck / (h w), so Grad-CAM = ReLU(CAM) / (h w)
    torch.testing.assert_close(grad * 8 * 8, cam.clamp(min=0))
    assert (cam < 0).any()  # CAM keeps h = identity


def test_gradcampp_safe_division_gives_no_nan():
    model = TinyNet(dead=(0, 1, 2, 3)).eval()  # dead channels: zero activations and zero denominators
    maps = saliency.GradCAMPlusPlus(model, "features")(torch.randn(2, 3, 16, 16))
    assert not maps.isnan().any()


# --- Score-CAM, Ablation-CAM, SA-CAM ------------------------------------------------------------------


@pytest.mark.parametrize(
    "score, baseline",
    [("logit", "black"), ("probability", "black"), ("raw-probability", "black"), ("logit", "mean")],
)
def test_scorecam_matches_naive_per_channel_loop_and_skips_constant_channels_exactly(score, baseline):
    model = TinyNet(dead=(1, 4), flat=(7,)).double().eval()
    pre = Preprocess()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([2, 0])
    acts, _ = naive_acts_grads(model, model.features, x, targets)
    expected = []
    with torch.no_grad():
        for i, A in enumerate(acts):
            scores = []
            for k in range(len(A)):  # every channel, constant ones included (mask of zeros: n(0) = 0)
                m = minmax(up(A[k], (16, 16)))
                # black: pixels scaled by the mask; mean (pytorch-grad-cam): the normalized tensor is
                masked = pre.normalize(pre.denormalize(x[i]) * m) if baseline == "black" else x[i] * m
                logits = model(masked[None])[0]
                scores.append(logits[targets[i]] if score == "logit" else logits.softmax(0)[targets[i]])
            w = torch.stack(scores) if score == "raw-probability" else torch.softmax(torch.stack(scores), 0)
            expected.append(sum(w[k] * A[k] for k in range(len(A))).clamp(min=0))
    for batch_size in (1, 7, 1000):
        method = saliency.ScoreCAM(model, "features", batch_size=batch_size, score=score, baseline=baseline)
        torch.testing.assert_close(method(x, targets, upsample=False, normalize=False), torch.stack(expected))


def test_gradcampp_eps_is_pytorch_grad_cams_formula():
    model = TinyNet().double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    acts, grads = naive_acts_grads(model, model.features, x, [1, 2])
    for a, g, m in zip(
        acts,
        grads,
        saliency.GradCAMPlusPlus(model, "features", eps=1e-6)(x, [1, 2], upsample=False, normalize=False),
    ):
        g2, s = g**2, a.sum(dim=(1, 2), keepdim=True)
        alpha = torch.where(g != 0, g2 / (2 * g2 + s * g**3 + 1e-6), 0.0)  # pytorch-grad-cam 1.5, eq. 19
        w = (alpha * g.clamp(min=0)).sum(dim=(1, 2))
        torch.testing.assert_close(m, (w[:, None, None] * a).sum(0).clamp(min=0))
    plain = saliency.GradCAMPlusPlus(model, "features")(x, [1, 2], upsample=False, normalize=False)
    assert not torch.equal(plain, m[None].expand_as(plain))
    with pytest.raises(ValueError, match="eps must be a number"):
        saliency.GradCAMPlusPlus(model, "features", eps=-1)


def test_gradcampp_eps_agrees_with_pytorch_grad_cam():
    peer = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    ours = saliency.GradCAMPlusPlus(model, eps=1e-6)(x, [1, 3])
    with peer.GradCAMPlusPlus(model=model, target_layers=[model.layer4]) as cam:
        theirs = cam(x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    torch.testing.assert_close(ours, torch.from_numpy(theirs), atol=1e-5, rtol=0)


def test_sacam_key_area_baseline():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    black = saliency.SACAM(model, "features")(x, [1, 2])
    assert torch.equal(black, saliency.SACAM(model, "features", baseline="black")(x, [1, 2]))
    assert not torch.equal(black, saliency.SACAM(model, "features", baseline="mean")(x, [1, 2]))
    with pytest.raises(ValueError, match="baseline must be one of"):
        saliency.ScoreCAM(model, "features", baseline="blur")


def test_scorecam_probability_scores_run():
    model = TinyNet().eval()
    maps = saliency.ScoreCAM(model, "features", score="probability")(torch.randn(2, 3, 16, 16))
    assert maps.shape == (2, 16, 16)


def test_ablationcam_matches_naive_loop():
    model = TinyNet(dead=(3,)).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([1, 4])
    acts, _ = naive_acts_grads(model, model.features, x, targets)
    expected = []
    with torch.no_grad():
        for i, A in enumerate(acts):
            y = model(x[i : i + 1])[0, targets[i]]
            weights = []
            for k in range(len(A)):
                ablated = A.clone()
                ablated[k] = 0
                handle = model.features.register_forward_hook(lambda m, a, o, z=ablated: z[None])
                y_k = model(x[i : i + 1])[0, targets[i]]
                handle.remove()
                weights.append((y - y_k) / y)
            expected.append(sum(w * a for w, a in zip(weights, A)).clamp(min=0))
    maps = saliency.AblationCAM(model, "features", batch_size=5)(x, targets, upsample=False, normalize=False)
    torch.testing.assert_close(maps, torch.stack(expected), rtol=1e-6, atol=1e-6)  # 1/y amplifies rounding


@pytest.mark.parametrize("perturbation", ["constant", "noise", "blur"])
def test_sacam_matches_naive_loop(perturbation):
    import torchvision.transforms.functional as TF

    model = TinyNet(flat=(5,)).double().eval()
    pre = Preprocess()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 3])
    lam1, lam2, tau = 0.7, 2.0, 0.4
    acts, grads = naive_acts_grads(model, model.features, x, targets)
    expected = []
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)  # seed=4
    with torch.no_grad():
        for i, (A, g) in enumerate(zip(acts, grads)):
            pixels = pre.denormalize(x[i])
            mean = torch.tensor(pre.mean, dtype=torch.float64).view(3, 1, 1)
            if perturbation == "noise":  # uniform noise in pixel space, one draw for the batch
                mean = noise[i]
            elif perturbation == "blur":  # sigma0 = 1: a Gaussian blur of kernel 2 * int(3 sigma0) + 1 = 7
                mean = TF.gaussian_blur(pixels[None], [7, 7], [1.0, 1.0])[0]
            s = []
            for k in range(len(A)):
                m = minmax(up(A[k], (16, 16)))
                seg = pre.normalize(pixels * m * (m > tau))  # key area of the masked image, black elsewhere
                pert = pre.normalize(m * pixels + (1 - m) * mean)  # eq. (13), the perturbation's image
                p = [torch.softmax(model(z[None])[0], 0)[targets[i]] for z in (seg, pert)]
                s.append(p[0] * (1 + p[1]))
            K = torch.stack([g[k].mean() for k in range(len(A))])
            Q = torch.stack([ref_gradcampp_weight(A[k], g[k]) for k in range(len(A))])
            w = torch.softmax(torch.stack(s) + lam1 * K + lam2 * Q, 0)
            expected.append(sum(w[k] * A[k] for k in range(len(A))).clamp(min=0))
    method = saliency.SACAM(
        model,
        "features",
        lambda1=lam1,
        lambda2=lam2,
        threshold=tau,
        perturbation=perturbation,
        sigma0=1.0,
        seed=4,
        batch_size=6,
    )
    torch.testing.assert_close(method(x, targets, upsample=False, normalize=False), torch.stack(expected))


# --- Opti-CAM -----------------------------------------------------------------------------------------


def opticam_reference(
    model, x, target, iterations, layer=None, relu=False, objective="mask", normalization="range"
):
    """One image with torch.optim.Adam(lr=0.1): the thesis' objective (2.6) "mask" or (2.12) "diff", and
    normalization (2.9) "range", (2.10) "max" (A / max A) or (2.11) "sigmoid" (element-wise)."""
    norms = {"range": minmax, "max": lambda a: a / a.max(), "sigmoid": torch.sigmoid}
    pre = Preprocess()
    store = {}
    module = layer or model.features
    handle = module.register_forward_hook(lambda m, a, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        clean = model(x[None])[0, target]
    handle.remove()
    A = store["a"][0].relu() if relu else store["a"][0]
    u = torch.zeros(len(A), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.Adam([u], lr=0.1)
    for _ in range(iterations):
        s = (torch.softmax(u, 0)[:, None, None] * A).sum(0)
        m = norms[normalization](up(s, x.shape[-2:]))
        masked = model(pre.normalize(pre.denormalize(x) * m)[None])[0, target]
        loss = -masked if objective == "mask" else (clean - masked).abs()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (torch.softmax(u.detach(), 0)[:, None, None] * A).sum(0)


def test_opticam_matches_adam_reference_and_batched_equals_per_image():
    model = TinyNet().double().eval()
    model.requires_grad_(False)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 2, 4])
    method = saliency.OptiCAM(model, "features", max_iter=8)
    batched = method(x, targets, upsample=False, normalize=False)
    for i in range(3):
        single = method(x[i : i + 1], targets[i : i + 1], upsample=False, normalize=False)
        torch.testing.assert_close(batched[i], single[0])
        torch.testing.assert_close(batched[i], opticam_reference(model, x[i], targets[i], 8))


def test_opticam_relu_features_matches_reference_on_a_signed_layer():
    model = TinyNet().double().eval()
    model.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    conv = model.features[3]  # before the ReLU: signed features
    method = saliency.OptiCAM(model, "features.3", max_iter=5, relu_features=True)
    maps = method(x, [1, 2], upsample=False, normalize=False)
    for i, target in enumerate([1, 2]):
        torch.testing.assert_close(maps[i], opticam_reference(model, x[i], target, 5, conv, relu=True))
    plain = saliency.OptiCAM(model, "features.3", max_iter=5)(x, [1, 2], upsample=False, normalize=False)
    assert not torch.allclose(plain, maps)


def test_opticam_objective_increases():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    method = saliency.OptiCAM(model, "features", max_iter=30)
    pre = Preprocess()
    targets = torch.tensor([1, 3])
    optimized = method(x, targets)
    with torch.no_grad():
        uniform = saliency.OptiCAM(model, "features", max_iter=0)(x, targets)
        logit = lambda m: model(pre.mask(x, m)).gather(1, targets[:, None]).squeeze(1)  # noqa: E731
        assert (logit(optimized) > logit(uniform)).all()


@pytest.mark.parametrize("objective,normalization", [("diff", "range"), ("mask", "sigmoid"), ("mask", "max")])
def test_opticam_variants_match_the_adam_reference(objective, normalization):
    model = TinyNet().double().eval()
    model.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    method = saliency.OptiCAM(
        model, "features", objective=objective, normalization=normalization, max_iter=6, tol=0.0
    )
    maps = method(x, [1, 3], upsample=False, normalize=False)
    for i, target in enumerate([1, 3]):
        expected = opticam_reference(model, x[i], target, 6, objective=objective, normalization=normalization)
        torch.testing.assert_close(maps[i], expected)


def test_opticam_stops_each_image_on_its_own():
    model = TinyNet().double().eval()  # float64: Adam's normalized steps amplify float32 batch noise
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    x[1] = 0.3  # constant image: every channel map is constant, so the loss does not depend on u
    model.features[0].padding = (0, 0)  # no padding: interior of a constant image stays constant
    model.features[3].padding = (0, 0)
    method = saliency.OptiCAM(model, "features", max_iter=12)
    batched = method(x, [0, 0, 0], upsample=False, normalize=False)
    assert method.iterations.tolist() == [12, 1, 12]
    single = saliency.OptiCAM(model, "features", max_iter=12)(x[2:], [0], upsample=False, normalize=False)
    torch.testing.assert_close(batched[2], single[0])


# --- every method on ResNet-18, GAP and streamed ------------------------------------------------------


def _options(name):
    options = {"preprocess": IMAGENET} if saliency.get(name).masks_input else {}
    if name in ("opticam", "extremalperturbation"):
        return {**options, "max_iter": 3}
    if name in ("sscam", "iscam"):  # 512 channels x samples: two samples show the mechanism
        return {**options, "batch_size": 512, "num_samples": 2}
    return {**options, "batch_size": 512} if name in ("scorecam", "ablationcam", "sacam") else options


VIT_ONLY = ("rollout", "transformerattribution")
GAP_METHODS = [n for n in saliency.available() if n not in ("rawattention", *VIT_ONLY)]
STREAM_METHODS = [n for n in saliency.available() if n not in ("cam", *VIT_ONLY)]


@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10).eval()
    streamed = castream.attach_stream(torchvision.models.resnet18(num_classes=10)).eval()
    return {"gap": plain, "stream": streamed}


@pytest.mark.parametrize(
    "kind,name", [("gap", n) for n in GAP_METHODS] + [("stream", n) for n in STREAM_METHODS]
)
def test_every_method_on_resnet18(resnets, kind, name):
    model = resnets[kind]
    before = state_snapshot(model)
    x = torch.randn(3, 3, 64, 64)
    maps = saliency.get(name)(model, **_options(name))(x)
    assert maps.shape == (3, 64, 64) and maps.dtype == x.dtype
    assert not maps.isnan().any() and maps.min() >= 0 and maps.max() <= 1
    assert_same_state(before, state_snapshot(model))


def test_cam_and_raw_attention_refuse_the_wrong_model(resnets):
    with pytest.raises(ValueError, match="StreamModel pools with"):
        saliency.CAM(resnets["stream"])
    with pytest.raises(ValueError, match="linear classifier"):
        saliency.CAM(torchvision.models.convnext_tiny())
    with pytest.raises(ValueError, match="StreamModel or a ViT"):
        saliency.RawAttention(resnets["gap"])


def test_raw_attention_of_the_stream(resnets):
    model = resnets["stream"]
    x = torch.randn(2, 3, 64, 64)
    maps = saliency.RawAttention(model)(x, upsample=False, normalize=False)
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(maps, model.attention[-1])
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(2))
    mean = saliency.RawAttention(model, tap="mean")(x, upsample=False, normalize=False)
    assert mean.shape == (2, 16, 16)


def test_class_specific_raw_attention_uses_the_gap_prediction_unless_asked():
    backbone = torchvision.models.resnet18(num_classes=6).eval()
    model = castream.attach_stream(backbone, class_specific=True)
    with torch.no_grad():
        model.stream.query.copy_(torch.randn_like(model.stream.query) * 3)  # distinct per-class queries
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        predicted = backbone(x).argmax(1)
        other = (predicted + 1) % 6
        model(x, labels=predicted)
        by_prediction = model.attention[0].clone()  # the first tap sees the class query directly
        model(x, labels=other)
        by_other = model.attention[0].clone()
    default = saliency.RawAttention(model, tap=0)(x, other, upsample=False, normalize=False)
    torch.testing.assert_close(default, by_prediction)  # the targets do not change the query
    asked = saliency.RawAttention(model, tap=0, query="target")(x, other, upsample=False, normalize=False)
    torch.testing.assert_close(asked, by_other)
    assert not torch.allclose(by_prediction, by_other)
    with pytest.raises(ValueError, match="query must be one of"):
        saliency.RawAttention(model, query="label")


# --- ViT ----------------------------------------------------------------------------------------------


def test_vit_raw_attention_and_rollout_match_multihead_attention_weights():
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    inputs = []
    handles = [
        b.self_attention.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
        for b in vit.encoder.layers
    ]
    with torch.no_grad():
        vit(x)
        weights = [
            b.self_attention(z, z, z, need_weights=True)[1] for b, z in zip(vit.encoder.layers, inputs)
        ]
    for h in handles:
        h.remove()
    raw = saliency.RawAttention(vit)(x, upsample=False, normalize=False)
    torch.testing.assert_close(raw, weights[-1][:, 0, 1:].reshape(2, 4, 4))
    rollout = torch.eye(17)
    for w in weights:
        rollout = (0.5 * w + 0.5 * torch.eye(17)) @ rollout
    torch.testing.assert_close(
        saliency.Rollout(vit)(x, upsample=False, normalize=False), rollout[:, 0, 1:].reshape(2, 4, 4)
    )


def test_cam_methods_on_vit_with_reshape():
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    for name in ("gradcam", "scorecam", "ablationcam", "opticam"):
        maps = saliency.get(name)(vit, reshape=True, **_options(name))(x)
        assert maps.shape == (2, 32, 32) and not maps.isnan().any()
    with pytest.raises(ValueError, match="reshape=True"):
        saliency.GradCAM(vit)(x)


def test_timm_vit_raw_attention():
    timm = pytest.importorskip("timm")
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=2
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    for name in ("rawattention", "rollout", "transformerattribution"):
        assert saliency.get(name)(vit)(x).shape == (2, 32, 32)
    assert saliency.GradCAM(vit, reshape=True)(x).shape == (2, 32, 32)


# --- state, grad modes, memory ------------------------------------------------------------------------


def test_model_state_restored_after_exception_and_modes_kept():
    model = TinyNet()
    model.train()
    model.fc.requires_grad_(False)
    before = state_snapshot(model)
    with pytest.raises(ValueError, match="targets must lie"):
        saliency.GradCAM(model, "features")(torch.randn(2, 3, 16, 16), [0, 99])
    with pytest.raises(ValueError):
        saliency.ScoreCAM(model, "features")(torch.randn(2, 3, 16, 16), [0, 99])
    saliency.GradCAM(model, "features")(torch.randn(2, 3, 16, 16))
    assert_same_state(before, state_snapshot(model))
    assert model.training


def test_works_under_no_grad_and_inference_mode():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    expected = saliency.GradCAM(model, "features")(x)
    with torch.no_grad():
        torch.testing.assert_close(saliency.GradCAM(model, "features")(x), expected)
    with torch.inference_mode():
        xi = x.clone()
        torch.testing.assert_close(saliency.GradCAM(model, "features")(xi), expected)
        assert saliency.GuidedBackprop(model)(xi).shape == (2, 16, 16)


def _live_tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


def test_no_memory_growth_over_repeated_calls():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    with saliency.GradCAM(model, "features") as cam:
        cam(x)
        before = _live_tensors()
        for _ in range(100):
            cam(x)
        assert _live_tensors() == before


# --- bad input ----------------------------------------------------------------------------------------


def test_bad_input():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"available: \['cam'"):
        saliency.get("fancycam")
    assert (
        saliency.get("Grad-CAM++") is saliency.GradCAMPlusPlus
        and saliency.get("axiomcam") is saliency.XGradCAM
    )
    with pytest.raises(ValueError, match=r"no layer named 'featurs'.*'features'"):
        saliency.GradCAM(model, "featurs")
    with pytest.raises(ValueError, match="not a \\(B, C, h, w\\) feature map"):
        saliency.GradCAM(model, "fc")(x)
    with pytest.raises(ValueError, match="2 integer class indices"):
        saliency.GradCAM(model, "features")(x, [1])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        saliency.GradCAM(model, "features")(x, 5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        saliency.GradCAM(model, "features")(x[0])
    with pytest.raises(ValueError, match="takes exactly one layer"):  # the gradient methods fuse several
        saliency.ScoreCAM(model, ["features", "features.1"])
    assert saliency.GradCAM(TinyNet()).layers[0][0] == "features"  # the rule: the map its pooling reads
    grid = torch.nn.AdaptiveAvgPool2d(4)  # the classifier reads a 4 x 4 grid, as VGG's does
    flat = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), grid, torch.nn.Flatten(), torch.nn.Linear(64, 5))
    with pytest.raises(ValueError, match=r"no default layer.*no global pooling"):
        saliency.GradCAM(flat)

    class TupleNet(TinyNet):
        def forward(self, x):
            return super().forward(x), x

    with pytest.raises(TypeError, match="pass output="):
        saliency.GradCAM(TupleNet().eval(), "features")(x)
    assert saliency.GradCAM(TupleNet().eval(), "features", output=0)(x).shape == (2, 16, 16)

    nan_model = TinyNet().eval()
    with torch.no_grad():
        nan_model.fc.bias[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf logits"):
        saliency.GradCAM(nan_model, "features")(x)


def test_constant_maps_are_zero_not_nan():
    model = TinyNet(dead=tuple(range(16))).eval()  # every channel dead: all maps constant
    for name in ("gradcam", "scorecam", "opticam", "xgradcam"):
        maps = saliency.get(name)(model, "features", **_options(name))(torch.randn(2, 3, 16, 16))
        assert torch.equal(maps, torch.zeros(2, 16, 16))


def test_layer_given_as_module_and_copy_is_independent():
    model = TinyNet().eval()
    x = torch.randn(1, 3, 16, 16)
    a = saliency.GradCAM(model, model.features)(x)
    b = saliency.GradCAM(copy.deepcopy(model), "features")(x)
    torch.testing.assert_close(a, b)


# --- Extremal Perturbation ------------------------------------------------------------------------------


def naive_mask(params, size, step, sigma):
    """TorchRay's smooth-max mask, pixel by pixel."""
    radius = 1 + math.ceil(sigma / step)
    out = torch.zeros(size, dtype=params.dtype)
    for y in range(size[0]):
        for x in range(size[1]):
            values = []
            for iy in range(y // step - radius, y // step + radius + 1):
                for ix in range(x // step - radius, x // step + radius + 1):
                    inside = 0 <= iy < params.shape[0] and 0 <= ix < params.shape[1]
                    m = params[iy, ix] if inside else params.new_zeros(())
                    z = math.hypot(y - step * iy, x - step * ix) / sigma
                    values.append(m * math.exp(-2 * max(z - 0.5, 0) ** 2))
            v = torch.stack(values)
            out[y, x] = (v * torch.softmax(20 * v, 0)).sum()
    return out.clamp(0, 1)


def naive_full_mask(params, size, step, sigma):
    """TorchRay's ``MaskGenerator.generate`` full mask (margin σ), pixel by pixel: output pixel u, window
    offset k, node ``floor(u / step) + k - padding`` at ``margin + step * node``."""
    margin, radius = sigma, 1 + math.ceil(sigma / step)
    padding = 1 + math.ceil((margin + sigma) / step)
    mid = [math.ceil(z / step) + 2 * padding - 2 * radius for z in size]
    out_shape = [step * m - step + 1 for m in mid]
    out = torch.zeros(out_shape, dtype=params.dtype)
    for uy in range(out_shape[0]):
        for ux in range(out_shape[1]):
            values = []
            for ky in range(2 * radius + 1):
                for kx in range(2 * radius + 1):
                    iy, ix = uy // step + ky - padding, ux // step + kx - padding
                    inside = 0 <= iy < params.shape[0] and 0 <= ix < params.shape[1]
                    m = params[iy, ix] if inside else params.new_zeros(())
                    z = math.hypot(uy - (margin + step * iy), ux - (margin + step * ix)) / sigma
                    values.append(m * math.exp(-2 * max(z - 0.5, 0) ** 2))
            v = torch.stack(values)
            out[uy, ux] = (v * torch.softmax(20 * v, 0)).sum()
    return out.clamp(0, 1)


def naive_pyramid(x, levels, max_blur):
    """Level l: 2-D Gaussian of sigma max_blur (1 - l/(L-1)), radius ceil(4 sigma), zero padding."""
    out = []
    for level in range(levels):
        sigma = max_blur * (1 - level / (levels - 1))
        if sigma == 0:
            out.append(x)
            continue
        r = math.ceil(4 * sigma)
        grid = torch.arange(-r, r + 1, dtype=x.dtype)
        kernel = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma**2))
        kernel = (kernel / kernel.sum()).expand(3, 1, 2 * r + 1, 2 * r + 1)
        out.append(F.conv2d(x[None], kernel, padding=r, groups=3)[0])
    return out


def test_smooth_mask_matches_the_pixel_loop():
    from castream.saliency.perturbation import SmoothMask

    params = torch.rand(3, 4, 4, dtype=torch.float64)
    generator = SmoothMask((14, 13), 4, 4.0, "cpu", torch.float64)
    for i in range(3):
        torch.testing.assert_close(generator(params)[i], naive_mask(params[i], (14, 13), 4, 4.0))
    # TorchRay's full mask with its σ margin, also where σ is not a multiple of the step
    for sigma in (4.0, 5.0):
        full = SmoothMask((14, 13), 4, sigma, "cpu", torch.float64, margin=sigma)
        for i in range(2):
            torch.testing.assert_close(full(params)[i], naive_full_mask(params[i], (14, 13), 4, sigma))
    full = SmoothMask((14, 13), 4, 4.0, "cpu", torch.float64, margin=4.0)
    torch.testing.assert_close(full.crop(full(params)), generator(params))  # σ a multiple of the step


def extremal_reference(
    model, x, target, iterations, step=4, sigma=4.0, area=0.2, levels=4, blur=2.0, full=True, reward=None
):
    """One image, the preserve game with torch.optim.SGD as TorchRay sets it up: the area term on the full
    mask with its σ margin (``full=False``: on the image part), ``reward(logits, target)`` (default: the
    target logit). The mask generator is castream's (checked against the pixel loops above): the
    sorted-area term assigns its gradient by rank, so masks equal up to rounding (all parameters start at
    1) would rank differently."""
    from castream.saliency.perturbation import SmoothMask

    generator = SmoothMask(tuple(x.shape[1:]), step, sigma, "cpu", x.dtype, margin=sigma if full else 0.0)
    pyramid = naive_pyramid(x, levels, blur)
    grid = (math.ceil(x.shape[1] / step), math.ceil(x.shape[2] / step))
    params = torch.ones(grid, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.SGD([params], lr=0.01, momentum=0.9, dampening=0.9)
    n = generator.full[0] * generator.full[1]
    reference = torch.ones(n, dtype=x.dtype)
    reference[: int(n * (1 - area))] = 0
    weight = 300.0
    reward = reward or (lambda logits, c: logits[c])
    for t in range(iterations):
        whole = generator(params[None])[0]
        mask = generator.crop(whole)
        position = mask * (levels - 1)
        low = position.floor().clamp(max=levels - 2)
        frac = position - low
        stack = torch.stack(pyramid)
        below = stack.gather(0, low.long().expand(3, -1, -1)[None]).squeeze(0)
        above = stack.gather(0, (low.long() + 1).expand(3, -1, -1)[None]).squeeze(0)
        blurred = below + frac * (above - below)
        if t % 2 == 0:
            blurred = blurred.flip(-1)
        value = reward(model(blurred[None])[0], target)
        regul = ((whole.flatten().sort(stable=True).values - reference) ** 2).mean() * weight
        optimizer.zero_grad()
        (-(value - regul)).backward()
        optimizer.step()
        params.data.clamp_(0, 1)
        weight *= 1.0035
    return generator.crop(generator(params.detach()[None]))[0]


def test_extremal_perturbation_matches_a_per_image_reference():
    model = TinyNet().double().eval()
    model.requires_grad_(False)
    x = torch.randn(2, 3, 14, 14, dtype=torch.float64)
    method = saliency.get("extremalperturbation")(
        model, max_iter=4, step=4, sigma=4.0, areas=0.2, levels=4, max_blur=2.0
    )
    maps = method(x, [1, 3], upsample=False, normalize=False)
    for i, target in enumerate([1, 3]):
        torch.testing.assert_close(maps[i], extremal_reference(model, x[i], target, 4))
    options = dict(max_iter=4, step=4, sigma=5.0, areas=0.2, levels=4, max_blur=2.0)  # σ not a multiple
    image_only = saliency.get("extremalperturbation")(model, area_measure="image", **options)
    contrastive = saliency.get("extremalperturbation")(model, reward="contrastive", **options)

    def margin(logits, c):  # TorchRay's contrastive_reward
        others = logits.clone()
        others[c] = -100
        return logits[c] - others.max()

    for i, target in enumerate([1, 3]):
        torch.testing.assert_close(
            image_only(x, [1, 3], upsample=False, normalize=False)[i],
            extremal_reference(model, x[i], target, 4, sigma=5.0, full=False),
        )
        torch.testing.assert_close(
            contrastive(x, [1, 3], upsample=False, normalize=False)[i],
            extremal_reference(model, x[i], target, 4, sigma=5.0, reward=margin),
        )
    # smooth: the final mask blurred with σ = smooth * min(H, W), TorchRay's imsmooth (zero padding)
    smoothed = saliency.get("extremalperturbation")(model, smooth=0.1, **options)
    plain = saliency.get("extremalperturbation")(model, **options)(x, [1, 3], upsample=False, normalize=False)
    sigma = 0.1 * 14
    r = math.ceil(4 * sigma)
    grid = torch.arange(-r, r + 1, dtype=x.dtype)
    kernel = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma**2))
    expected = F.conv2d(plain[:, None], (kernel / kernel.sum())[None, None], padding=r)[:, 0]
    torch.testing.assert_close(smoothed(x, [1, 3], upsample=False, normalize=False), expected)


SMALL_EP = {"step": 1, "sigma": 3.0, "max_blur": 3.0}  # TorchRay's 7 / 21 / 20 are sized for 224 px


def test_extremal_perturbation_meets_its_area_and_finds_the_evidence():
    class Flat(nn.Module):
        """A reward that no mask changes: only the area constraint acts."""

        def forward(self, x):
            return x.new_zeros(len(x), 2) + x.mean() * 0

    class Texture(nn.Module):
        """logit_0 = energy of the left half, logit_1 of the right half (logit-sized): blur keeps means but
        lowers the energy of noise, so only the read half's pixels are worth keeping."""

        def forward(self, x):
            w = x.shape[-1] // 2
            return 100 * torch.stack(
                [(x[..., :w] ** 2).mean((1, 2, 3)), (x[..., w:] ** 2).mean((1, 2, 3))], 1
            )

    torch.manual_seed(0)
    x = torch.randn(2, 3, 28, 28)
    for area in (0.1, 0.25):  # the area measured on the image part (the full mask has a σ margin)
        method = saliency.ExtremalPerturbation(
            Flat(), max_iter=300, areas=area, area_measure="image", **SMALL_EP
        )
        maps = method(x, normalize=False)
        assert ((maps > 0.5).float().mean((1, 2)) - area).abs().max() < 0.05
    method = saliency.ExtremalPerturbation(Texture(), max_iter=300, areas=0.25, jitter=False, **SMALL_EP)
    maps = method(x, [0, 1], normalize=False)  # no flip jitter: the toy is not mirror-invariant
    assert maps[0, :, :14].mean() > 4 * maps[0, :, 14:].mean()
    assert maps[1, :, 14:].mean() > 4 * maps[1, :, :14].mean()
    for variant in ("delete", "dual"):
        out = saliency.ExtremalPerturbation(TinyNet().eval(), max_iter=3, variant=variant)(x[:, :, :16, :16])
        assert out.shape == (2, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="areas must be fractions"):
        saliency.ExtremalPerturbation(Flat(), areas=1.5)
    with pytest.raises(ValueError, match="uses no layer"):
        saliency.ExtremalPerturbation(Flat(), "features")


class _NoDeadChannels(torch.nn.Module):
    """No ReLU after the explained layer: no channel is constant, and a forward of 0 images fails in the
    ``x.view(bs, -1)`` of the head, as in lukemelas-style EfficientNets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        bs = x.shape[0]
        return self.fc(self.bn(self.conv(x)).mean((2, 3)).view(bs, -1))


@pytest.mark.parametrize("name", ["scorecam", "sacam"])
def test_masking_methods_never_forward_an_empty_batch(name):
    model = _NoDeadChannels().eval()
    sizes = []
    handle = model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        maps = saliency.get(name)(model, "bn", batch_size=4, preprocess=IMAGENET)(torch.randn(2, 3, 16, 16))
    finally:
        handle.remove()
    assert maps.shape == (2, 16, 16) and 0 not in sizes


def test_random_map_defaults_to_the_explained_layers_grid():
    """Per-pixel noise is no chance level for deletion on photos (issue 20): the default lattice is the
    default layer's resolution (7 x 7 for ResNet-18 at 224 px, 2 x 2 at 64 px; a ViT's patch grid)."""
    model = torchvision.models.resnet18(num_classes=3).eval()
    for side, grid in ((224, 7), (64, 2)):
        x = torch.randn(2, 3, side, side)
        torch.testing.assert_close(
            saliency.get("random")(model)(x), saliency.get("random")(model, grid=grid)(x)
        )
    vit = tiny_vit().eval()
    assert saliency.get("random")(vit).lattice(torch.zeros(1, 3, 32, 32)) == (4, 4)
    x = torch.randn(1, 3, 16, 16)
    pixel = saliency.get("random")(model, grid="pixel")(x, upsample=False, normalize=False)
    assert pixel.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="grid must be an int >= 1 or one of"):
        saliency.get("random")(model, grid="coarse")


def test_attention_maps_keep_the_mask_the_blocks_were_given():
    """Issue 32 item 14: raw attention and rollout recomputed attention without the block's attn_mask."""
    timm = pytest.importorskip("timm")
    from castream.saliency.attention import _AttentionMethod

    torch.manual_seed(0)
    ViT = timm.models.vision_transformer.VisionTransformer
    vit = ViT(img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=3, num_classes=5).eval()
    keep = torch.ones(5, 5, dtype=torch.bool)
    keep[:, 4] = False  # every block is called with a mask hiding token 4 (patch 3) from every query
    vit.forward = lambda images: ViT.forward(vit, images, attn_mask=keep)
    x = torch.randn(2, 3, 32, 32)
    true = []
    for block in vit.blocks:  # the attention as the blocks computed it (the unfused path shows it)
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, args, out: true.append(out.mean(1)))
    vit(x)
    method = _AttentionMethod(vit)
    found, _ = method.vit_attention(x, [0, 1])
    for got, expected in zip(found, true):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert (got[..., 4] == 0).all()
    rows = saliency.RawAttention(vit)(x)
    assert rows.shape == (2, 32, 32) and (rows[:, -1, -1] == 0).all()  # patch 3's centre side: no attention
