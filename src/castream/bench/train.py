"""CA-Stream training step vs the backbone's inference forward on the same batch (target ≤ 1.3), and the
synthetic benchmark's generation throughput (images/s).

    python benchmarks/train.py --model resnet50 --size 224 --batch 32
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from castream import attach_stream
from castream.data import synthetic

from ._timing import base_parser, emit, environment, timed


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--synthetic-images", type=int, default=2000)
    parser.add_argument("--synthetic-size", type=int, default=128)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    backbone = getattr(torchvision.models, args.model)().to(device)
    model = attach_stream(backbone).train()
    optimizer = torch.optim.SGD(model.stream.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, model.spec.num_classes, (args.batch,), device=device)

    def inference() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            backbone(x)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    forward = timed(inference, device, args.repeats)
    train_step = timed(step, device, args.repeats)
    emit(
        {
            "benchmark": "stream-training-step",
            "model": args.model,
            "size": args.size,
            "batch": args.batch,
            "amp": args.amp,
            "seconds": round(train_step, 4),
            "reference": "backbone inference forward",
            "reference_seconds": round(forward, 4),
            "ratio": round(train_step / forward, 3),
            "target": 1.3,
            **environment(device),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthetic.generate(Path(tmp) / "s", train=args.synthetic_images, val=0, size=args.synthetic_size)
        seconds = time.perf_counter() - start
    emit(
        {
            "benchmark": "synthetic-generation",
            "images": args.synthetic_images,
            "size": args.synthetic_size,
            "seconds": round(seconds, 2),
            "images_per_second": round(args.synthetic_images / seconds, 1),
            "default_set_seconds_estimate": round(11_000 / (args.synthetic_images / seconds), 1),
            **environment(device),
        }
    )


if __name__ == "__main__":
    main()
