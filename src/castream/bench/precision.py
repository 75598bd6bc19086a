"""What reduced precision changes, on the demo's trained classifier and stream (shipped weights) and its
synthetic images: the cosine of each method's maps under ``--amp`` to its float32 maps, and for the
demo's evaluation (GAP and CA, ``coarse`` protocol) the mean absolute per-image change of every metric
and the change of its mean. Not a speed test: the numbers of the "what bf16 changes" table in
docs/performance.md.

    python benchmarks/precision.py --amp bf16 --images 64
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import saliency
from ..data import SyntheticShapes, eval_transform, synthetic
from ..demo import WEIGHTS, DemoConfig
from ..evaluate import EvalConfig, Runner
from ..evaluate.results import cell_name, read_shards
from ..evaluate.runner import load_classifier
from ..preprocess import Preprocess
from ..stream import load_stream
from ._timing import base_parser, emit, environment, precision

MAP_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam"]
MAP_METHODS += ["opticam", "sacam", "guidedbackprop", "rawattention"]
METRICS = ("recognition", "insertion", "deletion", "localization", "discrimination")
VALUES = ("ad", "ag", "ai", "insertion", "deletion", "om", "le", "f1", "sp", "ep", "discrimination")


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images of the evaluation comparison")
    parser.add_argument("--map-images", type=int, default=16, help="images of the map cosines")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++"], help="evaluated methods")
    parser.set_defaults(amp="bf16")
    args = parser.parse_args(argv)
    device, demo = torch.device(args.device), DemoConfig()
    env = environment(device, args)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.generate(
            Path(tmp) / "data",
            classes=demo.classes,
            train=0,
            val=max(args.images, args.map_images),
            size=demo.size,
            seed=demo.seed,
            scale=demo.shape_scale,
            others=demo.others,
        )
        classifier = load_classifier(demo.model, demo.classes, None, str(WEIGHTS / "classifier.safetensors"))
        classifier = Preprocess().declare(classifier)  # the demo's model takes ImageNet's statistics
        model = load_stream(classifier, WEIGHTS / "stream.safetensors").to(device).eval()
        dataset = SyntheticShapes(root, "val", transform=eval_transform(demo.size, resize=demo.size))
        images = torch.stack([dataset[i][0] for i in range(args.map_images)]).to(device)
        for name in MAP_METHODS:
            method = saliency.get(name)(
                model, forward_kwargs={} if name == "rawattention" else {"pooling": "gap"}
            )
            reference = method(images)
            with precision(args):
                reduced = method(images)
            cosine = F.cosine_similarity(reference.flatten(1).double(), reduced.flatten(1).double())
            emit(
                {
                    "benchmark": "map-cosine",
                    "method": name,
                    "images": args.map_images,
                    "mean": round(cosine.mean().item(), 5),
                    "min": round(cosine.min().item(), 5),
                    **env,
                }
            )
        rows = {}
        for amp in (None, args.amp):
            config = EvalConfig(
                model=demo.model,
                data=f"synthetic:{root}",
                checkpoint=str(WEIGHTS / "classifier.safetensors"),
                stream=str(WEIGHTS / "stream.safetensors"),
                methods=tuple(args.methods),
                baselines=(),
                metrics=METRICS,
                protocol=demo.protocol,
                images=args.images,
                metric_batch=demo.metric_batch,
                size=demo.size,
                resize=demo.size,
                amp=amp,
                channels_last=args.channels_last and amp is not None,
                out=str(Path(tmp) / f"eval-{amp}"),
            )
            runner = Runner(config, progress=False, log=lambda *_: None, device=device)
            runner.run()
            rows[amp] = {c: read_shards(runner.out, cell_name(*c))[0] for c in runner.plan.cells()}
        for key in VALUES:
            per_image, of_means = [], []
            for cell, reference in rows[None].items():
                pairs = [
                    (r[key], rows[args.amp][cell][i][key])
                    for i, r in reference.items()
                    if r.get(key) is not None and rows[args.amp][cell][i].get(key) is not None
                ]
                pairs = torch.tensor(pairs, dtype=torch.float64)
                pairs = pairs[~pairs.isnan().any(1)]
                if len(pairs):
                    per_image.append((pairs[:, 1] - pairs[:, 0]).abs().mean().item())
                    of_means.append(abs(pairs[:, 1].mean().item() - pairs[:, 0].mean().item()))
            emit(
                {
                    "benchmark": "metric-change",
                    "metric": key,
                    "cells": len(per_image),
                    "images": args.images,
                    "mean_abs_change_per_image": round(max(per_image), 5),
                    "abs_change_of_mean": round(max(of_means), 5),
                    "note": "largest over the cells (methods x poolings); fractions, x100 for the report's %",
                    **env,
                }
            )


if __name__ == "__main__":
    main()
