"""castream against the peer libraries, side by side: for every method and metric a peer also implements,
castream and the peer on the same model, images and targets; the agreement (max |difference| of the maps,
or of the per-image scores) and the time ratio peer / castream (> 1: castream is faster).

Rows whose peer differs by a documented convention say so (``note``): the sign of a principal component
(EigenCAM), pytorch-grad-cam's 1e-7 in its normalization (FullGrad, compared at ``eps=1e-7``), its
``align_corners=True`` masks (Score-CAM), the random draws (SS-CAM's noise: compared at std ~ 0). The
Quantus rows time a metric run inside castream's runner against Quantus called directly. Prints one JSON
record per row.
    python benchmarks/peers.py --model resnet18 --size 112 --batch 2
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

from .. import Preprocess, metrics, saliency
from ..maps import finalize_maps
from ._timing import base_parser, emit, environment, interleaved


def _rows(model, x, targets):
    """(name, peer, castream call, peer call, note) of every comparison the installed peers allow."""
    rows = []
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
    except ImportError:
        pgc = None
    if pgc is not None:
        layer = [model.layer4]
        t = [ClassifierOutputTarget(int(c)) for c in targets]

        def peer(cls, **call):
            def run():
                with cls(model=model, target_layers=layer) as cam:
                    return torch.from_numpy(cam(x, targets=t, **call))

            return run

        for name, cls, options, note in (
            ("gradcam", pgc.GradCAM, {}, ""),
            ("gradcam++", pgc.GradCAMPlusPlus, {"eps": 1e-6}, "eps=1e-6, pytorch-grad-cam's"),
            ("xgradcam", pgc.XGradCAM, {}, ""),
            ("hirescam", pgc.HiResCAM, {}, ""),
            ("layercam", pgc.LayerCAM, {}, ""),
            ("gradcamelementwise", pgc.GradCAMElementWise, {}, ""),
            ("fem", pgc.FEM, {}, ""),
            ("shapleycam", pgc.ShapleyCAM, {}, ""),
            ("eigencam", pgc.EigenCAM, {}, "sign of the component: castream orients it, LAPACK does not"),
            ("eigengradcam", pgc.EigenGradCAM, {}, "sign of the component, as EigenCAM"),
            ("kpcacam", pgc.KPCA_CAM, {}, "sign of the component, as EigenCAM"),
            ("ablationcam", pgc.AblationCAM, {}, "castream evaluates only the part after the layer"),
        ):
            method = saliency.get(name)(model, "layer4", **options)
            rows.append((name, "pytorch-grad-cam", lambda m=method: m(x, targets), peer(cls), note))
        for option in ("aug_smooth", "eigen_smooth"):
            method = saliency.GradCAM(model, "layer4", **{option: True})
            note = "the peer's mean min-max normalized" if option == "aug_smooth" else "sign of the component"
            theirs = peer(pgc.GradCAM, **{option: True})
            if option == "aug_smooth":  # castream's maps are in [0, 1]: compare with the normalized mean
                theirs = lambda run=theirs: finalize_maps(run(), None, normalize=True)  # noqa: E731
            rows.append(
                (f"gradcam {option}", "pytorch-grad-cam", lambda m=method: m(x, targets), theirs, note)
            )
        fullgrad = saliency.FullGrad(model, eps=1e-7)

        def peer_fullgrad():
            cam = pgc.FullGrad(model=model, target_layers=[])
            try:
                return torch.from_numpy(cam(x, targets=t))
            finally:
                cam.activations_and_grads.release()

        rows.append(
            (
                "fullgrad",
                "pytorch-grad-cam",
                lambda: fullgrad(x, targets),
                peer_fullgrad,
                "eps=1e-7, pytorch-grad-cam's (castream's default 0: plain min-max)",
            )
        )
        finer = saliency.FinerCAM(model, "layer4")

        def peer_finer():
            with pgc.FinerCAM(model=model, target_layers=layer) as cam:
                return torch.from_numpy(cam(x, targets=None))

        note = "the predicted class against its three nearest, in both"
        rows.append(("finercam", "pytorch-grad-cam", lambda: finer(x), peer_finer, note))
        rows += _road_rows(model, x, targets, ClassifierOutputSoftmaxTarget)
    try:
        import torchcam.methods as tc
    except ImportError:
        tc = None
    if tc is not None:
        stats = {"baseline": "mean", "preprocess": Preprocess(), "normalize_first": True}
        for name, cls, options in (
            ("scorecam", tc.ScoreCAM, {}),
            ("iscam", tc.ISCAM, {"num_samples": 4}),
            ("sscam", tc.SSCAM, {"num_samples": 2, "std": 1e-9}),
        ):
            method = saliency.get(name)(model, "layer4", **stats, **options)

            def run_peer(cls=cls, options=options):
                with cls(model, "layer4", input_shape=tuple(x.shape[1:]), **options) as cam:
                    with torch.no_grad():
                        scores = model(x)
                    return cam(class_idx=[int(c) for c in targets], scores=scores)[0]

            note = "normalize_first=True, TorchCAM's mask order" + (", std ~ 0" if name == "sscam" else "")
            rows.append((name, "TorchCAM", lambda m=method: m(x, targets, upsample=False), run_peer, note))
        for name, cls, note in (
            ("gradcam", tc.GradCAM, ""),
            ("gradcam++", tc.GradCAMpp, "TorchCAM 0.5 divides a copy: its alpha stays g^2 (docs/methods.md)"),
            ("xgradcam", tc.XGradCAM, ""),
            ("layercam", tc.LayerCAM, ""),
        ):
            method = saliency.get(name)(model, "layer4")

            def run_gradient_peer(cls=cls):
                with cls(model, "layer4", input_shape=tuple(x.shape[1:])) as cam:
                    return cam(class_idx=[int(c) for c in targets], scores=model(x))[0].detach()

            rows.append(
                (
                    f"{name} (TorchCAM)",
                    "TorchCAM",
                    lambda m=method: m(x, targets, upsample=False),
                    run_gradient_peer,
                    note,
                )
            )
    return rows + _captum_rows(model, x, targets) + _quantus_rows(model, x, targets)


def _captum_rows(model, x, targets):
    """Grad-CAM against Captum's LayerGradCam (ReLU, min-max normalized at the layer's resolution) and guided
    backpropagation against Captum's GuidedBackprop (max |.| over the channels, min-max normalized)."""
    try:
        from captum.attr import GuidedBackprop, LayerGradCam
    except ImportError:
        return []
    gradcam, guided = saliency.GradCAM(model, "layer4"), saliency.get("guidedbackprop")(model)

    def layer_gradcam():
        maps = LayerGradCam(model, model.layer4).attribute(x, target=targets, relu_attributions=True)
        return finalize_maps(maps[:, 0].detach(), None, normalize=True)

    def guided_backprop():
        maps = GuidedBackprop(model).attribute(x.clone(), target=targets).detach().abs().amax(1)
        return finalize_maps(maps, None, normalize=True)

    return [
        ("gradcam (Captum)", "Captum", lambda: gradcam(x, targets, upsample=False), layer_gradcam, ""),
        ("guidedbackprop (Captum)", "Captum", lambda: guided(x, targets), guided_backprop, ""),
    ]


QUANTUS_ROWS = {  # metric: options (a few runs: the rows time the wrapping, not Quantus' own sampling)
    "FaithfulnessCorrelation": {"nr_runs": 10, "subset_size": 64},
    "Sparseness": {},
    "MaxSensitivity": {"nr_samples": 3},
}


def _quantus_rows(model, x, targets):
    """Each Quantus metric as the runner calls it (its ``quantus:NAME`` group on one batch's context, the
    maps converted and the scores checked) against Quantus called directly on the same maps, model and
    seed; the speedup is then the runner's wrapping cost (target: ~1, no slower)."""
    try:
        import quantus
    except ImportError:
        return []
    from ..interop.quantus import batch_seed, explain, seeded

    maps = saliency.GradCAM(model)(x, targets)
    indices = list(range(len(x)))
    rows = []
    for name, options in QUANTUS_ROWS.items():
        ours = runner_group_scores(f"quantus:{name}", options, model, x, maps, targets, Preprocess())

        def direct(name=name, options=options):
            metric = getattr(quantus, name)(
                **options, disable_warnings=True, display_progressbar=False, return_aggregate=False
            )
            with seeded(batch_seed(0, indices)):
                scores = metric(
                    model=model,
                    x_batch=x.numpy(),
                    y_batch=targets.numpy(),
                    a_batch=maps[:, None].numpy(),
                    explain_func=explain,
                    explain_func_kwargs={"method": "gradcam"},
                    device="cpu",
                )
            return torch.tensor(scores, dtype=torch.float32)

        note = "the runner's group vs Quantus directly, same maps and seed"
        rows.append((f"quantus:{name}", "Quantus", ours, direct, note))
    return rows


def runner_group_scores(name: str, options: dict, model, images, maps, targets, preprocess, seed: int = 0):
    """A call of the runner's metric group ``name`` on one batch (images ``0..B-1`` of a cell whose
    method is Grad-CAM, seed ``seed``), as the runner builds its context: () -> the first column's
    per-image scores. What the Quantus rows time, and what tests compare with Quantus called directly."""
    from .._scorer import Scorer
    from ..evaluate.groups import Context, resolve
    from ..evaluate.quantus import register

    context = Context(
        scorer=Scorer(model),
        method=None,
        images=images,
        maps=maps,
        targets=torch.as_tensor(targets),
        logits=model(images).detach(),
        indices=list(range(len(images))),
        meta=[{}] * len(images),
        preprocess=preprocess,
        protocol="quantus",
        seed=seed,
        options=options,
        rebuild=saliency.GradCAM,
    )
    if name.startswith("quantus:"):
        register(name)
    group = resolve(name)
    return lambda: next(iter(group.run(context).values()))


def _road_rows(model, x, targets, target_cls):
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    maps = saliency.GradCAM(model)(x, targets)
    t = [target_cls(int(c)) for c in targets]
    rows = []
    for order, removal in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):

        def peer(removal=removal):
            per = [
                PerturbationConfidenceMetric(removal(p, NoisyLinearImputer(noise=0.0)))(
                    x, maps.numpy(), t, model
                )
                for p in metrics.ROAD_PERCENTILES
            ]
            return torch.from_numpy(np.mean(per, axis=0))

        ours = lambda order=order: metrics.road(model, x, maps, targets, order=order, noise=0.0)  # noqa: E731
        rows.append((f"road {order}", "pytorch-grad-cam", ours, peer, "9 percentiles, noise 0 in both"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="row names to run (default: every row)")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("the peers run on the CPU here (pytorch-grad-cam's numpy steps); pass --device cpu")
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=10).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    targets = torch.arange(args.batch) % 10
    device = torch.device("cpu")
    base = {"model": args.model, "size": args.size, "batch": args.batch, **environment(device)}
    for name, peer_name, ours, theirs, note in _rows(model, x, targets):
        if args.only and name not in args.only:
            continue
        a, b = ours().float(), theirs().float()
        difference = float((a - b).abs().max()) if a.shape == b.shape else None
        times = interleaved({"castream": ours, "peer": theirs}, device, args.repeats, warmup=0)
        t_ours, t_peer = times["castream"]["median"], times["peer"]["median"]
        emit(
            {
                **base,
                "row": name,
                "peer": peer_name,
                "max_abs_difference": difference,
                "castream_s": t_ours,
                "peer_s": t_peer,
                "speedup": t_peer / t_ours,
                "speedup_min": times["peer"]["min"] / times["castream"]["min"],
                "note": note,
            }
        )


if __name__ == "__main__":
    main()
