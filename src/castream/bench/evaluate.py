"""Evaluation runner speed: a run of one method and the default metric groups over a generated synthetic
set (the accuracy cell and the method cell, image-major), against the pure forward time of the same
number of model forwards, the clean ones included, as a ratio of the forward limit reached (target ≥ 0.9
on the CPU); every image decode counted (``decodes_per_image``, target 1.0); the time to write the report,
figures included; and BoxAcc's localization on the host (all 100 thresholds of one 224 x 224 map, target
≤ 8 ms).

    python benchmarks/evaluate.py --model resnet50 --size 224 --images 64 --amp bf16 --channels-last
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..data import synthetic
from ..evaluate import DEFAULT_METRICS, EvalConfig, Runner
from ..evaluate.report import write_report
from ._timing import base_parser, emit, environment, inputs, precision, sync, timed


def _count_forwards(model: nn.Module, counter: list[int]):
    """A pre-hook adding each forward's batch size to ``counter[0]``."""

    def hook(module: nn.Module, args: tuple) -> None:
        counter[0] += args[0].shape[0]

    return model.register_forward_pre_hook(hook)


def localization_ms(images: int = 16, side: int = 224) -> float:
    """Milliseconds per map of :func:`castream.metrics.threshold_ious` on smooth min-max normalized maps
    (blurred noise, as saliency maps are) with one box each; the host work of BoxAcc."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(images, 1, side // 8, side // 8, generator=generator)
    maps = F.interpolate(noise, size=(side, side), mode="bicubic", align_corners=False)[:, 0]
    low, high = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    maps = (maps - low) / (high - low)
    boxes = [torch.tensor([[side / 4, side / 4, 3 * side / 4, 3 * side / 4]])] * images
    seconds = timed(lambda: metrics.threshold_ious(maps, boxes), torch.device("cpu"), 3)
    return 1000 * seconds / images


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument(
        "--batch", type=int, default=8, help="images per runner batch (EvalConfig.batch_size)"
    )
    parser.add_argument("--metric-batch", type=int, default=64, help="images per metric forward")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--protocol", default="thesis")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.generate(Path(tmp) / "data", train=0, val=args.images, size=args.size)
        config = EvalConfig(
            model=args.model,
            data=f"synthetic:{root}",
            out=str(Path(tmp) / "eval"),
            poolings=("gap",),
            methods=(args.method,),
            baselines=(),
            metrics=tuple(args.metrics),
            protocol=args.protocol,
            images=args.images,
            batch_size=args.batch,
            metric_batch=args.metric_batch,
            size=args.size,
            resize=args.size,
            amp=args.amp,
            channels_last=args.channels_last,
        )
        runner = Runner(config, progress=False, log=lambda *_: None, device=device)
        label = next(iter(runner.models))
        model = runner.models[label]
        runner.claim()
        counter = [0]
        handle = _count_forwards(model, counter)
        try:
            sync(device)
            start = time.perf_counter()
            runner.evaluate()
            sync(device)
            cell = time.perf_counter() - start
        finally:
            handle.remove()
        runner.store.write_json("run.json", runner.run_info())
        chunk = inputs((args.metric_batch, 3, args.size, args.size), args)

        def forward() -> None:
            with torch.no_grad(), precision(args):
                model(chunk)

        limit = timed(forward, device, args.repeats) * counter[0] / args.metric_batch
        start = time.perf_counter()
        write_report(runner.out, log=lambda *_: None)
        report = time.perf_counter() - start
    emit(
        {
            "benchmark": "evaluate-cell",
            "model": args.model,
            "size": args.size,
            "images": args.images,
            "method": args.method,
            "metrics": args.metrics,
            "protocol": args.protocol,
            "forwarded_images": counter[0],
            "decodes_per_image": round(runner.decodes / args.images, 3),
            "decodes_target": 1.0,
            "seconds": round(cell, 3),
            "reference": f"pure forward of {counter[0]} images at batch {args.metric_batch}, the clean "
            "forwards included",
            "reference_seconds": round(limit, 3),
            "ratio": round(limit / cell, 3),
            "target": 0.9,
            "report_seconds": round(report, 2),
            **environment(device, args),
        }
    )
    ms = localization_ms()
    emit(
        {
            "benchmark": "localization-boxacc",
            "size": 224,
            "thresholds": len(_localization().ETAS),
            "ms_per_image": round(ms, 2),
            "target_ms": 8.0,
            "compiled": _compiled(),
            **environment(torch.device("cpu")),
        }
    )


def _localization():
    """The localization module (``castream.metrics.localization`` is also the name of a function)."""
    from importlib import import_module

    return import_module("castream.metrics.localization")


def _compiled() -> bool:
    """Whether the compiled component tree is in use (else the per-threshold scipy loop)."""
    return _localization()._components is not None


if __name__ == "__main__":
    main()
