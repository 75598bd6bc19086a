"""Captum and Quantus interop: each round trip gives the same map through both paths (run when the extra
is installed)."""

import numpy as np
import pytest
import torch

from castream import metrics, saliency

from _models import TinyNet


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyNet().eval()


def test_captum_layer_gradcam_equals_castream_gradcam(model):
    pytest.importorskip("captum")
    from castream.interop.captum import CaptumMethod

    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 2, 4])
    ours = saliency.GradCAM(model, "features")(x, t)
    captum = CaptumMethod(
        model, "features", attribution="LayerGradCam", attribute_kwargs={"relu_attributions": True}
    )(x, t)
    torch.testing.assert_close(captum, ours, rtol=1e-5, atol=1e-6)
    # by name, as the runner and the CLI reach it, with the default layer
    by_name = saliency.get("captum:LayerGradCam")(model, attribute_kwargs={"relu_attributions": True})
    torch.testing.assert_close(by_name(x, t), ours, rtol=1e-5, atol=1e-6)


def test_captum_input_attribution_through_castream_metrics(model):
    pytest.importorskip("captum")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    method = saliency.get("captum:Saliency")(model)
    maps = method(x, t)
    xi = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(model(xi).gather(1, t[:, None]).sum(), xi)[0]
    expected = grad.abs().amax(1)
    expected = (expected - expected.amin((1, 2), keepdim=True)) / (
        expected.amax((1, 2), keepdim=True) - expected.amin((1, 2), keepdim=True)
    )
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)  # |input gradient|, max over colours
    assert metrics.insertion(model, x, maps, t).shape == (2,)
    with pytest.raises(ValueError, match="takes no layer"):
        saliency.get("captum:Saliency")(model, layer="features")
    with pytest.raises(ValueError, match="no attribution 'Nothing'"):
        saliency.get("captum:Nothing")


def _min_max(a):
    lo, hi = a.amin((1, 2), keepdim=True), a.amax((1, 2), keepdim=True)
    return torch.nan_to_num((a - lo) / (hi - lo))  # a constant map is all zeros, as castream's


def test_captum_attributions_that_take_the_module(model):
    """GuidedBackprop, DeepLift and GuidedGradCam hook the network's modules: they get a module (they
    raised "Given model must be an instance of torch.nn.Module" before). Each equals Captum called on the
    model directly, and the caller's images and model are left as found."""
    attr = pytest.importorskip("captum.attr")
    x = torch.randn(2, 3, 16, 16)
    t = model(x).argmax(1)  # the predicted classes: their Grad-CAM (in GuidedGradCam) is not all zeros
    references = {
        "GuidedBackprop": lambda: attr.GuidedBackprop(model),
        "DeepLift": lambda: attr.DeepLift(model),
        "GuidedGradCam": lambda: attr.GuidedGradCam(model, model.features),
    }
    for name, reference in references.items():
        maps = saliency.get(f"captum:{name}")(
            model, **({"layer": "features"} if name == "GuidedGradCam" else {})
        )(x, t)
        expected = _min_max(reference().attribute(x.clone(), target=t).detach().abs().amax(1))
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6, msg=name)
        assert not x.requires_grad and x.grad is None, name
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules()), name
    # castream's own guided backprop is the same attribution
    torch.testing.assert_close(
        saliency.get("guidedbackprop")(model)(x, t),
        saliency.get("captum:GuidedBackprop")(model)(x, t),
        rtol=1e-5,
        atol=1e-6,
    )


def test_quantus_explain_func_round_trip(model):
    quantus = pytest.importorskip("quantus")
    from castream.interop.quantus import explain

    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    ours = saliency.GradCAM(model)(x, t).numpy()
    theirs = explain(model=model, inputs=x.numpy(), targets=t.numpy(), method="gradcam", device="cpu")
    np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-7)
    # a Quantus metric fed castream's explain_func scores exactly as with the precomputed maps
    metric = quantus.Sparseness(disable_warnings=True, display_progressbar=False)
    kwargs = dict(model=model, x_batch=x.numpy(), y_batch=t.numpy(), device="cpu")
    via_func = metric(**kwargs, a_batch=None, explain_func=explain, explain_func_kwargs={"method": "gradcam"})
    via_maps = metric(**kwargs, a_batch=ours[:, None])
    np.testing.assert_allclose(via_func, via_maps, rtol=1e-6)


def test_noise_tunnel_wraps_an_attribution():
    """captum:NoiseTunnel (SmoothGrad by default: NoiseTunnel of Saliency) equals Captum called directly."""
    captum = pytest.importorskip("captum.attr")
    model, x = TinyNet().eval(), torch.rand(2, 3, 16, 16)
    method = saliency.get("captum:NoiseTunnel")(model, nt_samples=4, stdevs=0.1, nt_type="smoothgrad")
    torch.manual_seed(3)
    found = method(x, [1, 2], normalize=False)
    torch.manual_seed(3)
    direct = captum.NoiseTunnel(captum.Saliency(model)).attribute(
        x.clone(), target=torch.tensor([1, 2]), nt_samples=4, stdevs=0.1, nt_type="smoothgrad"
    )
    torch.testing.assert_close(found, direct.abs().amax(1))
    inner = saliency.get("captum:NoiseTunnel")(model, inner="IntegratedGradients", nt_samples=2, n_steps=4)
    assert inner(x).shape == (2, 16, 16)


# --- Quantus metrics inside the runner (issue 31) --------------------------------------------------------


def test_quantus_metrics_run_inside_the_runner_on_castreams_maps(tmp_path):
    quantus = pytest.importorskip("quantus")
    import json
    import shutil

    import numpy as np

    from castream.data.synthetic import generate
    from castream.evaluate import EvalConfig, Runner
    from castream.evaluate.results import read_cell
    from castream.interop.quantus import batch_seed, explain, seeded

    root = generate(tmp_path / "synth", classes=3, train=4, val=6, size=64, workers=1)
    options = {"quantus:FaithfulnessCorrelation": {"nr_runs": 5, "subset_size": 16}}
    cfg = EvalConfig(
        model="resnet18",
        data=f"synthetic:{root}",
        out=str(tmp_path / "run"),
        methods=("gradcam",),
        metrics=("recognition", "quantus:FaithfulnessCorrelation"),
        metric_options=options,
        images=4,
        batch_size=2,
        size=64,
        resize=64,
        baselines=(),
        poolings=("gap",),
        seed=0,
    )
    runner = Runner(cfg, progress=False)
    runner.run()
    rows = read_cell(tmp_path / "run", "resnet18-gap-gradcam").rows
    assert len(rows) == 4 and all(np.isfinite(r["quantus_faithfulnesscorrelation"]) for r in rows.values())
    # the same numbers as Quantus called directly on the same maps, batch by batch
    model = runner.models["resnet18"]
    order = sorted(rows)
    for batch in (order[:2], order[2:]):
        x = torch.stack([runner.dataset[i][0] for i in batch])
        y = np.array([runner.dataset[i][1] for i in batch])
        a = explain(model, x.numpy(), y, method="gradcam")[:, None]
        metric = quantus.FaithfulnessCorrelation(
            nr_runs=5,
            subset_size=16,
            disable_warnings=True,
            display_progressbar=False,
            return_aggregate=False,
        )
        with seeded(batch_seed(0, batch)):  # the runner's seed of this batch
            direct = metric(model=model, x_batch=x.numpy(), y_batch=y, a_batch=a, device="cpu")
        found = [rows[i]["quantus_faithfulnesscorrelation"] for i in batch]
        np.testing.assert_allclose(found, direct, atol=1e-5)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "Quantus FaithfulnessCorrelation" in (tmp_path / "run" / "results.md").read_text()
    assert results
    for metric, options, message in (
        ("quantus:PixelFlipping", {"features_in_step": 1024}, "not one score per image"),  # a curve each
        ("quantus:PointingGame", {}, "needs segmentation masks"),
    ):
        fields = {"metrics": (metric,), "metric_options": {metric: options}, "out": str(tmp_path / "b")}
        bad = EvalConfig(**{**cfg.to_dict(), **fields})
        with pytest.raises(ValueError, match=message):
            Runner(bad, progress=False).run()
        shutil.rmtree(tmp_path / "b")
    with pytest.raises(ValueError, match="quantus has no metric 'NoSuchMetric'"):
        EvalConfig(**{**cfg.to_dict(), "metrics": ("quantus:NoSuchMetric",), "metric_options": {}})
    with pytest.raises(ValueError, match="has no option 'colour'"):
        EvalConfig(**{**cfg.to_dict(), "metric_options": {"quantus:FaithfulnessCorrelation": {"colour": 1}}})
