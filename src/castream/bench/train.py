"""Training speed: the CA-Stream training step vs the backbone's inference forward on the same batch
(target ≤ 1.3); the training input pipeline's images/s next to the step's images/s (the loader must keep
up: ratio ≥ 1); and the synthetic benchmark's generation throughput.

    python benchmarks/train.py --model resnet50 --size 224 --batch 128 --amp bf16 --channels-last
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from castream import attach_stream
from castream.data import SyntheticShapes, collate, synthetic, train_transform

from ..train.loop import resolve_workers
from ._timing import base_parser, emit, environment, inputs, interleaved, precision, prepare, ratio_fields


def loader_throughput(root: Path, size: int, batch: int, workers: int, annotations: bool) -> float:
    """Images/s of the training loader over the generated set (train_transform at ``size``)."""
    dataset = SyntheticShapes(root, "train", transform=train_transform(size))
    dataset = dataset if annotations else dataset.without_annotations()
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate)
    count, start = 0, None
    for k, item in enumerate(loader):
        if k == 0:  # worker start-up is paid once per epoch, not per image
            start = time.perf_counter()
            continue
        count += len(item.images)
    if start is None or count == 0:
        raise ValueError(f"--synthetic-images must exceed two batches of {batch}")
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default="auto", help="loader processes (auto: min(8, CPU count))")
    parser.add_argument("--synthetic-images", type=int, default=2000)
    parser.add_argument("--synthetic-size", type=int, default=256, help="side of the generated PNGs")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    workers = resolve_workers(args.workers if args.workers == "auto" else int(args.workers))
    backbone = prepare(getattr(torchvision.models, args.model)(), args)
    model = attach_stream(backbone).train()
    optimizer = torch.optim.SGD(model.stream.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = inputs((args.batch, 3, args.size, args.size), args)
    y = torch.randint(0, model.spec.num_classes, (args.batch,), device=device)

    def inference() -> None:
        with torch.no_grad(), precision(args):
            backbone(x)

    def step() -> None:
        with precision(args):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = interleaved({"step": step, "forward": inference}, device, args.repeats)
    train_step = times["step"]["median"]
    env = environment(device, args)
    emit(
        {
            "benchmark": "stream-training-step",
            "model": args.model,
            "size": args.size,
            "batch": args.batch,
            **ratio_fields(times["step"], times["forward"]),
            "step_images_per_second": round(args.batch / train_step, 1),
            "reference": "backbone inference forward",
            "target": 1.3,
            **env,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = synthetic.generate(
            Path(tmp) / "s", train=args.synthetic_images, val=0, size=args.synthetic_size
        )
        seconds = time.perf_counter() - start
        emit(
            {
                "benchmark": "synthetic-generation",
                "images": args.synthetic_images,
                "size": args.synthetic_size,
                "seconds": round(seconds, 2),
                "images_per_second": round(args.synthetic_images / seconds, 1),
                "default_set_seconds_estimate": round(11_000 / (args.synthetic_images / seconds), 1),
                **env,
            }
        )
        for annotations in (False, True):
            rate = loader_throughput(root, args.size, args.batch, workers, annotations)
            emit(
                {
                    "benchmark": "training-loader",
                    "annotations": annotations,  # False: what classification and stream training load
                    "images": args.synthetic_images,
                    "png_size": args.synthetic_size,
                    "size": args.size,
                    "workers": workers,
                    "loader_images_per_second": round(rate, 1),
                    "step_images_per_second": round(args.batch / train_step, 1),
                    "ratio": round(rate / (args.batch / train_step), 3),
                    "target": 1.0,
                    **env,
                }
            )


if __name__ == "__main__":
    main()
