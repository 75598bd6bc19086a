"""``castream explain``: maps and top-5 classes for image files."""

from __future__ import annotations

import argparse
import re

import castream

from ._options import (
    COMMANDS,
    MODEL_HELP,
    SUBCOMMAND,
    UsageError,
    _add_input_options,
    _add_speed_options,
    _inputs,
    positive_int,
)


def _explain(args: argparse.Namespace) -> int:
    """Explain the predictions on image files (or every image in a folder, recursively): per image a
    figure (PNG: the whole photograph with the map on the centre crop the model saw, a colour bar, the
    class and its probability) and the raw map (.npy, H x W float32) in OUT, and the top-5 classes printed
    (one JSON object per image with --json). Images go through in batches of --batch-size, written as they
    come. Files castream did not write there are kept unless --overwrite."""
    import json
    from functools import partial
    from pathlib import Path

    import numpy as np
    import torch
    from tqdm import tqdm

    from castream import saliency, viz
    from castream._precision import autocast
    from castream.data import crop_region, eval_transform
    from castream.data.datasets import to_rgb
    from castream.models import build_model, checkpoint_classes, is_factory, load_weights
    from castream.utils import check_owned, write_owned

    for name in ("num_classes", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}"
            )
    paths = _image_files(args.images)
    size, preprocess = _inputs(args)
    classes = checkpoint_classes(args.model, args.checkpoint) if args.checkpoint else args.num_classes
    if args.weights:
        model = build_model(args.model, weights=args.weights)
    elif is_factory(args.model):  # as its factory builds it (own classes), unless a checkpoint has others
        model = build_model(args.model, num_classes=classes if args.checkpoint else None)
    else:
        model = build_model(args.model, num_classes=classes)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
    base = model
    if args.stream:
        model = castream.load_stream(model, args.stream)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    model.eval().to(device, memory_format=memory)
    transform = eval_transform(
        size, resize=args.resize, boxes=False, mean=preprocess.mean, std=preprocess.std
    )
    kwargs = {"pooling": args.pooling} if args.stream else {}
    output = (
        int(args.output) if args.output is not None and args.output.lstrip("-").isdigit() else args.output
    )
    cls, inline = saliency.spec(args.method)  # a method, or a variant: opticam[objective=diff]
    options = {"preprocess": preprocess, **inline} if cls.masks_input else dict(inline)
    if args.layer is not None:
        options["layer"] = args.layer
    method = cls(model, forward_kwargs=kwargs, output=output, **options)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", args.method.replace("+", "p")).strip("_")
    stems = [f"{stem}_{tag}" for stem in _stems(args.images, paths)]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise UsageError(f"images with the same file name would write the same files: {repeated}")
    out = Path(args.out)
    check_owned(out, [f"{s}.{ext}" for s in stems for ext in ("png", "npy")], args.overwrite)
    names = None
    batches = range(0, len(paths), args.batch_size)
    for start in tqdm(batches, desc="explain", disable=args.quiet or args.json or len(batches) == 1):
        chunk, chunk_stems = paths[start : start + args.batch_size], stems[start : start + args.batch_size]
        photos = [to_rgb(_open(path)) for path in chunk]
        images = (
            torch.stack([transform(photo) for photo in photos]).to(device).contiguous(memory_format=memory)
        )
        with torch.no_grad(), autocast(device, args.amp):
            probabilities = method.logits(images).float().softmax(1).cpu()
        if names is None:
            names = _class_names(args, base, probabilities.shape[1])
        targets = None if args.target is None else [args.target] * len(images)
        with autocast(device, args.amp):
            maps = method(images, targets).cpu()
        explained = probabilities.argmax(1) if targets is None else torch.tensor(targets)
        files = {}
        for stem, photo, m, c, p in zip(chunk_stems, photos, maps, explained.tolist(), probabilities):
            region = crop_region(photo.size, size, args.resize)
            label = names[c] if names else str(c)
            figure = partial(
                viz.save_overlay,
                image=photo,
                saliency=m,
                name=label,
                probability=float(p[c]),
                region=region,
                title=args.method,
            )
            files[f"{stem}.png"] = figure
            files[f"{stem}.npy"] = partial(_save_npy, array=m.numpy().astype(np.float32))
        write_owned(out, files, overwrite=args.overwrite)
        for path, stem, p, c in zip(chunk, chunk_stems, probabilities, explained.tolist()):
            top = p.topk(min(5, len(p)))
            pairs = list(zip(top.indices.tolist(), top.values.tolist()))
            if args.json:
                record = {
                    "image": str(path),
                    "explained": {
                        "class": c,
                        "name": names[c] if names else None,
                        "probability": float(p[c]),
                    },
                    "top": [
                        {"class": i, "name": names[i] if names else None, "probability": v} for i, v in pairs
                    ],
                    "figure": str(out / f"{stem}.png"),
                    "map": str(out / f"{stem}.npy"),
                }
                print(json.dumps(record), flush=True)
            else:
                listing = ", ".join(f"{names[i] if names else i} {v:.3f}" for i, v in pairs)
                print(f"{path}: {listing} -> {out / stem}.png", flush=True)
    return 0


def _image_files(items: list[str]) -> list:
    """The image files named, a folder standing for every image below it (sorted)."""
    from pathlib import Path

    from castream.data.datasets import IMAGE_EXTENSIONS

    files = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise UsageError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif not path.is_file():
            raise UsageError(f"no image file or folder {path}")
        else:
            files.append(path)
    return files


def _stems(items: list[str], paths: list) -> list[str]:
    """Output names: the file's stem, prefixed by its sub-folders when it was found in a folder."""
    from pathlib import Path

    folders = [Path(item) for item in items if Path(item).is_dir()]
    stems = []
    for path in paths:
        root = next((f for f in folders if f in path.parents), None)
        parts = path.relative_to(root).with_suffix("").parts if root is not None else (path.stem,)
        stems.append("_".join(parts))
    return stems


def _open(path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"cannot read image {path}: {err}") from None


def _save_npy(path, array) -> None:
    import numpy as np

    with open(path, "wb") as f:  # np.save would append .npy to a temporary file's name
        np.save(f, array)


def _class_names(args: argparse.Namespace, model, classes: int) -> list[str] | None:
    """--labels, the torchvision weights' categories, or the model's own names (Hugging Face id2label,
    ImageNet's for 1,000 classes)."""
    from castream.data.classes import model_class_names

    if args.labels:
        from pathlib import Path

        names = [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()]
        if len(names) != classes:
            raise UsageError(f"--labels names {len(names)} classes, but the model has {classes} outputs")
        return names
    if args.weights and not args.model.startswith("timm:"):
        import torchvision

        return list(torchvision.models.get_model_weights(args.model)[args.weights].meta["categories"])
    return model_class_names(model, classes)


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help=COMMANDS["explain"], description=_explain.__doc__, **SUBCOMMAND)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    p.add_argument("--model", default="resnet50", help=MODEL_HELP)
    p.add_argument("--weights", default=None, help="pretrained weights to download (e.g. IMAGENET1K_V1)")
    p.add_argument("--checkpoint", default=None, help="local weights (.safetensors or .pt)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of a random-weight model")
    p.add_argument("--stream", default=None, help="CA-Stream checkpoint")
    p.add_argument("--pooling", choices=["ca", "gap"], default="ca", help="with --stream")
    p.add_argument(
        "--method",
        default="gradcam",
        help=f"one of {castream.saliency.available()}, or a variant with options: opticam[objective=diff]",
    )
    p.add_argument("--target", type=int, default=None, help="class to explain (default: the prediction)")
    p.add_argument(
        "--layer", default=None, help="module name of the layer to explain (default: the last stage)"
    )
    p.add_argument(
        "--output",
        default=None,
        help="the logits of a model returning a tuple or dict: an index or key (Hugging Face outputs: as is)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (bounds the memory)")
    p.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        help="resize before the centre crop (default size*256/224)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a line")
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
