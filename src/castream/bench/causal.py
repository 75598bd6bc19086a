"""Insertion + deletion speed: their time vs the pure forward cost of the same number of perturbed images
at the best batch size, measured in the same run (target ≤ 1.2); also images per second.

    python benchmarks/causal.py --model resnet50 --size 224 --images 2
"""

from __future__ import annotations

import torch
import torchvision

from castream import metrics

from ._timing import base_parser, emit, environment, inputs, precision, prepare, timed


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = prepare(getattr(torchvision.models, args.model)().eval(), args)
    x = inputs((args.images, 3, args.size, args.size), args)
    maps = torch.rand(args.images, args.size, args.size, device=device)
    steps = len(metrics.step_counts(args.size, args.size))
    perturbed = 2 * args.images * steps  # insertion and deletion

    def forward_cost(batch: int) -> float:
        chunk = inputs((batch, 3, args.size, args.size), args)

        def run() -> None:
            with torch.no_grad(), precision(args):
                model(chunk)

        return timed(run, device, 1) * perturbed / batch

    reference = {b: forward_cost(b) for b in args.batch_sizes}
    best = min(reference, key=reference.get)
    for batch in args.batch_sizes:

        def both(batch=batch) -> None:
            with precision(args):
                metrics.insertion(model, x, maps, batch_size=batch)
                metrics.deletion(model, x, maps, batch_size=batch)

        seconds = timed(both, device, 1, warmup=0)
        emit(
            {
                "model": args.model,
                "size": args.size,
                "images": args.images,
                "batch_size": batch,
                "perturbed_images": perturbed,
                "seconds": round(seconds, 3),
                "images_per_second": round(args.images / seconds, 4),
                "reference": f"pure forward of {perturbed} images at batch {best}",
                "reference_seconds": round(reference[best], 3),
                "ratio": round(seconds / reference[best], 3),
                "target": 1.2,
                **environment(device, args),
            }
        )


if __name__ == "__main__":
    main()
