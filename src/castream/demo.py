"""The offline end-to-end demo: synthetic benchmark -> ResNet classifier -> CA-Stream -> GAP vs CA
evaluation of Grad-CAM, Grad-CAM++, Score-CAM and Opti-CAM against the Fake-CAM and random baselines ->
report.

The classifier and the stream ship with castream (``castream/demo_weights``, 21 MB of safetensors),
trained by ``castream train`` on this benchmark with the commands in :func:`training_commands`: training
them from scratch takes about 18 minutes on 2 CPU cores, more than the demo's 10-minute budget.
``retrain=True`` (``castream demo --retrain``) trains them again with the same settings instead.

Every stage is cached under ``<out>/cache``: the synthetic set is reused, training resumes from its
checkpoint (or is skipped once its final weights exist) and the evaluation (in a folder named after its
configuration) resumes from its shards, so a second run only rebuilds the report. A GPU, when present, is
used automatically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import attach_stream
from .data import SyntheticShapes, eval_transform, synthetic, train_transform
from .evaluate import EvalConfig, Runner
from .models import build_model, load_weights
from .train import TrainConfig, train_classifier, train_stream
from .utils import atomic_write, file_digest

WEIGHTS = Path(__file__).parent / "demo_weights"
REPORT_FILES = ("results.md", "results.json", "results.csv", "saliency_grid.png", "curves.png", "ad_ag.png")


@dataclass(frozen=True)
class DemoConfig:
    """The demo's benchmark, training recipe and evaluation. The defaults are those of the shipped
    weights; changing a data or training field needs ``retrain=True``."""

    # benchmark: 6 classes at 64 px, scenes with other classes in 90% of the cases (see synthetic.py)
    classes: int = 6
    size: int = 64
    shape_scale: tuple[float, float] = (0.16, 0.26)
    others: float = 0.9
    train_images: int = 10_000
    val_images: int = 1_000
    # classifier: torchvision ResNet-10 with output stride 16, i.e. 4 x 4 last-stage maps at 64 px
    model: str = "resnet10_os16"
    classifier_epochs: int = 6
    stream_epochs: int = 3
    label_smoothing: float = 0.1  # torchvision's recipe for its V2 ImageNet weights: no saturated outputs
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    crop_scale: tuple[float, float] = (0.7, 1.0)
    seed: int = 0
    # evaluation
    eval_images: int = 200
    methods: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam", "opticam")
    # Grad-CAM on every image (its CIs are the report's yardstick); the rest on a prefix of the same images.
    # Score-CAM and Opti-CAM on 32: above the 30 images a claim verdict needs (claims.MIN_IMAGES). The
    # paper's Score-CAM claim stays open on this benchmark: on 160 images its AD difference was -0.06
    # points [-0.50, +0.41], which would take about 9,000 images to decide (docs/evaluation.md, claims)
    method_images: dict = field(
        default_factory=lambda: {
            "gradcam++": 100,
            "scorecam": 32,
            "opticam": 32,
            "fakecam": 100,
            "random": 100,
        }
    )
    protocol: str = "coarse"
    metric_batch: int = 128


def _train_config(config: DemoConfig, epochs: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        optimizer="adamw",
        schedule="onecycle",
        seed=config.seed,
        # on 2 CPU cores decoding a 64 px PNG costs less than a second process; a GPU needs the loader
        # processes to be fed (the gradients do not depend on the number of workers)
        workers="auto" if torch.cuda.is_available() else 0,
    )


def training_commands(config: DemoConfig, data: str = "data/demo-shapes") -> list[str]:
    """The shell commands that produce the shipped weights (docs/cli.md lists them)."""
    common = (
        f"--model {config.model} --data synthetic:{data} --size {config.size} --resize {config.size} "
        f"--crop-scale {config.crop_scale[0]} {config.crop_scale[1]} --batch-size {config.batch_size} "
        f"--lr {config.lr} --weight-decay {config.weight_decay} --label-smoothing {config.label_smoothing} "
        "--optimizer adamw --schedule onecycle "
        f"--workers 0 --seed {config.seed}"
    )
    return [
        f"castream synth --out {data} --classes {config.classes} --train {config.train_images} "
        f"--val {config.val_images} --size {config.size} --shape-scale {config.shape_scale[0]} "
        f"{config.shape_scale[1]} --others {config.others} --seed {config.seed}",
        f"castream train classifier {common} --epochs {config.classifier_epochs} --out runs/demo-classifier",
        f"castream train stream {common} --checkpoint runs/demo-classifier/model.safetensors "
        f"--epochs {config.stream_epochs} --out runs/demo-stream",
    ]


def _stage(folder: Path, final: str, train, log) -> Path:
    """Run a training stage unless its final file exists; resume an interrupted one."""
    path = folder / final
    if path.exists():
        log(f"[cached] {path}")
        return path
    train(resume=(folder / "checkpoint.pt").exists())
    return path


def _retrain(config: DemoConfig, root: Path, cache: Path, progress: bool, log) -> tuple[Path, Path]:
    """Train the classifier and then the stream exactly as the shipped weights were trained."""
    train_set = SyntheticShapes(
        root, "train", transform=train_transform(config.size, scale=config.crop_scale)
    )
    val_set = SyntheticShapes(root, "val", transform=eval_transform(config.size, resize=config.size))
    options = {"progress": progress, "log": log}

    def classifier(**kw) -> None:
        torch.manual_seed(config.seed)  # the initial weights (as `castream train` does)
        model = build_model(config.model, num_classes=config.classes)
        config_ = _train_config(config, config.classifier_epochs)
        train_classifier(model, train_set, val_set, cache / "classifier", config_, **options, **kw)

    weights = _stage(cache / "classifier", "model.safetensors", classifier, log)

    def stream(**kw) -> None:
        torch.manual_seed(config.seed)
        backbone = load_weights(build_model(config.model, num_classes=config.classes), weights)
        torch.manual_seed(config.seed)  # the initial query and projections
        model = attach_stream(backbone, probe_size=config.size)
        config_ = _train_config(config, config.stream_epochs)
        train_stream(model, train_set, val_set, cache / "stream", config_, **options, **kw)

    return weights, _stage(cache / "stream", "stream.safetensors", stream, log)


def _copy_report(source: Path, target: Path, note: str) -> None:
    """Copy the report files into ``target`` (``note`` added to results.md there: the evaluation's own
    report stays as castream wrote it), refusing a folder that holds anything else."""
    if target.exists():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in REPORT_FILES)
        if foreign:
            raise FileExistsError(
                f"{target} holds files the demo did not write ({', '.join(foreign[:5])}); "
                "choose another --out"
            )
    target.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES[1:]:  # results.md below, with the note
        if (source / name).exists():
            atomic_write(target / name, lambda tmp, name=name: shutil.copyfile(source / name, tmp))
    report = target / "results.md"
    atomic_write(report, lambda tmp: tmp.write_text((source / "results.md").read_text() + note))


def run_demo(
    out: str | os.PathLike = "runs/demo",
    config: DemoConfig | None = None,
    *,
    retrain: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the demo into ``out``; returns the evaluation results (``out/report/results.json``)."""
    config = config or DemoConfig()
    if not retrain and config != DemoConfig(**{**asdict(DemoConfig()), **_evaluation_fields(config)}):
        raise ValueError(
            "the shipped weights were trained with the default DemoConfig data and training fields; "
            "pass retrain=True (castream demo --retrain) to change them"
        )
    out, times = Path(out), {}
    cache = out / "cache"
    start = time.perf_counter()
    train_count = config.train_images if retrain else 0
    root = synthetic.generate(
        cache / f"shapes-{config.classes}c-{config.size}px-{train_count}",
        classes=config.classes,
        train=train_count,
        val=config.val_images,
        size=config.size,
        seed=config.seed,
        scale=config.shape_scale,
        others=config.others,
    )
    times["synthetic benchmark"] = time.perf_counter() - start
    log(f"[{times['synthetic benchmark']:.0f} s] synthetic benchmark: {root}")
    start = time.perf_counter()
    if retrain:
        weights, stream = _retrain(config, root, cache, progress, log)
    else:
        weights, stream = WEIGHTS / "classifier.safetensors", WEIGHTS / "stream.safetensors"
    times["classifier and stream"] = time.perf_counter() - start
    log(f"[{times['classifier and stream']:.0f} s] weights: {weights}, {stream}")
    fields = {
        "model": config.model,
        "data": f"synthetic:{root}",
        "checkpoint": str(weights),
        "stream": str(stream),
        "poolings": ("gap", "ca"),
        "methods": config.methods,
        "metrics": ("recognition", "insertion", "deletion", "localization", "discrimination"),
        "protocol": config.protocol,
        "images": config.eval_images,
        # on a GPU every method runs on every image; on CPUs the expensive ones on a prefix
        "method_images": {} if torch.cuda.is_available() else dict(config.method_images),
        "batch_size": 8,
        "metric_batch": config.metric_batch,
        "size": config.size,
        "resize": config.size,
        "seed": config.seed,
        "method_options": {"scorecam": {"batch_size": 256}, "random": {"grid": 4}},
    }
    # the folder is named after the settings and the weights' content, so weights changed in place (or a
    # run that failed on other weights) never lend their results to these ones
    identity = {**fields, "digests": [file_digest(weights), file_digest(stream)]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()[:12]
    evaluation = EvalConfig(**fields, out=str(cache / f"eval-{key}"))
    start = time.perf_counter()
    results = Runner(evaluation, progress=progress, log=log).run()
    times["evaluation and report"] = time.perf_counter() - start
    log(f"[{times['evaluation and report']:.0f} s] evaluation and report")
    _copy_report(Path(evaluation.out), out / "report", _setup_note(config, retrain, weights, stream, times))
    return results


def _evaluation_fields(config: DemoConfig) -> dict:
    names = ("eval_images", "methods", "method_images", "protocol", "metric_batch")
    return {name: getattr(config, name) for name in names}


def _history(folder: Path) -> list[dict]:
    path = folder / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _setup_note(config: DemoConfig, retrain: bool, weights: Path, stream: Path, times: dict) -> str:
    classifier_log = _history(weights.parent) if retrain else []
    stream_log = _history(stream.parent) if retrain else []
    provenance = (
        "trained in this run (`castream demo --retrain`)"
        if retrain
        else "shipped with castream (`castream/demo_weights`), produced by the commands below"
    )
    lines = [
        "",
        "## Demo setup",
        "",
        f"Synthetic benchmark: {config.classes} classes at {config.size}x{config.size}, other classes in "
        f"about {config.others:.0%} of the scenes before the dominance rule (see `castream.data.synthetic`). "
        f"Classifier `{config.model}` (torchvision ResNet, one BasicBlock per stage, last stage at stride "
        f"16: 4 x 4 feature maps at {config.size} px), trained from scratch for {config.classifier_epochs} "
        f"epochs on {config.train_images} images (AdamW, one-cycle, lr {config.lr}, label smoothing "
        f"{config.label_smoothing}); CA-Stream trained for "
        f"{config.stream_epochs} epochs on the frozen classifier. Weights {provenance}.",
    ]
    if classifier_log and stream_log:
        lines[-1] += (
            f" Validation accuracy: classifier {classifier_log[-1]['acc'] * 100:.1f}%, stream GAP "
            f"{stream_log[-1]['acc_gap'] * 100:.1f}% / CA {stream_log[-1]['acc_ca'] * 100:.1f}%."
        )
    coverage = (
        f"CUDA was present, so every method was evaluated on all {config.eval_images} images."
        if torch.cuda.is_available()
        else "On CPUs the expensive methods run on a prefix of the images ("
        + ", ".join(f"{m}: {n}" for m, n in config.method_images.items())
        + f" of {config.eval_images}); with CUDA every method runs on all of them."
    )
    lines += ["", coverage]
    lines += ["", "```bash", *training_commands(config), "```", "", "Stage times (this run):", ""]
    lines += [f"- {name}: {seconds:.1f} s" for name, seconds in times.items()]
    return "\n".join(lines) + "\n"
