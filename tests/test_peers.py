"""castream's methods and options against the peer libraries' own implementations (issue 31): random-weight
torchvision models, the peer called on the same model, images and targets. Where the peer's convention
differs (the sign of a principal component, which LAPACK leaves arbitrary), the test states it and checks
the rest exactly."""

import numpy as np
import pytest
import torch
import torchvision

from castream import saliency
from castream.maps import (
    eigen_projection,
    finalize_maps,
    kernel_projection,
    normalize_maps,
    normalized_channel_sum,
)

peer = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import (  # noqa: E402
    get_2d_projection,
    get_2d_projection_kernel,
)

TARGETS = [1, 3]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 128, 128)


def _theirs(cls, model, layers, x, targets=TARGETS, **call):
    with cls(model=model, target_layers=layers) as cam:
        found = cam(
            x, targets=None if targets is None else [ClassifierOutputTarget(t) for t in targets], **call
        )
    return torch.from_numpy(found)


def _close(ours, theirs, atol=1e-5):
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)


def test_gradcam_elementwise_and_fem_agree_with_pytorch_grad_cam(resnet, images):
    for name, cls in (("gradcamelementwise", peer.GradCAMElementWise), ("fem", peer.FEM)):
        ours = saliency.get(name)(resnet, "layer3")(images, TARGETS)
        _close(ours, _theirs(cls, resnet, [resnet.layer3], images))


def test_several_layers_are_fused_as_pytorch_grad_cam_fuses_them(resnet, images):
    ours = saliency.GradCAM(resnet, ["layer3", "layer4"])(images, TARGETS)
    _close(ours, _theirs(peer.GradCAM, resnet, [resnet.layer3, resnet.layer4], images))
    # Layer-CAM keeps castream's convention (the finest layer's resolution), pytorch-grad-cam's on request
    layercam = saliency.LayerCAM(resnet, ["layer3", "layer4"], fusion="input")(images, TARGETS)
    _close(layercam, _theirs(peer.LayerCAM, resnet, [resnet.layer3, resnet.layer4], images))
    finest = saliency.LayerCAM(resnet, ["layer3", "layer4"])(images, TARGETS)
    assert (finest - layercam).abs().max() > 1e-3


def test_aug_smooth_is_pytorch_grad_cams_test_time_augmentation(resnet, images):
    ours = saliency.GradCAM(resnet, "layer3", aug_smooth=True)(images, TARGETS)
    theirs = _theirs(peer.GradCAM, resnet, [resnet.layer3], images, aug_smooth=True)
    _close(ours, finalize_maps(theirs, None, normalize=True))  # castream min-max normalizes the mean
    assert (ours - saliency.GradCAM(resnet, "layer3")(images, TARGETS)).abs().max() > 1e-3


def _signs(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """Per image, +1 or -1: ``ours == sign * theirs`` (asserted)."""
    signs = torch.sign((ours * theirs).flatten(1).sum(1))
    _close(ours, signs[:, None, None] * theirs, atol=1e-4)
    return signs


def test_eigen_projection_is_pytorch_grad_cams_up_to_the_sign_it_leaves_open(resnet, images):
    acts = saliency.EigenCAM(resnet, "layer3").activations(images, None)[0][0]
    terms = torch.randn(3, 16, 5, 7)
    for x in (acts, terms):
        ours = eigen_projection(x)
        theirs = torch.from_numpy(get_2d_projection(x.numpy()))
        _signs(ours, theirs)
        # castream's orientation: positively correlated with the channel sum
        total = x.sum(1) - x.sum(1).mean(dim=(1, 2), keepdim=True)
        assert ((ours * total).flatten(1).sum(1) >= 0).all()


def test_eigencam_eigengradcam_and_eigen_smooth_agree_up_to_the_sign(resnet, images):
    method = saliency.EigenCAM(resnet, "layer3")
    acts = method.activations(images, None)[0][0]
    projection = torch.from_numpy(get_2d_projection(acts.numpy()))
    signs = _signs(eigen_projection(acts), projection)
    expected = finalize_maps((signs[:, None, None] * projection).clamp(min=0), (128, 128), True)
    _close(method(images), expected)
    theirs = _theirs(peer.EigenCAM, resnet, [resnet.layer3], images)
    for i, sign in enumerate(signs.tolist()):  # where LAPACK's sign is castream's, the maps are the peer's
        if sign > 0:
            _close(expected[i], theirs[i])
    for name, cls, options, call in (
        ("eigengradcam", peer.EigenGradCAM, {}, {}),
        ("gradcam", peer.GradCAM, {"eigen_smooth": True}, {"eigen_smooth": True}),
    ):
        ours = saliency.get(name)(resnet, "layer3", **options)(images, TARGETS)
        theirs = _theirs(cls, resnet, [resnet.layer3], images, **call)
        flipped = [i for i in range(len(images)) if (ours[i] - theirs[i]).abs().max() > 1e-5]
        for i in flipped:  # a flipped component: the peer keeps the other half of the map
            assert (ours[i] * theirs[i]).sum() < (ours[i] * ours[i]).sum()


def test_kpca_cam_agrees_with_scikit_learns_kernel_pca(resnet, images):
    acts = saliency.KPCACAM(resnet, "layer3").activations(images, None)[0][0]
    for kernel in ("sigmoid", "rbf", "linear"):
        ours = kernel_projection(acts, kernel)
        theirs = torch.from_numpy(get_2d_projection_kernel(acts.numpy(), kernel))
        scale = theirs.abs().amax()
        _signs(ours / scale, theirs / scale)
    with pytest.raises(ValueError, match="kernel must be one of"):
        saliency.KPCACAM(resnet, kernel="laplace")


class _Curved(torch.nn.Module):
    """y = V mean_ij(A + A^2) + b after a conv layer A: its Hessian term has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        a = self.features(x)
        return self.fc((a + a**2).mean(dim=(2, 3)))


def test_shapley_cam_closed_form_and_pytorch_grad_cam():
    torch.manual_seed(0)
    model = _Curved().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ours = saliency.ShapleyCAM(model, "features")(x, TARGETS, upsample=False, normalize=False)
    # g = v (1 + 2A) / N and (H A) = 2 v A / N, so w_k = GAP(g - HA / 2) = v_k (1 + mean A_k) / N
    a = model.features(x).detach()
    v = model.fc.weight.detach()[TARGETS]
    w = v * (1 + a.mean(dim=(2, 3))) / 36
    torch.testing.assert_close(ours, (w[:, :, None, None] * a).sum(1).clamp(min=0))
    gradcam = saliency.GradCAM(model, "features")(x, TARGETS, upsample=False, normalize=False)
    assert (ours - gradcam).abs().max() > 1e-3
    # after a ResNet's last stage only the pooling and a linear head remain: the Hessian term is 0
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=5).eval()
    y = torch.randn(2, 3, 64, 64)
    _close(saliency.ShapleyCAM(resnet)(y, TARGETS), saliency.GradCAM(resnet)(y, TARGETS), atol=1e-6)
    # the peer on a curved torchvision network (GELU, LayerNorm); its hooks are removed by hand because
    # its release() fails on ConvNeXt ("Can't detach views in-place")
    torch.manual_seed(0)
    convnext = torchvision.models.convnext_tiny(num_classes=5).eval()
    z = torch.randn(2, 3, 96, 96)
    cam = peer.ShapleyCAM(model=convnext, target_layers=[convnext.features[5]])
    try:
        theirs = torch.from_numpy(cam(z, targets=[ClassifierOutputTarget(t) for t in TARGETS]))
    finally:
        for handle in cam.activations_and_grads.handles:
            handle.remove()
        cam.activations_and_grads.release = lambda: None  # its __del__ would raise the same error
    _close(saliency.ShapleyCAM(convnext, "features.5")(z, TARGETS), theirs)


def test_finer_cam_agrees_with_pytorch_grad_cam(resnet, images):
    ours = saliency.FinerCAM(resnet, "layer3")(images)  # the predicted class against its nearest three
    with peer.FinerCAM(model=resnet, target_layers=[resnet.layer3]) as cam:
        theirs = torch.from_numpy(cam(images, targets=None))
    _close(ours, theirs)
    # the contrastive score, by hand for one image: sum_j p_j (y_c - y_j) / sum_j p_j over the 3 nearest
    logits = resnet(images).detach()
    c = logits.argmax(1)
    score = saliency.FinerCAM(resnet, "layer3").objective(logits, c)
    y, p = logits[0], logits[0].softmax(0)
    nearest = [int(j) for j in (y - y[c[0]]).abs().argsort() if j != c[0]][:3]
    by_hand = sum(float(p[j] * (y[c[0]] - y[j])) for j in nearest) / (
        sum(float(p[j]) for j in nearest) + 1e-9
    )
    assert float(score[0]) == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(ValueError, match="base must be one of"):
        saliency.FinerCAM(resnet, base="scorecam")


def test_options_are_checked_and_every_new_method_is_registered(resnet):
    for name in (
        "eigencam",
        "eigengradcam",
        "gradcamelementwise",
        "kpcacam",
        "fem",
        "shapleycam",
        "finercam",
    ):
        assert saliency.get(name).name == name
    with pytest.raises(ValueError, match="no per-channel sum"):
        saliency.EigenCAM(resnet, eigen_smooth=True)
    with pytest.raises(TypeError, match="aug_smooth must be True or False"):
        saliency.GradCAM(resnet, aug_smooth=1)
    with pytest.raises(ValueError, match="fusion must be one of"):
        saliency.GradCAM(resnet, fusion="max")
    maps = saliency.EigenCAM(resnet)(torch.randn(1, 3, 64, 64), upsample=False)
    assert maps.shape == (1, 2, 2) and np.isfinite(maps.numpy()).all()


# --- TorchCAM's methods --------------------------------------------------------------------------------


def _torchcam(cls, model, x, **options):
    with cls(model, "layer3", input_shape=tuple(x.shape[1:]), **options) as cam:
        with torch.no_grad():
            scores = model(x)
        return cam(class_idx=TARGETS, scores=scores)[0]


def test_score_cam_family_agrees_with_torchcam(resnet):
    tc = pytest.importorskip("torchcam.methods")
    import castream

    x = torch.randn(2, 3, 64, 64)
    common = {"baseline": "mean", "preprocess": castream.Preprocess(), "normalize_first": True}
    for name, cls, options in (
        ("scorecam", tc.ScoreCAM, {}),
        ("iscam", tc.ISCAM, {"num_samples": 4}),
        ("sscam", tc.SSCAM, {"num_samples": 2, "std": 1e-9}),  # TorchCAM refuses std = 0
    ):
        ours = saliency.get(name)(resnet, "layer3", **common, **options)(x, TARGETS, upsample=False)
        _close(ours, _torchcam(cls, resnet, x, **options))
    # thesis (1.7)'s n(up(A)) (castream's default) and TorchCAM's up(n(A)) differ by about 1e-3
    default = saliency.ScoreCAM(resnet, "layer3", baseline="mean", preprocess=castream.Preprocess())
    assert 1e-5 < (default(x, TARGETS, upsample=False) - _torchcam(tc.ScoreCAM, resnet, x)).abs().max() < 1e-2


def test_ss_cam_noise_is_seeded_and_vanishes_with_std_0(resnet):
    import castream

    x = torch.randn(2, 3, 32, 32)
    options = {"preprocess": castream.Preprocess(), "num_samples": 3}
    plain = saliency.ScoreCAM(resnet, "layer3", preprocess=castream.Preprocess())(x, TARGETS)
    _close(saliency.SSCAM(resnet, "layer3", std=0.0, **options)(x, TARGETS), plain, atol=1e-6)
    noisy = saliency.SSCAM(resnet, "layer3", **options)
    torch.testing.assert_close(noisy(x, TARGETS), noisy(x, TARGETS), atol=0, rtol=0)
    assert (
        noisy(x, TARGETS) - saliency.SSCAM(resnet, "layer3", seed=1, **options)(x, TARGETS)
    ).abs().max() > 1e-3
    with pytest.raises(ValueError, match="std must be a number >= 0"):
        saliency.SSCAM(resnet, std=-1.0, preprocess=castream.Preprocess())


def test_smooth_gradcampp_is_the_papers_formula_by_a_naive_loop(resnet):
    x = torch.randn(2, 3, 64, 64)
    ours = saliency.SmoothGradCAMPlusPlus(resnet, "layer3", num_samples=3, std=0.3, seed=5)(
        x, TARGETS, upsample=False, normalize=False
    )
    generator = torch.Generator().manual_seed(5)
    found = {}
    handle = resnet.layer3.register_forward_hook(lambda m, i, o: found.__setitem__("a", o))
    try:
        with torch.no_grad():
            resnet(x)
        clean = found["a"]
        sums = [0, 0, 0]
        for _ in range(3):
            noisy = (x + 0.3 * torch.randn(x.shape, generator=generator)).requires_grad_(True)
            logits = resnet(noisy)
            (g,) = torch.autograd.grad(logits[[0, 1], TARGETS].sum(), found["a"])
            sums = [s + g**p for s, p in zip(sums, (1, 2, 3))]
    finally:
        handle.remove()
    g1, g2, g3 = (s / 3 for s in sums)
    expected = []
    for b in range(2):  # per image and channel, as Omeiza et al. write it
        a = clean[b]
        den = 2 * g2[b] + a.sum(dim=(1, 2), keepdim=True) * g3[b]
        alpha = torch.where(den != 0, g2[b] / torch.where(den != 0, den, 1), 0)
        w = (alpha * g1[b].clamp(min=0)).sum(dim=(1, 2))
        expected.append((w[:, None, None] * a).sum(0).clamp(min=0))
    _close(ours, torch.stack(expected), atol=1e-6)
    assert (
        ours - saliency.GradCAMPlusPlus(resnet, "layer3")(x, TARGETS, upsample=False, normalize=False)
    ).abs().max() > 0


# --- Ablation-CAM without the prefix -----------------------------------------------------------------


class _Skip(torch.nn.Module):
    """A value from before the layer is read after it (a skip around it): the cut must record it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.layer = torch.nn.Sequential(torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x):
        s = self.stem(x)
        return self.fc((self.layer(s) * s.sigmoid()).mean(dim=(2, 3)))


class _Untraceable(_Skip):
    def forward(self, x):
        s = self.stem(x)
        if float(s.mean()) > 1e9:  # data-dependent control flow: torch.fx cannot trace it
            s = -s
        return self.fc(self.layer(s).mean(dim=(2, 3)))


class _ChannelMean(_Skip):
    """A suffix that starts with ops of the channel-wise kinds but mixes the channels: a mean over dim 1
    whose output happens to have the layer's shape[:2] (6 channels, 6 rows): the recorded check refuses it."""

    def forward(self, x):
        return self.fc(self.layer(self.stem(x)).mean(1)).mean(1)


def test_ablation_cam_runs_only_the_suffix_with_the_same_maps(resnet):
    torch.manual_seed(0)
    cases = [  # (model, layer, images, whether the ablations start after a channel-wise pooling)
        (resnet, "layer4", torch.randn(2, 3, 64, 64), True),
        (resnet, "layer3", torch.randn(2, 3, 64, 64), False),
        (torchvision.models.convnext_tiny(num_classes=5).eval(), None, torch.randn(2, 3, 64, 64), True),
        (_Skip().eval(), "layer", torch.randn(2, 3, 8, 8), False),
        (_ChannelMean().eval(), "layer", torch.randn(2, 3, 6, 6), False),
        (_Untraceable().eval(), "layer", torch.randn(2, 3, 8, 8), False),
    ]
    for model, layer, x, pooled in cases:
        fast = saliency.AblationCAM(model, layer)
        maps = fast(x, TARGETS)
        exact = saliency.AblationCAM(model, layer, suffix=False)(x, TARGETS)
        _close(maps, exact, atol=1e-6)
        assert (fast._split[0] is None) == isinstance(model, _Untraceable)  # traced unless it cannot be
        assert pooled == (fast._split[0] is not None and fast._split[0].pooled is not None)
    # the channel-mean model's start was found by kind and refused by the recorded check
    from castream.saliency._suffix import split_after

    assert split_after(_ChannelMean(), "layer").pooled is not None
    # the cut of the skip model records the one value read around the layer; the ResNet's none
    assert len(split_after(_Skip(), "layer").saved) == 1
    assert split_after(resnet, "layer4").saved == []


def test_ablation_cam_agrees_with_pytorch_grad_cam(resnet):
    x = torch.randn(2, 3, 64, 64)
    ours = saliency.AblationCAM(resnet)(x, TARGETS)
    _close(ours, _theirs(peer.AblationCAM, resnet, [resnet.layer4], x))


def test_fullgrad_agrees_with_pytorch_grad_cam():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    for m in model.modules():  # a fresh batch norm has no effective bias: give them one
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data.normal_(0, 0.5)
            m.running_mean.normal_(0, 0.5)
    x = torch.randn(2, 3, 64, 64)
    ours = saliency.FullGrad(model)(x, TARGETS)
    cam = peer.FullGrad(model=model, target_layers=[])
    try:
        theirs = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(t) for t in TARGETS]))
    finally:
        cam.activations_and_grads.release()
    # pytorch-grad-cam normalizes each channel by (1e-7 + max), which shrinks the channels whose range is
    # near 1e-7 (castream divides by the range itself): 9e-4 here; with its epsilon the maps are the same
    assert (ours - theirs).abs().max() < 2e-3
    _close(saliency.FullGrad(model, eps=1e-7)(x, TARGETS), theirs, atol=1e-5)
    with pytest.raises(ValueError, match="takes no layer"):
        saliency.FullGrad(model, "layer4")
    with pytest.raises(ValueError, match="eps must be a number in"):
        saliency.FullGrad(model, eps=-1e-7)


def test_normalized_channel_sum_is_the_sum_of_the_normalized_channels():
    """FullGrad's in-place normalization: ``normalize_maps(t).sum(1)`` (constant and near-constant
    channels 0), and with ``eps`` pytorch-grad-cam's ``(t - min) / (eps + max(t - min))`` by hand."""
    torch.manual_seed(0)
    terms = torch.rand(2, 5, 6, 7)
    terms[0, 1] = 3.0  # constant
    terms[1, 2] = 1.0 + 1e-9 * torch.rand(6, 7)  # within float noise of constant
    reference = normalize_maps(terms).sum(1)
    torch.testing.assert_close(normalized_channel_sum(terms.clone()), reference, rtol=0, atol=1e-6)
    shifted = terms - terms.flatten(2).amin(-1)[..., None, None]
    by_hand = (shifted / (1e-7 + shifted.flatten(2).amax(-1)[..., None, None])).sum(1)
    torch.testing.assert_close(normalized_channel_sum(terms.clone(), 1e-7), by_hand, rtol=0, atol=1e-6)


# --- ROAD -----------------------------------------------------------------------------------------------


def test_road_agrees_with_pytorch_grad_cam(resnet):
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from castream import metrics

    torch.manual_seed(0)
    x = torch.randn(2, 3, 48, 48)
    maps = finalize_maps(torch.rand(2, 6, 6), (48, 48), normalize=True)
    targets = [ClassifierOutputSoftmaxTarget(t) for t in TARGETS]
    percentiles = (20, 50, 80)
    for order, removal in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
        ours = metrics.road(resnet, x, maps, TARGETS, order=order, noise=0.0, percentiles=percentiles)
        theirs = np.mean(  # pytorch-grad-cam's ROAD at the same percentiles, its imputer without noise
            [
                PerturbationConfidenceMetric(removal(p, NoisyLinearImputer(noise=0.0)))(
                    x, maps.numpy(), targets, resnet
                )
                for p in percentiles
            ],
            axis=0,
        )
        _close(ours, torch.from_numpy(theirs), atol=1e-5)
    combined = metrics.road(resnet, x, maps, TARGETS, order="combined", noise=0.0, percentiles=percentiles)
    lerf = metrics.road(resnet, x, maps, TARGETS, order="lerf", noise=0.0, percentiles=percentiles)
    morf = metrics.road(resnet, x, maps, TARGETS, order="morf", noise=0.0, percentiles=percentiles)
    _close(combined, (lerf - morf) / 2, atol=1e-7)
    noisy = metrics.road(resnet, x, maps, TARGETS, percentiles=percentiles)
    torch.testing.assert_close(noisy, metrics.road(resnet, x, maps, TARGETS, percentiles=percentiles))
    assert (noisy - morf).abs().max() > 0  # the noise is there, seeded
    with pytest.raises(ValueError, match="order must be one of"):
        metrics.road(resnet, x, maps, TARGETS, order="both")
    with pytest.raises(ValueError, match="percentiles must be numbers"):
        metrics.road(resnet, x, maps, TARGETS, percentiles=(0, 50))


def test_imputation_is_the_weighted_mean_of_the_neighbours():
    """A closed-form case: one removed pixel in a constant-gradient image is the mean of its neighbours,
    and a removed block is filled with a harmonic (here linear) function of its border."""
    from castream.metrics import impute

    ramp = np.broadcast_to(np.arange(8.0)[None, None, :], (1, 8, 8)).copy()
    keep = np.ones((8, 8), dtype=bool)
    keep[2:6, 2:6] = False
    np.testing.assert_allclose(impute(ramp, keep), ramp, atol=1e-12)  # linear functions are harmonic
    single = np.random.default_rng(0).normal(size=(2, 5, 5))
    keep = np.ones((5, 5), dtype=bool)
    keep[2, 2] = False
    found = impute(single, keep)[:, 2, 2]
    w = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    np.testing.assert_allclose(found, (single[:, 1:4, 1:4] * w).sum(axis=(1, 2)), atol=1e-12)
    assert (impute(single, np.zeros((5, 5), dtype=bool)) == 0).all()  # nothing known: the mean colour


# --- targets: callables of the output ------------------------------------------------------------------


def test_callable_targets_agree_with_pytorch_grad_cam(resnet, images):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, SemanticSegmentationTarget

    from castream import targets as T

    # a list of class targets is the class indices; the softmax one is pytorch-grad-cam's
    logit = saliency.GradCAM(resnet, "layer3")(images, [T.ClassifierOutputTarget(t) for t in TARGETS])
    torch.testing.assert_close(logit, saliency.GradCAM(resnet, "layer3")(images, TARGETS))
    ours = saliency.GradCAM(resnet, "layer3")(images, [T.ClassifierOutputSoftmaxTarget(t) for t in TARGETS])
    with peer.GradCAM(model=resnet, target_layers=[resnet.layer3]) as cam:
        theirs = torch.from_numpy(cam(images, targets=[ClassifierOutputSoftmaxTarget(t) for t in TARGETS]))
    _close(ours, theirs)
    # a segmentation model: the class's score summed over a mask of its output
    torch.manual_seed(0)
    seg = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = seg(x)["out"]
    masks = [(o.argmax(0) == 0).float() * (torch.arange(64) < 32).float() for o in out]  # left half
    ours = saliency.GradCAM(seg, "backbone.12", output="out")(
        x, [T.SemanticSegmentationTarget(0, m) for m in masks]
    )

    class Out(torch.nn.Module):  # pytorch-grad-cam reads a tensor output
        def __init__(self):
            super().__init__()
            self.seg = seg

        def forward(self, x):
            return self.seg(x)["out"]

    with peer.GradCAM(model=Out().eval(), target_layers=[seg.backbone["12"]]) as cam:
        theirs = torch.from_numpy(cam(x, targets=[SemanticSegmentationTarget(0, m.numpy()) for m in masks]))
    assert ours.amax() > 0
    _close(ours, theirs)
    # one callable for every image; methods that score masked inputs refuse callables
    summed = saliency.GradCAM(resnet, "layer3")(images, lambda o: o[1] + o[3])
    assert summed.shape == (2, 128, 128)
    import castream

    with pytest.raises(TypeError, match="takes class indices"):
        saliency.ScoreCAM(resnet, preprocess=castream.Preprocess())(images, [T.ClassifierOutputTarget(1)] * 2)
    with pytest.raises(TypeError, match="takes class indices"):
        saliency.FinerCAM(resnet)(images, [T.ClassifierOutputTarget(1)] * 2)
    with pytest.raises(ValueError, match="1 or 2 callables"):
        saliency.GradCAM(resnet)(images, [T.ClassifierOutputTarget(1)] * 3)
