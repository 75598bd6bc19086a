"""The offline end-to-end demo: synthetic benchmark -> ResNet-18 classifier -> CA-Stream -> GAP vs CA
evaluation with Grad-CAM, Grad-CAM++, Score-CAM and Opti-CAM -> report.

Every stage is cached under ``<out>/cache``: the synthetic set is reused, training resumes from its
checkpoint (or is skipped once its final weights exist) and the evaluation resumes from its shards, so a
second run only rebuilds the report. The sizes are chosen for about five minutes on 2 CPU cores (see
DemoConfig); a GPU, when present, is used automatically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision

from . import attach_stream
from .data import SyntheticShapes, eval_transform, synthetic, train_transform
from .evaluate import EvalConfig, Runner
from .models import load_weights
from .train import TrainConfig, train_classifier, train_stream


@dataclass(frozen=True)
class DemoConfig:
    """Sizes for about five minutes on 2 CPU cores. From scratch on a CPU budget, AdamW with a one-cycle
    schedule trains the classifier in 3 epochs (the thesis' SGD recipe is meant for 90 ImageNet epochs)."""

    classes: int = 6
    train_images: int = 4000
    val_images: int = 480
    size: int = 56
    shape_scale: tuple[float, float] = (0.2, 0.3)
    classifier_epochs: int = 4
    stream_epochs: int = 1
    lr: float = 2e-3
    batch_size: int = 64
    eval_images: int = 16
    methods: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam", "opticam")
    seed: int = 0


def _train_config(config: DemoConfig, epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer="adamw",
        schedule="onecycle",
        seed=config.seed,
        workers=0,  # decoding a 56 px PNG costs less than a second process on 2 cores
        extra=asdict(config),
    )


def _stage(folder: Path, final: str, train, log) -> Path:
    """Run a training stage unless its final file exists; resume an interrupted one."""
    path = folder / final
    if path.exists():
        log(f"[cached] {path}")
        return path
    start = time.perf_counter()
    train(resume=(folder / "checkpoint.pt").exists())
    log(f"[{time.perf_counter() - start:.0f} s] {path}")
    return path


def run_demo(
    out: str | os.PathLike = "runs/demo",
    config: DemoConfig | None = None,
    *,
    progress: bool = True,
    log=print,
) -> dict:
    config = config or DemoConfig()
    out = Path(out)
    cache = out / "cache"
    start = time.perf_counter()
    root = synthetic.generate(
        cache / "synthetic",
        classes=config.classes,
        train=config.train_images,
        val=config.val_images,
        size=config.size,
        seed=config.seed,
        scale=config.shape_scale,
    )
    log(f"[{time.perf_counter() - start:.0f} s] synthetic benchmark: {root}")
    train_set = SyntheticShapes(root, "train", transform=train_transform(config.size, scale=(0.8, 1.0)))
    val_set = SyntheticShapes(root, "val", transform=eval_transform(config.size, resize=config.size))
    train_args = {"progress": progress, "log": log}

    def classifier(**kw) -> None:
        torch.manual_seed(config.seed)  # the initial weights
        model = torchvision.models.resnet18(num_classes=config.classes)
        train_classifier(
            model,
            train_set,
            val_set,
            cache / "classifier",
            _train_config(config, config.classifier_epochs),
            **train_args,
            **kw,
        )

    weights = _stage(cache / "classifier", "model.safetensors", classifier, log)

    def stream(**kw) -> None:
        backbone = load_weights(torchvision.models.resnet18(num_classes=config.classes), weights)
        torch.manual_seed(config.seed)  # the initial query and projections
        model = attach_stream(backbone, probe_size=config.size)
        train_stream(
            model,
            train_set,
            val_set,
            cache / "stream",
            _train_config(config, config.stream_epochs),
            **train_args,
            **kw,
        )

    stream_path = _stage(cache / "stream", "stream.safetensors", stream, log)
    evaluation = EvalConfig(
        model="resnet18",
        data=f"synthetic:{root}",
        checkpoint=str(weights),
        stream=str(stream_path),
        poolings=("gap", "ca"),
        methods=config.methods,
        metrics=("recognition", "insertion", "deletion", "localization"),
        images=config.eval_images,
        batch_size=8,
        metric_batch=128,
        size=config.size,
        resize=config.size,
        seed=config.seed,
        method_options={"scorecam": {"batch_size": 256}},
        out=str(out / "report"),
    )
    start = time.perf_counter()
    results = Runner(evaluation, progress=progress, log=log).run()
    log(f"[{time.perf_counter() - start:.0f} s] evaluation and report: {out / 'report'}")
    history = [json.loads(line) for line in (cache / "classifier" / "log.jsonl").read_text().splitlines()]
    stream_history = [json.loads(line) for line in (cache / "stream" / "log.jsonl").read_text().splitlines()]
    note = (
        f"\n## Demo setup\n\nSynthetic benchmark: {config.classes} classes, {config.train_images} training "
        f"and {config.val_images} validation images at {config.size}x{config.size}. ResNet-18 trained from "
        f"scratch for {config.classifier_epochs} epoch(s): validation accuracy "
        f"{history[-1]['acc'] * 100:.1f}%. "
        f"CA-Stream trained for {config.stream_epochs} epoch(s) on the frozen classifier: validation "
        f"accuracy GAP {stream_history[-1]['acc_gap'] * 100:.1f}%, "
        f"CA {stream_history[-1]['acc_ca'] * 100:.1f}%. "
        f"{config.eval_images} evaluation images; the synthetic boxes are the localization ground truth.\n"
    )
    report = out / "report" / "results.md"
    report.write_text(report.read_text() + note)
    return results
