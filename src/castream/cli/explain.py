"""``castream explain``: maps and top-5 classes for image files."""

from __future__ import annotations

import argparse

import castream

from ._options import MODEL_HELP, SUBCOMMAND, UsageError, _add_input_options, _add_speed_options, _inputs


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
