"""The ``castream`` command line: a thin layer over the public API.

Errors are printed as one readable line (the full traceback with ``--debug``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

import castream


class UsageError(ValueError):
    """A malformed command-line value: reported in one line with exit code 2, like argparse's errors."""


def _log(args: argparse.Namespace):
    return (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))


# --- synth ---------------------------------------------------------------------------------------------


def _synth(args: argparse.Namespace) -> int:
    """Generate the synthetic benchmark (cached: an identical existing set is reused)."""
    from castream.data import synthetic

    root = synthetic.generate(
        args.out,
        classes=args.classes,
        train=args.train,
        val=args.val,
        size=args.size,
        bias=args.bias,
        seed=args.seed,
        scale=tuple(args.shape_scale),
        others=args.others,
        workers=args.workers,
    )
    _log(args)(f"synthetic benchmark in {root}")
    return 0


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth", help="generate the synthetic benchmark", description=_synth.__doc__, **SUBCOMMAND
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=10_000, help="training images")
    p.add_argument("--val", type=int, default=1_000, help="validation images")
    p.add_argument("--size", type=int, default=128, help="resolution (pixels)")
    p.add_argument("--bias", type=float, default=0.0, help="probability of a class-coloured background")
    p.add_argument(
        "--others", type=float, default=0.75, help="probability that a scene holds other classes too"
    )
    p.add_argument(
        "--shape-scale",
        type=float,
        nargs=2,
        default=(0.1, 0.2),
        metavar=("MIN", "MAX"),
        help="radius of the class shapes as a fraction of the image size",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    p.set_defaults(func=_synth)


# --- train ---------------------------------------------------------------------------------------------


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="KIND:PATH, KIND in synthetic, imagenet, cub, voc, cifar100, mit67, folder",
    )
    p.add_argument("--model", default="resnet18", help=MODEL_HELP)
    p.add_argument("--weights", default=None, help="pretrained weights to download (e.g. IMAGENET1K_V1)")
    p.add_argument("--checkpoint", default=None, help="local weights (.safetensors or .pt) to start from")
    p.add_argument("--out", required=True, help="folder for checkpoints and logs")
    p.add_argument("--size", type=int, default=224, help="training crop size")
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        help="validation: resize before the centre crop (default size*256/224; = --size for no crop)",
    )
    p.add_argument(
        "--crop-scale", type=float, nargs=2, default=(0.08, 1.0), help="RandomResizedCrop scale range"
    )
    p.add_argument(
        "--normalization",
        choices=["imagenet", "cifar100"],
        default="imagenet",
        help="input mean/std (evaluate the model with the same --normalization)",
    )
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="M", help="input mean per channel")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="S", help="input std per channel")
    p.add_argument(
        "--rotation", type=float, default=0.0, help="cifar augmentation: random rotation ± degrees"
    )
    p.add_argument("--warmup-epochs", type=int, default=0, help="linear lr warm-up over the first N epochs")
    p.add_argument(
        "--augment",
        choices=["reference", "cifar"],
        default="reference",
        help="reference: RandomResizedCrop + flip (torchvision recipe); cifar: pad-4 random crop + flip",
    )
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--batch-size", type=int, default=256, help="global batch (all processes)")
    p.add_argument(
        "--device-batch", type=int, default=None, help="per process and step (accumulate the rest)"
    )
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--milestones", type=int, nargs="*", default=[30, 60], help="epochs where lr is multiplied by gamma"
    )
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="cross-entropy label smoothing (torchvision V2: 0.1)",
    )
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument(
        "--schedule",
        choices=["multistep", "onecycle"],
        default="multistep",
        help="multistep: x gamma at each milestone; onecycle: per-step one-cycle to --lr",
    )
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="data-loading processes (default auto: min(8, CPU count))",
    )
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def _workers(text: str) -> int | str:
    """``--workers``: ``auto`` or an int >= 0."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an int >= 0, got {text!r}")
    return value


def _train_config(args: argparse.Namespace, **extra):
    from castream.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        device_batch=args.device_batch,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        milestones=tuple(args.milestones),
        gamma=args.gamma,
        label_smoothing=args.label_smoothing,
        optimizer=args.optimizer,
        schedule=args.schedule,
        amp=args.amp,
        compile=args.compile,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        warmup_epochs=args.warmup_epochs,
        extra={**extra, "normalization": _training_stats(args)[1]},
    )


def _training_stats(args: argparse.Namespace) -> tuple[dict, str | dict]:
    """The input statistics of training, and how the run records them: the --normalization name, or the
    explicit --mean/--std (evaluate the model with the same)."""
    from castream.preprocess import NORMALIZATIONS, Preprocess

    if (args.mean is None) != (args.std is None):
        raise UsageError("--mean and --std go together (one value per input channel each)")
    if args.mean is None:
        return dict(zip(("mean", "std"), NORMALIZATIONS[args.normalization])), args.normalization
    if args.normalization != "imagenet":
        raise UsageError("give either --normalization or --mean/--std, not both")
    chosen = Preprocess(args.mean, args.std)
    return {"mean": chosen.mean, "std": chosen.std}, {"mean": list(chosen.mean), "std": list(chosen.std)}


def _training_data(args: argparse.Namespace):
    from castream.data import cifar_train_transform, eval_transform, train_transform
    from castream.data.registry import open_dataset

    stats = _training_stats(args)[0]
    if args.augment == "cifar":  # pad-and-crop at full size: the eval images are not resized either
        augment = cifar_train_transform(args.size, rotation=args.rotation, **stats)
        evaluate = eval_transform(args.size, resize=args.size, **stats)
    else:
        augment, evaluate = (
            train_transform(args.size, scale=tuple(args.crop_scale), **stats),
            eval_transform(args.size, resize=args.resize, **stats),
        )
    return open_dataset(args.data, "train", augment), open_dataset(args.data, "eval", evaluate)


def _classifier(args: argparse.Namespace, classes: int):
    """The model to train or explain: built by name, fitted to ``classes``, optionally from local weights."""
    import torch

    from castream.models import build_model, load_weights, replace_head

    torch.manual_seed(args.seed)  # initial weights of anything built from scratch
    if args.weights:
        model = build_model(args.model, weights=args.weights)
        model = replace_head(model, classes) if castream.describe(model).num_classes != classes else model
    else:
        model = build_model(args.model, num_classes=classes)
    return load_weights(model, args.checkpoint) if args.checkpoint else model


def _train_classifier(args: argparse.Namespace) -> int:
    """Train (or fine-tune) a classifier; the final weights go to OUT/model.safetensors."""
    from castream.train import train_classifier

    train, val = _training_data(args)
    model = _classifier(args, len(train.classes))
    train_classifier(
        model,
        train,
        val,
        args.out,
        _train_config(args, model=args.model, data=args.data),
        resume=args.resume,
        progress=not args.quiet,
        log=_log(args),
    )
    return 0


def _train_stream(args: argparse.Namespace) -> int:
    """Train a CA-Stream on a frozen classifier (thesis §3.4 recipe by default); the stream goes to
    OUT/stream.safetensors."""
    import torch

    from castream.train import train_stream

    train, val = _training_data(args)
    backbone = _classifier(args, len(train.classes))
    torch.manual_seed(args.seed)
    model = castream.attach_stream(
        backbone, block=args.block, start=args.start, class_specific=args.class_specific, probe_size=args.size
    )
    train_stream(
        model,
        train,
        val,
        args.out,
        _train_config(
            args,
            model=args.model,
            data=args.data,
            block=args.block,
            start=args.start,
            class_specific=args.class_specific,
        ),
        resume=args.resume,
        progress=not args.quiet,
        log=_log(args),
    )
    return 0


def _train_gradreg(args: argparse.Namespace) -> int:
    """Train a classifier with the guided-backprop gradient regularizer, L = L_C + λ L_R (thesis ch. 4).
    Defaults: the thesis §4.3.1 recipe (cifar_resnet18 at 32x32, 200 epochs, SGD lr 0.1, batch 128,
    lr / 5 at epochs 60, 120, 160); the final weights go to OUT/model.safetensors."""
    from castream.train import GradientRegularizer, train_gradreg
    from castream.train.gradreg import PRESETS, default_lambda

    if args.preset:
        for key, value in PRESETS[args.preset].items():
            setattr(args, key, value)
    lam = default_lambda(args.model) if args.lam is None else args.lam
    regularizer = GradientRegularizer(args.error, lam, args.reduction)
    train, val = _training_data(args)
    model = _classifier(args, len(train.classes))
    train_gradreg(
        model,
        train,
        val,
        args.out,
        regularizer,
        _train_config(args, model=args.model, data=args.data),
        resume=args.resume,
        progress=not args.quiet,
        log=_log(args),
    )
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier, a CA-Stream, or with the gradient regularizer",
        description="Training recipes.",
        **SUBCOMMAND,
    )
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE", required=True)

    def recipe(name: str, help: str, func) -> argparse.ArgumentParser:
        parser = recipes.add_parser(name, help=help, description=func.__doc__, **SUBCOMMAND)
        _add_training_options(parser)
        parser.set_defaults(func=func)
        return parser

    recipe("classifier", "train a classifier", _train_classifier)
    s = recipe("stream", "train a CA-Stream on a frozen classifier", _train_stream)
    s.add_argument("--block", choices=["ca", "proj"], default="ca")
    s.add_argument("--start", type=int, default=0, help="placement S_k-S_L")
    s.add_argument("--class-specific", action="store_true", help="one query per class")
    g = recipe("gradreg", "train a classifier with the interpretable-gradient regularizer", _train_gradreg)
    g.add_argument(
        "--error",
        choices=["cosine", "mae", "mse", "histogram"],
        default="cosine",
        help="error between the standard and the guided input gradient (thesis (4.5)-(4.8))",
    )
    g.add_argument(
        "--lam",
        type=float,
        default=None,
        help="regularization weight λ (default: 1e-3 for cifar_mobilenet_v2, thesis Table 4.1; else 7.5e-3)",
    )
    g.add_argument(
        "--reduction",
        choices=["mean", "pixels"],
        default="mean",
        help="mae/mse: mean over C*H*W values, or the sum over H*W pixels as (4.5)-(4.6) print it",
    )
    g.add_argument(
        "--preset",
        choices=["pytorch-cifar100"],
        default=None,
        help="also the repository's 1-epoch warm-up, ±15° rotation, CIFAR-100 mean/std (overrides those)",
    )
    g.set_defaults(
        model="cifar_resnet18",
        size=32,
        augment="cifar",
        epochs=200,
        batch_size=128,
        lr=0.1,
        weight_decay=5e-4,
        milestones=[60, 120, 160],
        gamma=0.2,
    )


# --- evaluate ------------------------------------------------------------------------------------------


def _dotted_options(items: list[str], option: str, form: str) -> dict:
    """``NAME.KEY=VALUE`` pairs -> {name: {key: value}}: values parsed as JSON when possible (numbers,
    true/false/null, lists), True/False/None as booleans and None, anything else a string."""
    import json

    options: dict = {}
    for key, value in _pairs(items, option, form).items():
        method, dot, name = key.partition(".")
        if not dot or not method or not name:
            raise UsageError(f"{option} takes {form}, got {key!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:  # Python's spelling of the JSON constants too (jitter=False)
            parsed = {"True": True, "False": False, "None": None}.get(value, value)
        options.setdefault(method, {})[name] = parsed
    return options


def _pairs(items: list[str], option: str, form: str = "LABEL=PATH") -> dict[str, str]:
    """``KEY=VALUE`` items as a dict; a missing ``=``, an empty side or a repeated key is a usage error."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{option} takes {form}, got {item!r}")
        if key in pairs:
            raise UsageError(f"{option} names {key!r} twice")
        pairs[key] = value
    return pairs


def _counts(items: list[str], option: str) -> dict[str, int]:
    """``METHOD=N`` items with N a positive integer."""
    counts = {}
    for key, value in _pairs(items, option, "METHOD=N").items():
        try:
            counts[key] = int(value)
        except ValueError:
            raise UsageError(f"{option} takes METHOD=N with an integer N, got {key}={value}") from None
    return counts


def _evaluate(args: argparse.Namespace) -> int:
    """Evaluate saliency methods on a model through GAP and CA-Stream pooling over a dataset: every metric
    per image, aggregates with 95% CIs, tables and figures in OUT (results.json, results.csv, results.md).
    Resumable: re-running the same command skips finished images. Runs unchanged under torchrun."""
    from castream.evaluate import EvalConfig, Runner

    poolings = args.poolings or (["gap", "ca"] if args.stream else ["gap"])
    size, normalization, mean, std = _inputs(args)
    config = EvalConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        weights=args.weights,
        checkpoint=args.checkpoint,
        stream=args.stream,
        poolings=tuple(poolings),
        methods=tuple(args.methods),
        metrics=tuple(args.metrics),
        protocol=args.protocol,
        images=args.images,
        batch_size=args.batch_size,
        metric_batch=args.metric_batch,
        size=size,
        resize=args.resize,
        seed=args.seed,
        boxes=args.boxes,
        method_options=_dotted_options(
            args.option, "--option", "METHOD.KEY=VALUE (e.g. scorecam.batch_size=256)"
        ),
        metric_options=_dotted_options(
            args.metric_option, "--metric-option", "GROUP.KEY=VALUE (e.g. aopc.convention=quantus)"
        ),
        compare=_pairs(args.compare, "--compare"),
        method_images=_counts(args.method_images, "--method-images"),
        baselines=tuple(args.baselines),
        normalization=normalization,
        mean=mean,
        std=std,
        scores=args.scores,
        multilabel_targets=args.multilabel_targets,
        amp=args.amp,
        channels_last=args.channels_last,
    )
    results = Runner(config, progress=not args.quiet, log=_log(args)).run()
    if results is not None and not args.quiet:
        from pathlib import Path

        print((Path(args.out) / "results.md").read_text())
    return 0


def _add_evaluate(sub) -> None:
    from castream.evaluate import DEFAULT_METRICS, METRIC_GROUPS
    from castream.evaluate.runner import BASELINES
    from castream.metrics import PROTOCOLS

    p = sub.add_parser(
        "evaluate", help="evaluate saliency methods (GAP vs CA)", description=_evaluate.__doc__, **SUBCOMMAND
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument(
        "--data", required=True, help="KIND:PATH (synthetic, imagenet, cub, voc, cifar100, mit67, folder)"
    )
    p.add_argument("--out", required=True, help="output folder (shards, results, figures)")
    p.add_argument("--weights", default=None, help="pretrained weights to download (e.g. IMAGENET1K_V1)")
    p.add_argument("--checkpoint", default=None, help="local classifier weights (.safetensors or .pt)")
    p.add_argument("--stream", default=None, help="CA-Stream checkpoint (enables pooling ca)")
    p.add_argument(
        "--poolings",
        nargs="+",
        choices=["gap", "ca"],
        default=None,
        help="default: gap, and ca with --stream",
    )
    p.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++", "scorecam"])
    p.add_argument("--metrics", nargs="+", choices=list(METRIC_GROUPS), default=list(DEFAULT_METRICS))
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="thesis", help="causal-metric preset")
    p.add_argument("--images", type=int, default=None, help="number of evaluation images (seeded selection)")
    p.add_argument(
        "--method-images",
        action="append",
        default=[],
        metavar="METHOD=N",
        help="evaluate METHOD on the first N images only (expensive methods)",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        choices=list(BASELINES),
        default=list(BASELINES),
        help="baseline maps added to every evaluation (none: --baselines with no value)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per saliency batch")
    p.add_argument("--metric-batch", type=int, default=64, help="perturbed images per forward in metrics")
    p.add_argument(
        "--resize", type=int, default=None, help="resize before the centre crop (default size*256/224)"
    )
    p.add_argument("--boxes", default=None, help="ImageNet: folder of the official bounding-box XML files")
    _add_input_options(p)
    p.add_argument(
        "--scores",
        choices=["softmax", "sigmoid"],
        default="softmax",
        help="class probabilities of the metrics (sigmoid: a multi-label model, as the authors' VOC code)",
    )
    p.add_argument(
        "--multilabel-targets",
        choices=["top", "all"],
        default="top",
        help="multi-label data (VOC): explain the positive class with the highest logit, or every positive "
        "class (one row per image-class pair, as the authors' code)",
    )
    _add_speed_options(p)
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE", help="method options")
    p.add_argument(
        "--metric-option",
        action="append",
        default=[],
        metavar="GROUP.KEY=VALUE",
        help="metric-group options, passed to its function (e.g. aopc.convention=quantus)",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=CHECKPOINT",
        help="more checkpoints of the same model, evaluated side by side (e.g. a regularized one)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_evaluate)


# --- explain -------------------------------------------------------------------------------------------


def _explain(args: argparse.Namespace) -> int:
    """Explain the prediction on IMAGE files: an overlay (PNG) and the raw map (.npy, H x W float32) per
    image in OUT, and the top-5 classes printed. Files castream did not write there are kept unless
    --overwrite."""
    from functools import partial
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from castream import saliency, viz
    from castream._precision import autocast
    from castream.data import eval_transform
    from castream.models import build_model, checkpoint_classes, is_factory, load_weights
    from castream.preprocess import Preprocess
    from castream.utils import write_owned

    if args.num_classes < 1:
        raise UsageError(f"--num-classes must be a positive integer, got {args.num_classes}")
    size, normalization, mean, std = _inputs(args)
    preprocess = Preprocess(mean, std) if mean is not None else Preprocess.named(normalization)
    classes = checkpoint_classes(args.model, args.checkpoint) if args.checkpoint else args.num_classes
    if args.weights:
        model = build_model(args.model, weights=args.weights)
    elif is_factory(args.model):  # as its factory builds it (own classes), unless a checkpoint has others
        model = build_model(args.model, num_classes=classes if args.checkpoint else None)
    else:
        model = build_model(args.model, num_classes=classes)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    names = _class_names(args, model)
    if args.stream:
        model = castream.load_stream(model, args.stream)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    model.eval().to(device, memory_format=memory)
    transform = eval_transform(size, boxes=False, mean=preprocess.mean, std=preprocess.std)
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path in args.images])
    images = images.to(device).contiguous(memory_format=memory)
    kwargs = {"pooling": args.pooling} if args.stream else {}
    options = {"preprocess": preprocess} if saliency.get(args.method).masks_input else {}
    method = saliency.get(args.method)(model, forward_kwargs=kwargs, **options)
    with torch.no_grad(), autocast(device, args.amp):
        probabilities = model(images, **kwargs).float().softmax(1).cpu()
    if names is not None and len(names) != probabilities.shape[1]:
        raise UsageError(
            f"--labels names {len(names)} classes, but the model has {probabilities.shape[1]} outputs"
        )
    stems = [f"{Path(path).stem}_{args.method.replace('+', 'p')}" for path in args.images]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise UsageError(f"images with the same file name would write the same files: {repeated}")
    targets = None if args.target is None else [args.target] * len(images)
    with autocast(device, args.amp):
        maps = method(images, targets).cpu()
    images = images.cpu()
    out = Path(args.out)
    files = {}
    for stem, image, m in zip(stems, images, maps):
        files[f"{stem}.png"] = partial(viz.save_overlay, image=image, saliency=m, preprocess=preprocess)
        files[f"{stem}.npy"] = partial(_save_npy, array=m.numpy().astype(np.float32))
    write_owned(out, files, overwrite=args.overwrite)
    for path, stem, p in zip(args.images, stems, probabilities):
        top = p.topk(min(5, len(p)))
        listing = ", ".join(
            f"{names[i] if names else i} {v:.3f}" for v, i in zip(top.values.tolist(), top.indices.tolist())
        )
        print(f"{path}: {listing} -> {out / stem}.png")
    return 0


def _save_npy(path, array) -> None:
    import numpy as np

    with open(path, "wb") as f:  # np.save would append .npy to a temporary file's name
        np.save(f, array)


def _class_names(args: argparse.Namespace, model) -> list[str] | None:
    if args.labels:
        from pathlib import Path

        return [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()]
    if args.weights and not args.model.startswith("timm:"):
        import torchvision

        return list(torchvision.models.get_model_weights(args.model)[args.weights].meta["categories"])
    return None


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="explain predictions on image files", description=_explain.__doc__, **SUBCOMMAND
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default="resnet50", help=MODEL_HELP)
    p.add_argument("--weights", default=None, help="pretrained weights to download (e.g. IMAGENET1K_V1)")
    p.add_argument("--checkpoint", default=None, help="local weights (.safetensors or .pt)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of a random-weight model")
    p.add_argument("--stream", default=None, help="CA-Stream checkpoint")
    p.add_argument("--pooling", choices=["ca", "gap"], default="ca", help="with --stream")
    p.add_argument("--method", default="gradcam", help=f"one of {castream.saliency.available()}")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: the prediction)")
    _add_input_options(p)
    p.add_argument("--labels", default=None, help="text file with one class name per line")
    p.add_argument("--out", default="explanations")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in OUT that castream did not write there (its own are always replaced)",
    )
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when present)")
    _add_speed_options(p)
    p.set_defaults(func=_explain)


MODEL_HELP = (
    "torchvision name, timm:NAME, or your own model: package.module:factory or path/to/file.py:factory "
    "(a callable without arguments returning an nn.Module)"
)


def _add_input_options(p: argparse.ArgumentParser) -> None:
    """--size and the input statistics: a named normalization or explicit --mean/--std (timm models
    default to their pretrained_cfg)."""
    p.add_argument("--size", type=int, default=None, help="input size (default 224, or a timm model's own)")
    p.add_argument(
        "--normalization",
        choices=["imagenet", "cifar100"],
        default=None,
        help="the model's input mean/std by name (default imagenet, or a timm model's pretrained_cfg)",
    )
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="M", help="input mean per channel")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="S", help="input std per channel")


def _inputs(args: argparse.Namespace) -> tuple[int, str, tuple | None, tuple | None]:
    """(size, normalization, mean, std) from the options; a timm model's pretrained_cfg fills what was
    not given, and the log says so."""
    if (args.mean is None) != (args.std is None):
        raise UsageError("--mean and --std go together (one value per input channel each)")
    if args.mean is not None and args.normalization is not None:
        raise UsageError("give either --normalization or --mean/--std, not both")
    size, normalization, mean, std = args.size, args.normalization or "imagenet", args.mean, args.std
    if args.model.startswith("timm:") and (
        size is None or (args.mean is None and args.normalization is None)
    ):
        cfg = _timm_cfg(args.model[5:])
        taken = []
        if cfg is not None and args.mean is None and args.normalization is None and cfg.get("mean"):
            mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
            taken.append(f"mean {mean} std {std}")
        if cfg is not None and size is None and cfg.get("input_size"):
            size = int(cfg["input_size"][-1])
            taken.append(f"input size {size}")
        if taken:
            _log(args)(
                f"{args.model}: {', '.join(taken)} from its pretrained_cfg (--mean/--std, --size override)"
            )
    return size or 224, normalization, mean, std


def _timm_cfg(name: str) -> dict | None:
    """A timm model's pretrained configuration (mean, std, input_size), without building or downloading."""
    try:
        import timm
    except ImportError as err:
        raise UsageError("timm models need `pip install castream[timm]`") from err
    cfg = timm.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else None


def _add_speed_options(p: argparse.ArgumentParser) -> None:
    """--amp and --channels-last: how the model runs (castream's own numerics stay in float32)."""
    p.add_argument(
        "--amp",
        choices=["bf16", "fp16"],
        default=None,
        help="run the model under autocast in this precision (maps, probabilities, AUCs stay float32)",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="model and images in torch.channels_last memory format"
    )


# --- bench ---------------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    """Run the speed benchmarks and print their JSON (quick sizes by default, --full for the issues' ones)."""
    from castream import bench

    extra = ["--device", args.device] if args.device else []
    extra += ["--amp", args.amp] if args.amp else []
    extra += ["--channels-last"] if args.channels_last else []
    bench.run(args.names or None, full=args.full, extra=extra)
    return 0


def _add_bench(sub) -> None:
    from castream.bench import QUICK

    p = sub.add_parser("bench", help="run the speed benchmarks", description=_bench.__doc__, **SUBCOMMAND)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"among {list(QUICK)} (default: all)")
    p.add_argument("--full", action="store_true", help="224 x 224, ResNet-18/50 (slow on a CPU)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda (default: cuda when present)")
    _add_speed_options(p)
    p.set_defaults(func=_bench)


# --- demo ----------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """The offline end-to-end demo: synthetic benchmark with several classes per scene, a torchvision
    ResNet classifier with a CA-Stream (shipped weights, or --retrain), GAP vs CA evaluation of Grad-CAM,
    Grad-CAM++, Score-CAM and Opti-CAM against the Fake-CAM and random-map baselines, report (printed at
    the end). Cached: a second run reuses everything."""
    from castream.demo import run_demo

    run_demo(args.out, retrain=args.retrain, progress=not args.quiet, log=_log(args))
    if not args.quiet:
        from pathlib import Path

        print((Path(args.out) / "report" / "results.md").read_text())
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="run the offline end-to-end demo", description=_demo.__doc__, **SUBCOMMAND
    )
    p.add_argument("--out", default="runs/demo", help="output folder (cache and report)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train the classifier and the stream here (about 18 minutes on 2 CPU cores) instead of "
        "using the shipped weights",
    )
    p.set_defaults(func=_demo)


# --- main ----------------------------------------------------------------------------------------------


def _common(default=None) -> argparse.ArgumentParser:
    """--quiet/--debug, accepted before or after the subcommand (the copy in subcommands must not
    override a value given before it, hence SUPPRESS defaults there)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=default, help="no progress bars or logs")
    common.add_argument("--debug", action="store_true", default=default, help="show full tracebacks")
    return common


SUBCOMMAND = {"parents": [_common(argparse.SUPPRESS)]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="castream", description=castream.__doc__.splitlines()[0], parents=[_common(False)]
    )
    parser.add_argument("--version", action="version", version=f"castream {castream.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_synth, _add_train, _add_explain, _add_evaluate, _add_bench):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports torch (the subcommands' defaults): Ctrl-C here is one line too
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return _run(args)
    except KeyboardInterrupt:
        print("castream: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except UsageError as err:
        print(f"castream {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"castream {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
