"""Saliency speed: each method's time divided by the limit the saliency issue sets for it.

- gradient CAM methods (Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM, Layer-CAM) and the activation-only
  ones (EigenCAM, KPCA-CAM, FEM): vs the model's plain forward of the same batch (≤ 1.3; issue 31's: 1.1):
  their backward stops at the explained layer and computes no weight gradient, so the forward is their
  limit (forward + backward to every parameter, the reference before issue 29, is about 3 forwards and
  flattered them); issue 31's gradient methods (Eigen-Grad-CAM, Grad-CAM element-wise, Finer-CAM): vs
  the limit that issue sets, the forward and the backward of the target to the layer (the layer's output
  a leaf, the frozen prefix not differentiated; 1.1); Smooth Grad-CAM++: vs its
  ``num_samples`` + 1 forwards (1.1); ShapleyCAM: vs the forward, the backward to the layer with its
  graph and the Hessian-vector product, done with plain autograd calls (1.1); guided backprop and FullGrad:
  vs forward + backward to the input (1.1)
- Score-CAM / SS-CAM / IS-CAM / Ablation-CAM / SA-CAM: vs the forward-only limit, i.e. the time of
  forwarding as many images as the method must score (times ``num_samples`` for SS-CAM and IS-CAM, run at
  2 samples), in batches of ``batch_size``, measured in the same run (≤ 1.2). Ablation-CAM runs only the
  part after the layer, so it is far below this limit
- Opti-CAM and Extremal Perturbation: vs ``iterations`` x (forward + backward to the input) of the
  batch (≤ 1.2); the seconds are per batch, as thesis Table 2.1 reports them (batch of 8)
- ViT methods (``--vit-models``: transformer attribution, rollout, raw attention): vs the ViT's forward +
  backward; no limit is set for them (transformer attribution adds a relevance pass of about one backward)

Prints one JSON record per (model, method). Example:
    python benchmarks/saliency.py --models resnet18 resnet50 --size 224 --batch 8 --amp bf16 --channels-last
"""

from __future__ import annotations

import torch
import torchvision

from castream import saliency
from castream._hooks import frozen_eval

from ._timing import base_parser, emit, environment, inputs, interleaved, precision, prepare, ratio_fields

VIT = ["transformerattribution", "rollout", "rawattention"]
GRADIENT = [
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigengradcam",
    "gradcamelementwise",
    "guidedbackprop",
    "fullgrad",
    "finercam",
    "smoothgradcampp",
    "shapleycam",
]
ACTIVATION_ONLY = ["eigencam", "kpcacam", "fem"]  # one forward to the layer, no backward (issue 31)
ISSUE_31 = {*ACTIVATION_ONLY, "eigengradcam", "gradcamelementwise", "finercam", "smoothgradcampp"}
# issue 31's gradient methods, whose limit that issue sets as the forward + the backward to the layer
LAYER_GRADIENT = ["eigengradcam", "gradcamelementwise", "finercam"]
INPUT_GRADIENT = ["guidedbackprop", "fullgrad"]  # backward to the input (FullGrad: and every bias)
FORWARD_ONLY = ["scorecam", "sscam", "iscam", "ablationcam", "sacam"]
SAMPLED = {"sscam": 2, "iscam": 2, "smoothgradcampp": 4}  # num_samples in the benchmark
ITERATIVE = {"opticam": "opticam_iterations", "extremalperturbation": "ep_iterations"}


def bench_model(name: str, args, device: torch.device, methods: list[str]) -> None:
    vit = name.startswith("vit_")
    model = getattr(torchvision.models, name)(**({"image_size": args.size} if vit else {})).eval()
    model = prepare(model, args)
    x = inputs((args.batch, 3, args.size, args.size), args)
    chunk = inputs((args.score_batch, 3, args.size, args.size), args)
    base = {"model": name, "size": args.size, "batch": args.batch, **environment(device, args)}

    def forward_backward() -> None:
        with precision(args):
            model(x).sum().backward()
        model.zero_grad(set_to_none=True)

    def forward_input_backward() -> None:
        xi = x.clone().requires_grad_(True)
        with precision(args):
            torch.autograd.grad(model(xi).sum(), xi)

    def forward_batch() -> None:
        with torch.no_grad(), precision(args):
            model(x)

    def forward_chunk() -> None:
        with torch.no_grad(), precision(args):
            model(chunk)

    def forward_to_layer() -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the layer's output as the graph's leaf: the frozen prefix is not differentiated."""
        store = []

        def leaf(module, inputs, output):
            store.append(output.detach().requires_grad_())
            return store[-1]

        handle = model.layer4.register_forward_hook(leaf)
        try:
            with torch.enable_grad(), frozen_eval(model), precision(args):
                return model(x), store[0]
        finally:
            handle.remove()

    def forward_layer_backward() -> None:  # a gradient CAM's work: y_c's gradient at the layer
        out, layer = forward_to_layer()
        torch.autograd.grad(out[:, 0].sum(), layer)

    def forward_layer_hvp() -> None:  # ShapleyCAM's work: y_c's gradient at the layer, then (dg/dA) A
        out, layer = forward_to_layer()
        (g,) = torch.autograd.grad(out[:, 0].sum(), layer, create_graph=True)
        if g.requires_grad:  # not after a ResNet's last stage, whose head is linear
            torch.autograd.grad(g, layer, layer.detach(), allow_unused=True)

    for method_name in methods:
        options = {}
        if method_name in FORWARD_ONLY:
            options["batch_size"] = args.score_batch
        if method_name in ITERATIVE:
            options["max_iter"] = getattr(args, ITERATIVE[method_name])
        if method_name in SAMPLED:
            options["num_samples"] = SAMPLED[method_name]
        method = saliency.get(method_name)(model, **options)

        def run(method=method) -> None:
            with precision(args):
                method(x)

        gradient = method_name in GRADIENT or method_name in ACTIVATION_ONLY or vit
        record = {**base, "method": method_name}
        # the method's limit, timed in turn with it: (reference, its repeats per method call, description)
        if vit:
            limit, factor, described, target = forward_backward, 1, "forward+backward", None
        elif method_name in INPUT_GRADIENT:
            limit, factor, described, target = forward_input_backward, 1, "forward+input-backward", 1.1
        elif method_name == "shapleycam":
            limit, factor, described, target = forward_layer_hvp, 1, "forward+layer-backward+hvp", 1.1
        elif method_name in LAYER_GRADIENT:
            limit, factor, described, target = forward_layer_backward, 1, "forward+layer-backward", 1.1
        elif gradient:
            target = 1.1 if method_name in ISSUE_31 else 1.3
            factor = SAMPLED[method_name] + 1 if method_name == "smoothgradcampp" else 1
            limit, described = forward_batch, "forward" if factor == 1 else f"{factor} forwards"
        elif method_name in ITERATIVE:  # the iterations it ran are known once it has run (below)
            limit, factor, described, target = forward_input_backward, None, None, 1.2
        else:
            images = args.batch * model.layer4[-1].conv1.in_channels * (2 if method_name == "sacam" else 1)
            images *= SAMPLED.get(method_name, 1)
            factor = -(-images // args.score_batch)
            limit, described, target = forward_chunk, f"{factor} forwards of {args.score_batch} images", 1.2
            record["masked_images"] = images
        times = interleaved(
            {"method": run, "limit": limit},
            device,
            args.repeats if gradient else 1,
            warmup=1 if gradient else 0,
        )
        if factor is None:
            factor = int(method.iterations.max()) if method_name == "opticam" else method.max_iter
            described, record["iterations"] = f"{factor} x forward+input-backward", factor
        record.update(
            reference=described, target=target, **ratio_fields(times["method"], times["limit"], factor)
        )
        emit(record)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet18", "resnet50"])
    parser.add_argument(
        "--methods", nargs="+", default=[*GRADIENT, *ACTIVATION_ONLY, *ITERATIVE, *FORWARD_ONLY]
    )
    parser.add_argument("--vit-models", nargs="*", default=["vit_b_16"], help="torchvision ViTs")
    parser.add_argument("--vit-methods", nargs="+", default=VIT)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--score-batch", type=int, default=128, help="images per forward of Score/Ablation/SA-CAM"
    )
    parser.add_argument("--opticam-iterations", type=int, default=100)
    parser.add_argument(
        "--ep-iterations", type=int, default=800, help="Extremal Perturbation (TorchRay: 800)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    for name, methods in [(m, args.methods) for m in args.models] + [
        (m, args.vit_methods) for m in args.vit_models
    ]:
        bench_model(name, args, device, methods)


if __name__ == "__main__":
    main()
