"""``castream train {classifier,stream,gradreg}``: the training recipes."""

from __future__ import annotations

import argparse

import castream

from ._options import (
    COMMANDS,
    MODEL_HELP,
    SUBCOMMAND,
    UsageError,
    _inputs,
    _log,
    nonnegative_int,
    positive_int,
)


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="KIND:PATH, KIND in synthetic, imagenet, cub, voc, cifar100, mit67, folder",
    )
    p.add_argument("--model", default="resnet18", help=MODEL_HELP)
    p.add_argument(
        "--new-head",
        action="store_true",
        help="fine-tune a pretrained (--weights) or factory model whose head has other classes than the "
        "data: replace its head by a new, seeded linear layer (never done unasked)",
    )
    p.add_argument("--weights", default=None, help="pretrained weights to download (e.g. IMAGENET1K_V1)")
    p.add_argument("--checkpoint", default=None, help="local weights (.safetensors or .pt) to start from")
    p.add_argument("--out", required=True, help="folder for checkpoints and logs")
    p.add_argument("--size", type=positive_int, default=224, help="training crop size")
    p.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        help="validation: resize before the centre crop (default size*256/224; = --size for no crop)",
    )
    p.add_argument(
        "--crop-scale", type=float, nargs=2, default=(0.08, 1.0), help="RandomResizedCrop scale range"
    )
    p.add_argument(
        "--normalization",
        choices=["imagenet", "cifar100"],
        default=None,
        help="input mean/std by name (default: recorded with --checkpoint, a timm model's, else imagenet); "
        "recorded with the trained weights",
    )
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="M", help="input mean per channel")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="S", help="input std per channel")
    p.add_argument(
        "--rotation", type=float, default=0.0, help="cifar augmentation: random rotation ± degrees"
    )
    p.add_argument(
        "--warmup-epochs", type=nonnegative_int, default=0, help="linear lr warm-up over the first N epochs"
    )
    p.add_argument(
        "--augment",
        choices=["reference", "cifar"],
        default="reference",
        help="reference: RandomResizedCrop + flip (torchvision recipe); cifar: pad-4 random crop + flip",
    )
    p.add_argument("--epochs", type=positive_int, default=90)
    p.add_argument("--batch-size", type=positive_int, default=256, help="global batch (all processes)")
    p.add_argument(
        "--device-batch", type=positive_int, default=None, help="per process and step (accumulate the rest)"
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
    p.add_argument("--seed", type=nonnegative_int, default=0)
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


def _statistics(args: argparse.Namespace):
    """The input statistics of training, by evaluate's rule (:func:`castream.cli._options._inputs`),
    resolved (and logged) once per command; declared on the model, so that its weights record them."""
    if not hasattr(args, "statistics"):
        args.statistics = _inputs(args)[1]
    return args.statistics


def _training_stats(args: argparse.Namespace) -> tuple[dict, dict]:
    """The input statistics of training as transform keywords, and as the run records them."""
    stats = {"mean": _statistics(args).mean, "std": _statistics(args).std}
    return stats, {k: list(v) for k, v in stats.items()}


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


def _classifier(args: argparse.Namespace, classes: int, *, stream: bool = False):
    """The model to train: built by name, optionally from local weights. A pretrained or factory model
    whose head has other classes than the data gets a new, seeded head only when asked (``--new-head``,
    said in the log); else, and always under a stream (its classifier is frozen), that is an error."""
    import torch

    from castream.models import build_model, is_factory, load_weights, output_classes, replace_head

    torch.manual_seed(args.seed)  # initial weights of anything built from scratch
    if args.weights or is_factory(args.model):  # its own head, replaced only when asked
        model = build_model(args.model, weights=args.weights)
        own = output_classes(model)
        if own != classes and (stream or not args.new_head):
            raise UsageError(
                f"{args.model} has {own} outputs but {args.data} has {classes} classes; "
                + (
                    "a stream is trained on a frozen classifier of the dataset's classes (train or fine-tune "
                    "one first)"
                    if stream
                    else "castream replaces a model's head only when asked: pass --new-head to fine-tune it "
                    "with a new, seeded linear head"
                )
            )
        if own != classes:
            model = replace_head(model, classes, seed=args.seed)
            _log(args)(
                f"{args.model}: its {own}-class head is replaced by a new linear layer for the dataset's "
                f"{classes} classes (seed {args.seed}, --new-head), trained with the rest"
            )
    else:
        model = build_model(args.model, num_classes=classes, seed=args.seed)
    model = load_weights(model, args.checkpoint) if args.checkpoint else model
    return _statistics(args).declare(model)  # so that the trained weights record them


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
    backbone = _classifier(args, len(train.classes), stream=True)
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
        help=COMMANDS["train"],
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
