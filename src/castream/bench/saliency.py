"""Saliency speed: each method's time divided by the limit the saliency issue sets for it.

- gradient CAM methods (Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM, Layer-CAM): vs the model's plain
  forward of the same batch (≤ 1.3): their backward stops at the explained layer and computes no weight
  gradient, so the forward is their limit (forward + backward to every parameter, the reference before
  issue 29, is about 3 forwards and flattered them); guided backprop: vs forward + backward to the input
- Score-CAM / Ablation-CAM / SA-CAM: vs the forward-only limit, i.e. the time of forwarding as many
  images as the method must score, in batches of ``batch_size``, measured in the same run (≤ 1.2)
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

from ._timing import base_parser, emit, environment, inputs, precision, prepare, timed

VIT = ["transformerattribution", "rollout", "rawattention"]
GRADIENT = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "guidedbackprop"]
FORWARD_ONLY = ["scorecam", "ablationcam", "sacam"]
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

    fb = timed(forward_backward, device, args.repeats)
    forward = timed(forward_batch, device, args.repeats)
    input_backward = timed(forward_input_backward, device, args.repeats)
    for method_name in methods:
        options = {}
        if method_name in FORWARD_ONLY:
            options["batch_size"] = args.score_batch
        if method_name in ITERATIVE:
            options["max_iter"] = getattr(args, ITERATIVE[method_name])
        method = saliency.get(method_name)(model, **options)

        def run(method=method) -> None:
            with precision(args):
                method(x)

        gradient = method_name in GRADIENT or vit
        seconds = timed(run, device, args.repeats if gradient else 1, warmup=1 if gradient else 0)
        record = {**base, "method": method_name, "seconds": round(seconds, 4)}
        if vit:
            record.update(reference="forward+backward", reference_seconds=round(fb, 4), target=None)
        elif method_name == "guidedbackprop":
            record.update(
                reference="forward+input-backward", reference_seconds=round(input_backward, 4), target=1.1
            )
        elif gradient:
            record.update(
                reference="forward",
                reference_seconds=round(forward, 4),
                target=1.3,
                forward_backward=round(fb, 4),
            )
        elif method_name in ITERATIVE:
            iters = int(method.iterations.max()) if method_name == "opticam" else method.max_iter
            per_iter = input_backward
            record.update(
                reference=f"{iters} x forward+input-backward",
                target=1.2,
                reference_seconds=round(per_iter * iters, 4),
                iterations=iters,
            )
        else:
            images = args.batch * model.layer4[-1].conv1.in_channels * (2 if method_name == "sacam" else 1)
            chunks = -(-images // args.score_batch)
            one = timed(forward_chunk, device, 1)
            record.update(
                reference=f"{chunks} forwards of {args.score_batch} images",
                target=1.2,
                reference_seconds=round(one * chunks, 4),
                masked_images=images,
            )
        record["ratio"] = round(record["seconds"] / record["reference_seconds"], 3)
        emit(record)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet18", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=[*GRADIENT, *ITERATIVE, *FORWARD_ONLY])
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
