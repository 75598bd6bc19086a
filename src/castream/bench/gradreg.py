"""Gradient-regularized training step vs a standard step (thesis ch. 4: five passes instead of two;
castream shares the forward, so four): target ratio ≤ 3.0.

    python benchmarks/gradreg.py --model cifar_resnet18 --size 32 --batch 128
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import build_model
from ..train.gradreg import GradientRegularizer
from ._timing import base_parser, emit, environment, inputs, interleaved, precision, prepare, ratio_fields


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--error", default="cosine")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = prepare(build_model(args.model, num_classes=args.classes).train(), args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    regularizer = GradientRegularizer(args.error)
    x = inputs((args.batch, 3, args.size, args.size), args)
    y = torch.randint(0, args.classes, (args.batch,), device=device)

    def step(loss_fn) -> None:
        with precision(args):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = interleaved(
        {
            "regularized": lambda: step(lambda: regularizer(model, x, y)[0]),
            "standard": lambda: step(lambda: F.cross_entropy(model(x), y)),
        },
        device,
        args.repeats,
    )
    emit(
        {
            "benchmark": "gradreg-step",
            "model": args.model,
            "size": args.size,
            "batch": args.batch,
            "error": args.error,
            **ratio_fields(times["regularized"], times["standard"]),
            "reference": "standard training step",
            "target": 3.0,
            **environment(device, args),
        }
    )


if __name__ == "__main__":
    main()
