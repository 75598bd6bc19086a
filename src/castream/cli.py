"""The ``castream`` command line: a thin layer over the public API.

Errors are printed as one readable line (the full traceback with ``--debug``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

import castream


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
    p.add_argument("--model", default="resnet18", help="torchvision name, or timm:NAME")
    p.add_argument("--weights", default=None, help="pretrained weights to download (e.g. IMAGENET1K_V1)")
    p.add_argument("--checkpoint", default=None, help="local weights (.safetensors or .pt) to start from")
    p.add_argument("--out", required=True, help="folder for checkpoints and logs")
    p.add_argument("--size", type=int, default=224, help="training crop size")
    p.add_argument(
        "--crop-scale", type=float, nargs=2, default=(0.08, 1.0), help="RandomResizedCrop scale range"
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
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


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
        amp=args.amp,
        compile=args.compile,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        extra=extra,
    )


def _training_data(args: argparse.Namespace):
    from castream.data import eval_transform, train_transform
    from castream.data.registry import open_dataset

    train = open_dataset(args.data, "train", train_transform(args.size, scale=tuple(args.crop_scale)))
    val = open_dataset(args.data, "eval", eval_transform(args.size))
    return train, val


def _classifier(args: argparse.Namespace, classes: int):
    """The model to train or explain: built by name, fitted to ``classes``, optionally from local weights."""
    from castream.models import build_model, load_weights, replace_head

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
    from castream.train import train_stream

    train, val = _training_data(args)
    backbone = _classifier(args, len(train.classes))
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


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a classifier or a CA-Stream", description="Training recipes.", **SUBCOMMAND
    )
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    c = recipes.add_parser(
        "classifier", help="train a classifier", description=_train_classifier.__doc__, **SUBCOMMAND
    )
    _add_training_options(c)
    c.set_defaults(func=_train_classifier)
    s = recipes.add_parser(
        "stream",
        help="train a CA-Stream on a frozen classifier",
        description=_train_stream.__doc__,
        **SUBCOMMAND,
    )
    _add_training_options(s)
    s.add_argument("--block", choices=["ca", "proj"], default="ca")
    s.add_argument("--start", type=int, default=0, help="placement S_k-S_L")
    s.add_argument("--class-specific", action="store_true", help="one query per class")
    s.set_defaults(func=_train_stream)


# --- demo ----------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """Smoke example: build a streamed ResNet-50 (random weights, no download) and print its size."""
    import torch
    import torchvision

    model = castream.attach_stream(torchvision.models.resnet50())
    stream = castream.count_parameters(model.stream)
    total = castream.count_parameters(model, trainable_only=False)
    gap = castream.count_flops(model, (1, 3, 224, 224), pooling="gap")
    ca = castream.count_flops(model, (1, 3, 224, 224), pooling="ca")
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    print(f"ResNet-50 + CA-Stream: stream {stream:,} parameters, total {total:,} ({total / 1e6:.2f} M)")
    print(f"GFLOPs per 224x224 image: GAP {gap / 1e9:.3f}, CA {ca / 1e9:.3f} (+{(ca - gap) / 1e9:.4f})")
    print(f"logits {tuple(logits.shape)}, raw attention maps {[tuple(a.shape) for a in model.attention]}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the offline demo", description=_demo.__doc__, **SUBCOMMAND)
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
    for add in (_add_demo, _add_synth, _add_train):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("castream: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"castream {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
