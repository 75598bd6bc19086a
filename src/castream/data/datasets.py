"""Real datasets in their official layouts, all returning ``(image, label, target)``.

``target`` holds ``"boxes"`` (n, 4) as ``(x0, y0, x1, y1)`` pixel coordinates of the *transformed*
image (empty when the dataset has none), ``"box_labels"`` (n,) where boxes of several classes are
annotated (VOC, the synthetic benchmark; :func:`class_boxes` selects one class's), and where the dataset
has a class map (the synthetic benchmark) ``"classes"`` (H, W) (0: no class, ``c + 1``: class ``c``) and
``"mask"`` (H, W), the label's evidence. ``transform`` is a
joint ``torchvision.transforms.v2`` transform of ``(image, target)`` (see ``castream.data.transforms``),
so boxes and masks follow resizing, cropping and flipping. Without a transform the image is a PIL image.

An unreadable image file is reported (a warning naming the path) and its item is ``None``;
:func:`collate` drops such items and counts them, so a long run does not crash on one corrupt file.
"""

from __future__ import annotations

import copy
import os
import pickle
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass
class Sample:
    """One item before loading: where the image is, its label and boxes in original pixel coordinates."""

    path: Path | None
    label: int | Tensor
    boxes: np.ndarray
    box_labels: np.ndarray | None = None
    mask: Path | None = None


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of ``image``. 16- and 32-bit integer images are rescaled from their full range (PIL's
    ``convert`` clips them to 8 bits, i.e. saturates almost everything to white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        gray = np.clip(pixels / scale * 255 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


class Batch(NamedTuple):
    images: Tensor
    labels: Tensor
    targets: list[dict]
    skipped: int


def collate(items: Sequence) -> Batch:
    """Stack images and labels, keep per-image targets in a list, drop (and count) unreadable items.
    Items are castream's ``(image, label, target)`` or any ``(image, label)`` dataset's (torchvision's
    ``ImageFolder``, CIFAR), whose target is then empty."""
    kept = [item for item in items if item is not None]
    if not kept:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), [], len(items))
    lengths = {len(item) if isinstance(item, tuple | list) else None for item in kept}
    if not lengths <= {2, 3}:
        found = ", ".join(sorted(map(str, lengths)))
        raise ValueError(
            "dataset items must be (image, label) or (image, label, target) tuples, got items of "
            f"{found} elements ({type(kept[0]).__name__})"
        )
    images = torch.stack([item[0] for item in kept])
    labels = torch.stack([torch.as_tensor(item[1]) for item in kept])
    targets = [item[2] if len(item) == 3 else {} for item in kept]
    return Batch(images, labels, targets, len(items) - len(kept))


class AnnotatedImages(Dataset):
    """Base of every castream dataset: a list of :class:`Sample` and a joint transform.

    ``annotations`` (True): items carry boxes and class maps. :meth:`without_annotations` gives a view
    whose items carry an empty target, for classification training, which never reads them: no class-map
    PNG is decoded and no box or mask is transformed."""

    annotations: bool = True

    def __init__(self, samples: list[Sample], classes: Sequence[str], transform=None) -> None:
        self.samples = samples
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def without_annotations(self) -> AnnotatedImages:
        """A shallow copy whose items are ``(image, label, {})`` (this dataset is unchanged)."""
        view = copy.copy(self)
        view.annotations = False
        return view

    def load(self, index: int) -> tuple[Image.Image, Sample, np.ndarray | None]:
        """The image (RGB), its sample record and its class map (or None)."""
        sample = self.samples[index]
        with Image.open(sample.path) as f:
            image = to_rgb(f)
        mask = None
        if sample.mask is not None and self.annotations:
            with Image.open(sample.mask) as f:
                mask = np.asarray(f.convert("L"))
        return image, sample, mask

    def try_item(self, index: int) -> tuple[tuple | None, str | None]:
        """``(item, None)``, or ``(None, reason)`` for an unreadable image. Issues no warning, so a loader
        thread can call it (``warnings.catch_warnings`` is not thread-safe)."""
        try:
            image, sample, mask = self.load(index)
        except (
            OSError,
            UnidentifiedImageError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
        ) as err:
            return None, f"skipping unreadable image {self.samples[index].path}: {err}"
        if not self.annotations:
            if self.transform is not None:
                image, _ = self.transform(image, {})
            return (image, sample.label, {}), None
        size = (image.height, image.width)
        target: dict = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=size,
            )
        }
        if sample.box_labels is not None:
            target["box_labels"] = torch.as_tensor(sample.box_labels, dtype=torch.long)
        if mask is not None:
            classes = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
            target["classes"] = tv_tensors.Mask(classes)
            target["mask"] = tv_tensors.Mask(classes == int(sample.label) + 1)
        if self.transform is not None:
            image, target = self.transform(image, target)
        target = {k: v.as_subclass(Tensor) for k, v in target.items()}
        if "mask" in target:
            target["mask"] = target["mask"].float()
        return (image, sample.label, target), None

    def __getitem__(self, index: int):
        item, reason = self.try_item(index)
        if item is None:
            warnings.warn(reason, stacklevel=2)
        return item


def class_boxes(target: dict, cls: int) -> Tensor:
    """The boxes (n, 4) of class ``cls`` in a dataset target: those whose ``box_labels`` equal ``cls``, or
    every box when the target has no ``box_labels`` (a single-class annotation)."""
    boxes = target["boxes"]
    if "box_labels" not in target:
        return boxes
    return boxes[torch.as_tensor(target["box_labels"], device=boxes.device) == int(cls)]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"expected {what} at {path}")
    return path


def _folder_samples(folder: Path, classes: Sequence[str]) -> list[Sample]:
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(
                f"class folder {folder / name} contains no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [Sample(p, label, np.zeros((0, 4), np.float32)) for p in files]
    return samples


def _class_folders(folder: Path) -> list[str]:
    _require(folder, "a folder with one sub-folder per class (ImageFolder layout)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders (ImageFolder layout: {folder}/<class>/<image>)")
    return classes


class ImageFolder(AnnotatedImages):
    """Any ``root/<class>/<image>`` folder (classes sorted by name)."""

    def __init__(self, root: str | os.PathLike, transform=None) -> None:
        root = Path(root)
        classes = _class_folders(root)
        super().__init__(_folder_samples(root, classes), classes, transform)


UNLABELLED = -1  # the label of an image without one (ImageFiles)


class ImageFiles(AnnotatedImages):
    """A flat folder of images without labels (``images:DIR``; sub-folders included, sorted): explained
    at the model's predicted class (``targets="predicted"``)."""

    def __init__(self, root: str | os.PathLike, transform=None) -> None:
        root = _require(Path(root), "a folder of images")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        super().__init__([Sample(p, UNLABELLED, np.zeros((0, 4), np.float32)) for p in files], [], transform)


class CSVImages(AnnotatedImages):
    """Images listed in a CSV file with a header ``path,label[,boxes]`` (``csv:FILE``): ``path`` relative to
    the file's folder (or absolute); ``label`` a class name (classes are the sorted distinct labels, which
    a class map or the model's names match to its outputs; integers are the model's class indices);
    ``boxes`` optional, ``x0 y0 x1 y1`` in the image's pixels, several separated by ``;``."""

    def __init__(self, path: str | os.PathLike, transform=None) -> None:
        import csv

        path = _require(Path(path), "a CSV file with a header path,label[,boxes]")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "path" not in fields or "label" not in fields:
                raise ValueError(
                    f"{path}: the header must name the columns path,label[,boxes]; found {fields}"
                )
            rows = list(reader)
        if not rows:
            raise ValueError(f"{path} lists no images")
        labels = [row["label"].strip() for row in rows]
        if any(not label for label in labels):
            raise ValueError(f"{path}: row {labels.index('') + 2} has an empty label")
        numeric = all(label.isdigit() for label in labels)
        classes = [str(i) for i in range(max(map(int, labels)) + 1)] if numeric else sorted(set(labels))
        index = {name: i for i, name in enumerate(classes)}
        samples = []
        for line, (row, label) in enumerate(zip(rows, labels), start=2):
            image = Path(row["path"])
            image = image if image.is_absolute() else path.parent / image
            samples.append(Sample(image, index[label], _csv_boxes(row.get("boxes") or "", path, line)))
        super().__init__(samples, classes, transform)


def _csv_boxes(text: str, path: Path, line: int) -> np.ndarray:
    try:
        boxes = [[float(v) for v in box.split()] for box in text.split(";") if box.strip()]
    except ValueError:
        boxes = [[]]
    if any(len(b) != 4 or b[2] <= b[0] or b[3] <= b[1] for b in boxes):
        raise ValueError(f"{path} line {line}: boxes must be 'x0 y0 x1 y1' (x1 > x0, y1 > y0), ';'-separated")
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def voc_boxes(xml: Path, names: set[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Boxes of a Pascal-VOC-format XML file (also ImageNet's): 1-based inclusive pixel indices converted
    to ``(x0, y0, x1, y1)`` with exclusive ends; only objects named in ``names`` when given."""
    root = ET.parse(xml).getroot()
    boxes, labels = [], []
    for obj in root.iter("object"):
        name = obj.findtext("name", "").strip()
        if names is not None and name not in names:
            continue
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml}: object {name!r} has no <bndbox>")
        x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x0 - 1, y0 - 1, x1, y1])
        labels.append(name)
    return np.asarray(boxes, np.float32).reshape(-1, 4), labels


class ImageNet(AnnotatedImages):
    """ILSVRC-2012 in ImageFolder layout: ``root/{train,val}/<wnid>/<image>.JPEG``.

    ``boxes``: the folder of the official per-image bounding-box XML files (e.g.
    ``ILSVRC/Annotations/CLS-LOC/val``, files ``ILSVRC2012_val_00000001.xml``); each image gets the
    boxes of its own class. Images without an XML file get no boxes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val",
        transform=None,
        boxes: str | os.PathLike | None = None,
    ) -> None:
        folder = Path(root) / split
        classes = _class_folders(folder)
        samples = _folder_samples(folder, classes)
        if boxes is not None:
            boxes = _require(Path(boxes), "the folder of ImageNet bounding-box XML files")
            for s in samples:
                xml = boxes / f"{s.path.stem}.xml"
                if xml.exists():
                    s.boxes, _ = voc_boxes(xml, {classes[s.label]})
        super().__init__(samples, classes, transform)


class CUB200(AnnotatedImages):
    """CUB-200-2011 from its official files (``images.txt``, ``image_class_labels.txt``,
    ``train_test_split.txt``, ``bounding_boxes.txt``, ``classes.txt``, ``images/``); split train/test."""

    FILES = (
        "images.txt",
        "image_class_labels.txt",
        "train_test_split.txt",
        "bounding_boxes.txt",
        "classes.txt",
    )

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"CUB-200-2011 splits are 'train' and 'test', got {split!r}")
        root = Path(root)
        tables = {}
        for name in self.FILES:
            lines = _require(root / name, f"the official CUB-200-2011 file {name}").read_text().split("\n")
            tables[name] = dict(line.split(" ", 1) for line in lines if line.strip())
        images = tables["images.txt"]
        for name in self.FILES[1:4]:
            if set(tables[name]) != set(images):
                missing = sorted(set(images) ^ set(tables[name]), key=int)[:5]
                raise ValueError(
                    f"{root / name} does not list the same image ids as images.txt (e.g. {missing})"
                )
        classes = [tables["classes.txt"][k].strip() for k in sorted(tables["classes.txt"], key=int)]
        samples = []
        for key in sorted(images, key=int):
            if (tables["train_test_split.txt"][key].strip() == "1") != (split == "train"):
                continue
            x, y, w, h = (float(v) for v in tables["bounding_boxes.txt"][key].split())
            samples.append(
                Sample(
                    root / "images" / images[key].strip(),
                    int(tables["image_class_labels.txt"][key]) - 1,
                    np.array([[x, y, x + w, y + h]], np.float32),
                )
            )
        super().__init__(samples, classes, transform)


class VOC2012(AnnotatedImages):
    """Pascal VOC 2012 classification: ``root`` = ``VOCdevkit/VOC2012`` with ``JPEGImages/``,
    ``Annotations/`` and ``ImageSets/Main/{train,val,trainval}.txt``. Labels are 20-way multi-hot
    (an image is positive for every class with an object in its XML, difficult ones included); the
    target also has every object's box with ``box_labels``."""

    def __init__(self, root: str | os.PathLike, split: str = "val", transform=None) -> None:
        root = Path(root)
        ids = _require(
            root / "ImageSets" / "Main" / f"{split}.txt", f"the official VOC list for split {split!r}"
        )
        samples = []
        for image_id in ids.read_text().split():
            xml = _require(root / "Annotations" / f"{image_id}.xml", "a VOC annotation file")
            boxes, names = voc_boxes(xml)
            unknown = set(names) - set(VOC_CLASSES)
            if unknown:
                raise ValueError(f"{xml} names unknown classes {sorted(unknown)}")
            box_labels = np.array([VOC_CLASSES.index(n) for n in names], np.int64)
            label = torch.zeros(len(VOC_CLASSES))
            label[torch.as_tensor(box_labels, dtype=torch.long)] = 1
            samples.append(Sample(root / "JPEGImages" / f"{image_id}.jpg", label, boxes, box_labels))
        super().__init__(samples, VOC_CLASSES, transform)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers, bytes, numbers and numpy arrays; refuses every other global (the way a
    malicious pickle runs code is by naming one, e.g. ``os.system``, and calling it)."""

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: the official files hold only dicts, lists, bytes and "
            "numpy arrays"
        )


def _load_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"cannot read {path} as an official CIFAR-100 file: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not an official CIFAR-100 file (expected a dict, got {type(data).__name__})"
        )
    return data


class CIFAR100(AnnotatedImages):
    """CIFAR-100 from a local copy of the official *python version* (``cifar-100-python/{train,test,meta}``).

    These files are Python pickles. A pickle can run arbitrary code when loaded, so they are read with a
    restricted unpickler that builds only what the official files hold (dicts, lists, bytes, numbers and
    numpy arrays) and refuses any other object with an error naming the file.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"CIFAR-100 splits are 'train' and 'test', got {split!r}")
        root = Path(root)
        folder = root if (root / "meta").exists() else root / "cifar-100-python"
        data = _load_cifar_pickle(_require(folder / split, "the official CIFAR-100 python file"))
        meta = _load_cifar_pickle(_require(folder / "meta", "the official CIFAR-100 meta file"))
        try:
            pixels = np.asarray(data[b"data"], np.uint8)
            labels = list(data[b"fine_labels"])
            names = meta[b"fine_label_names"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{folder}: not an official CIFAR-100 python file (missing {err})") from None
        if len(pixels) != len(labels):
            raise ValueError(f"{folder / split}: {len(pixels)} images but {len(labels)} labels")
        self.pixels = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        classes = [n.decode() for n in names]
        empty = np.zeros((0, 4), np.float32)
        super().__init__([Sample(None, int(y), empty) for y in labels], classes, transform)

    def load(self, index: int):
        return Image.fromarray(self.pixels[index]), self.samples[index], None


class MIT67(AnnotatedImages):
    """MIT Indoor Scenes (67 classes): ``root/Images/<class>/<image>`` with the official
    ``TrainImages.txt`` / ``TestImages.txt`` lists."""

    def __init__(self, root: str | os.PathLike, split: str = "test", transform=None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"MIT-67 splits are 'train' and 'test', got {split!r}")
        root = Path(root)
        classes = _class_folders(root / "Images")
        listing = _require(root / f"{split.capitalize()}Images.txt", "the official MIT-67 split list")
        empty = np.zeros((0, 4), np.float32)
        samples = []
        for line in listing.read_text().split():
            name = line.split("/")[0]
            if name not in classes:
                raise ValueError(
                    f"{listing} lists {line!r}, whose class folder is missing from {root / 'Images'}"
                )
            samples.append(Sample(root / "Images" / line, classes.index(name), empty))
        super().__init__(samples, classes, transform)
