"""Options and helpers shared by several subcommands: input statistics, speed options, logging, usage
errors."""

from __future__ import annotations

import argparse

# subcommand -> its one-line help: ``castream --help`` lists them without importing torch
COMMANDS = {
    "demo": "run the offline end-to-end demo",
    "synth": "generate the synthetic benchmark",
    "train": "train a classifier, a CA-Stream, or with the gradient regularizer",
    "explain": "explain predictions on image files",
    "evaluate": "evaluate saliency methods (GAP vs CA)",
    "report": "re-render an evaluation's report from its stored records",
    "bench": "run the speed benchmarks",
}


class UsageError(ValueError):
    """A malformed command-line value: reported in one line with exit code 2, like argparse's errors."""


def _log(args: argparse.Namespace):
    return (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))


def _common(default=None) -> argparse.ArgumentParser:
    """--quiet/--debug, accepted before or after the subcommand (the copy in subcommands must not
    override a value given before it, hence SUPPRESS defaults there)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=default, help="no progress bars or logs")
    common.add_argument("--debug", action="store_true", default=default, help="show full tracebacks")
    return common


SUBCOMMAND = {"parents": [_common(argparse.SUPPRESS)]}


MODEL_HELP = (
    "torchvision name, timm:NAME, or your own model: package.module:factory or path/to/file.py:factory "
    "(a callable without arguments returning an nn.Module)"
)


def _add_input_options(p: argparse.ArgumentParser) -> None:
    """--size and the input statistics: a named normalization or explicit --mean/--std (timm models
    default to their pretrained_cfg)."""
    p.add_argument(
        "--size", type=positive_int, default=None, help="input size (default 224, or a timm model's own)"
    )
    p.add_argument(
        "--normalization",
        choices=["imagenet", "cifar100"],
        default=None,
        help="the model's input mean/std by name (default imagenet, or a timm model's pretrained_cfg)",
    )
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="M", help="input mean per channel")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="S", help="input std per channel")


def positive_int(text: str) -> int:
    """An argparse type: a count or a size, an integer >= 1 (0 is refused, never read as "default")."""
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (a seed, warm-up epochs)."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def _inputs(args: argparse.Namespace):
    """(size, input statistics) from the options: the one rule of
    :func:`castream.preprocess.input_statistics` (given, else recorded with --checkpoint, else a timm
    model's pretrained_cfg, else ImageNet's), said in the log when not given; a timm model's
    pretrained_cfg also gives the size when --size is not."""
    from castream.preprocess import input_statistics

    try:
        preprocess, source = input_statistics(
            mean=args.mean,
            std=args.std,
            normalization=args.normalization,
            checkpoint=getattr(args, "checkpoint", None),
            model=args.model,
        )
    except (ValueError, TypeError, ImportError) as err:
        raise UsageError(str(err)) from None
    log = _log(args)
    if source != "given":
        log(f"input statistics mean {preprocess.mean} std {preprocess.std}: {source} (--mean/--std override)")
    size = args.size
    if size is None and args.model.startswith("timm:"):
        from castream.preprocess import timm_pretrained_cfg

        cfg = timm_pretrained_cfg(args.model[5:])
        if cfg is not None and cfg.get("input_size"):
            size = int(cfg["input_size"][-1])
            log(f"{args.model}: input size {size} from its pretrained_cfg (--size overrides)")
    return 224 if size is None else size, preprocess


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
