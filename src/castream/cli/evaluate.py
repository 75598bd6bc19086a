"""``castream evaluate``: the evaluation runner."""

from __future__ import annotations

import argparse

from ._options import (
    COMMANDS,
    MODEL_HELP,
    SUBCOMMAND,
    UsageError,
    _add_input_options,
    _add_speed_options,
    _inputs,
    _log,
    nonnegative_int,
    positive_int,
)


def _dotted_options(items: list[str], option: str, form: str) -> dict:
    """``NAME.KEY=VALUE`` pairs -> {name: {key: value}}: values parsed as JSON when possible (numbers,
    true/false/null, lists), True/False/None as booleans and None, anything else a string."""
    from ..saliency import parse_value

    options: dict = {}
    for key, value in _pairs(items, option, form).items():
        method, dot, name = key.partition(".")
        if not dot or not method or not name:
            raise UsageError(f"{option} takes {form}, got {key!r}")
        parsed = parse_value(value)
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

    poolings = args.poolings or (["gap", "ca"] if args.stream or args.streams else ["gap"])
    size, preprocess = _inputs(args)
    config = EvalConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        weights=args.weights,
        checkpoint=args.checkpoint,
        stream=args.stream,
        streams=_pairs(args.streams, "--streams"),
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
        mean=preprocess.mean,
        std=preprocess.std,
        scores=args.scores,
        multilabel_targets=args.multilabel_targets,
        targets=args.targets,
        class_map=args.class_map,
        amp=args.amp,
        channels_last=args.channels_last,
        accuracy_margin=args.accuracy_margin,
        correct_only=args.correct_only,
    )
    results = Runner(config, progress=not args.quiet, log=_log(args)).run()
    if results is not None and not args.quiet:
        from pathlib import Path

        print((Path(args.out) / "results.md").read_text())
    return 0


def _add_evaluate(sub) -> None:
    from castream.evaluate import groups
    from castream.evaluate.runner import BASELINES
    from castream.metrics import PROTOCOLS

    p = sub.add_parser("evaluate", help=COMMANDS["evaluate"], description=_evaluate.__doc__, **SUBCOMMAND)
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument(
        "--data",
        required=True,
        help="KIND:PATH: synthetic, imagenet, cub, voc, cifar100, mit67, folder (class sub-folders), images "
        "(a flat folder, no labels: --targets predicted) or csv (a path,label[,boxes] file)",
    )
    p.add_argument("--out", required=True, help="output folder (shards, results, figures)")
    p.add_argument("--weights", default=None, help="pretrained weights to download (e.g. IMAGENET1K_V1)")
    p.add_argument("--checkpoint", default=None, help="local classifier weights (.safetensors or .pt)")
    p.add_argument("--stream", default=None, help="CA-Stream checkpoint (enables pooling ca)")
    p.add_argument(
        "--streams",
        action="append",
        default=[],
        metavar="LABEL=STREAM",
        help="more CA-Stream checkpoints of the same classifier, side by side (CA cells of their own: "
        "block, placement or class-specific variants, paper Tables 4-6)",
    )
    p.add_argument(
        "--poolings",
        nargs="+",
        choices=["gap", "ca"],
        default=None,
        help="default: gap, and ca with --stream",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["gradcam", "gradcam++", "scorecam"],
        help="method names, or variants with inline options as cells of their own: opticam[objective=diff]",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=list(groups.default_groups()),
        metavar="GROUP",
        help=f"metric groups: {', '.join(groups.group_names())}; or quantus:NAME, any per-image Quantus "
        "metric (e.g. quantus:FaithfulnessCorrelation; its options with --metric-option quantus:NAME.KEY=V)",
    )
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="thesis", help="causal-metric preset")
    p.add_argument(
        "--images", type=positive_int, default=None, help="number of evaluation images (seeded selection)"
    )
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
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per saliency batch")
    p.add_argument(
        "--metric-batch", type=positive_int, default=64, help="perturbed images per forward in metrics"
    )
    p.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        help="resize before the centre crop (default size*256/224)",
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
    p.add_argument(
        "--targets",
        choices=["labels", "predicted"],
        default="labels",
        help="the class explained: the label, or the model's prediction (also for data whose classes are "
        "not the model's; then no accuracy is reported)",
    )
    p.add_argument(
        "--class-map",
        default=None,
        metavar="FILE",
        help='JSON map of dataset class -> model class index or name, e.g. {"cat": 281, "cup": "espresso"} '
        "(folders named by ImageNet WordNet id or by the model's class names are matched without one)",
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
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument(
        "--correct-only",
        action="store_true",
        help="explain only the images the classifier (GAP) gets right, as the thesis evaluates (§1.3.4)",
    )
    p.add_argument(
        "--accuracy-margin",
        type=float,
        default=0.005,
        help="the accuracy claim's equivalence margin, a fraction (default 0.005: 0.5 points, above every "
        "ImageNet accuracy change of the seeds; a report setting, changeable on a finished run)",
    )
    p.set_defaults(func=_evaluate)
