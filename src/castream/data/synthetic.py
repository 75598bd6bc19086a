"""The built-in synthetic benchmark: scenes whose evidence for every class is known exactly.

Each image is labelled with one class, drawn as 1-2 instances of that class's shape (disc, square,
triangle, star, cross, ring, hexagon, pentagon, diamond, crescent, arrow, semicircle), anti-aliased, in
random colours, sizes and rotations, on a textured background (smooth noise, stripes or a gradient).
Like an ImageNet photo, a scene also holds evidence of *other* classes: with probability ``others`` it
has 1..n instances of other classes (n = the number of labelled instances), each at most as large
(70-100% of the radius of the smallest labelled instance), half of them allowed to slip partly under a
labelled one.
1-3 clutter strokes (lines and waves, no class) are drawn on top and occlude whatever lies below. The
label is the class with the largest visible evidence: another class whose visible area would exceed
``DOMINANCE`` times the label's is dropped from the scene. So the classifier's probability is shared
between the classes present, and a map that keeps the label's shapes and hides the others can raise it.

Ground truth for every class present: one box per visible instance (``boxes`` with ``box_labels``) and a
class map (0 where no class is visible, ``c + 1`` where class ``c`` is the visible, top-most layer) that
accounts for occlusion. With probability ``bias`` the background hue is the class's own hue: a context
cue a classifier can learn, so users can test whether a method reveals it.

Rendering is deterministic: image ``i`` of a split depends only on ``(seed, split, i)`` and the config.
``generate`` writes PNGs in ImageFolder layout (``<root>/<split>/<class>/<i>.png``), the class maps as
PNGs under ``<root>/masks/``, and ``annotations.json`` (format ``FORMAT``, config, labels, boxes);
``SyntheticShapes.in_memory`` renders on the fly instead.
"""

from __future__ import annotations

import colorsys
import functools
import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..utils import check_int
from .datasets import AnnotatedImages, Sample

SHAPES = (
    "disc", "square", "triangle", "star", "cross", "ring",
    "hexagon", "pentagon", "diamond", "crescent", "arrow", "semicircle",
)  # fmt: skip
SPLITS = {"train": 0, "val": 1}
FORMAT = "castream-synthetic/2"  # /1: single-class scenes, a binary evidence mask
OTHER_SCALE = (0.7, 1.0)  # radius of another class's instance / the smallest labelled instance's radius
OVERLAP = 0.35  # the part of the summed radii by which an occluded other-class instance may overlap
DOMINANCE = 0.9  # another class may show at most this fraction of the label's visible area
CLUTTER = (1, 4)  # clutter strokes per image: 1-3
NOISE = 0.03  # standard deviation of the pixel noise (RGB in [0, 1])


@dataclass(frozen=True)
class SyntheticConfig:
    classes: int = 10
    size: int = 128
    bias: float = 0.0
    seed: int = 0
    scale: tuple[float, float] = (0.1, 0.2)  # radius of the labelled shapes, as a fraction of the image size
    others: float = 0.75  # probability that a scene also holds instances of other classes


# --- signed distance functions in a shape's unit frame (radius ~1) --------------------------------------


def _polygon(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance to a closed polygon (negative inside)."""
    vx, vy = verts[:, 0], verts[:, 1]
    d = (u - vx[0]) ** 2 + (v - vy[0]) ** 2
    sign = np.ones_like(u)
    j = len(verts) - 1
    for i in range(len(verts)):
        ex, ey = vx[j] - vx[i], vy[j] - vy[i]
        wx, wy = u - vx[i], v - vy[i]
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.minimum(d, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        above, below, left = v >= vy[i], v < vy[j], ex * wy > ey * wx
        sign = np.where((above & below & left) | (~above & ~below & ~left), -sign, sign)
        j = i
    return sign * np.sqrt(d)


def _regular(n: int, radius: float = 1.0, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular polygon, or of a star when ``inner`` radius is given."""
    count = 2 * n if inner else n
    angles = -math.pi / 2 + np.arange(count) * 2 * math.pi / count
    radii = np.where(np.arange(count) % 2 == 1, inner, radius) if inner else np.full(count, radius)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _box(u: np.ndarray, v: np.ndarray, hw: float, hh: float) -> np.ndarray:
    qx, qy = np.abs(u) - hw, np.abs(v) - hh
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


_ARROW = np.array([[-1.0, -0.3], [0.2, -0.3], [0.2, -0.75], [1.0, 0.0], [0.2, 0.75], [0.2, 0.3], [-1.0, 0.3]])


def shape_sdf(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.hypot(u, v)
    if kind == "disc":
        return r - 0.9
    if kind == "ring":
        return np.abs(r - 0.7) - 0.25
    if kind == "square":
        return _box(u, v, 0.75, 0.75)
    if kind == "cross":
        return np.minimum(_box(u, v, 0.95, 0.3), _box(u, v, 0.3, 0.95))
    if kind == "crescent":
        return np.maximum(r - 0.95, -(np.hypot(u - 0.45, v) - 0.75))
    if kind == "semicircle":
        return np.maximum(r - 1.0, v - 0.15)
    verts = {
        "triangle": _regular(3),
        "star": _regular(5, 1.0, 0.45),
        "hexagon": _regular(6, 0.95),
        "pentagon": _regular(5, 0.95),
        "diamond": np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]]),
        "arrow": _ARROW,
    }[kind]
    return _polygon(u, v, verts)


# --- rendering ---------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (read-only, shared)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _background(rng: np.random.Generator, size: int, hue: float) -> np.ndarray:
    kind = rng.integers(3)
    c1 = _hsv(hue, rng.uniform(0.2, 0.7), rng.uniform(0.15, 0.45))
    c2 = _hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.2, 0.7), rng.uniform(0.25, 0.55))
    ys, xs = (g / size for g in _grid(size))
    if kind == 0:  # smooth noise
        low = rng.random((max(2, size // 16), max(2, size // 16))).astype(np.float32)
        t = np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR))
    elif kind == 1:  # stripes
        angle, freq = rng.uniform(0, math.pi), rng.uniform(3, 9)
        t = 0.5 + 0.5 * np.sin(
            2 * math.pi * freq * (xs * math.cos(angle) + ys * math.sin(angle)) + rng.uniform(0, 6)
        )
    else:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c1 + (c2 - c1) * t[..., None]


def _coverage(sdf_pixels: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a pixel from its signed distance in pixels."""
    return np.clip(0.5 - sdf_pixels, 0.0, 1.0)


def _place(
    rng: np.random.Generator, size: int, radius: float, placed: list, overlap: float = 0.0
) -> tuple[float, float] | None:
    """A centre whose disc keeps ``(1 - overlap)`` of the summed radii away from every placed one."""
    for _ in range(30):
        cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
        if all(math.hypot(cx - x, cy - y) > (radius + r) * (1 - overlap) + 2 for x, y, r in placed):
            return cx, cy
    return None


class Scene(NamedTuple):
    """One rendered image and its ground truth."""

    pixels: np.ndarray  # (S, S, 3) uint8 RGB
    label: int
    boxes: np.ndarray  # (n, 4) float32, one per visible class instance, (x0, y0, x1, y1) exclusive ends
    box_labels: np.ndarray  # (n,) int64, the class of each box
    classes: np.ndarray  # (S, S) uint8: 0 where no class is visible, c + 1 where class c is
    colours: np.ndarray  # (n, 3) float32 RGB in [0, 1] of each boxed instance


@dataclass
class _Layer:
    cover: np.ndarray  # (S, S) anti-aliased coverage
    colour: np.ndarray
    cls: int  # -1 for clutter


def _shape_layer(rng, size: int, kind: str, radius: float, center, colour, cls: int) -> _Layer:
    """A shape (or a clutter stroke when ``kind == "clutter"``) as a full-size coverage layer."""
    ys, xs = _grid(size)
    cx, cy = center
    angle = rng.uniform(0, 2 * math.pi)
    x0, y0 = max(0, int(cx - radius - 2)), max(0, int(cy - radius - 2))
    x1, y1 = min(size, int(cx + radius + 3)), min(size, int(cy + radius + 3))
    dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / radius
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / radius
    if kind == "clutter":  # a thick line segment or a wave: no class's shape
        wave = 0.35 * np.sin(3 * u) if rng.random() < 0.5 else 0.0
        sdf = np.maximum(np.abs(v - wave) - 0.1, np.abs(u) - 1.0)
    else:
        sdf = shape_sdf(kind, u, v)
    cover = np.zeros((size, size), np.float32)
    cover[y0:y1, x0:x1] = _coverage(sdf * radius)
    return _Layer(cover, colour, cls)


def _visible(layers: list[_Layer]) -> list[np.ndarray]:
    """Per layer, the coverage left visible by the layers drawn after it (alpha compositing)."""
    remaining = np.ones_like(layers[0].cover)
    out = []
    for layer in reversed(layers):
        out.append(layer.cover * remaining)
        remaining = remaining * (1 - layer.cover)
    return out[::-1]


def _layers(config: SyntheticConfig, rng: np.random.Generator, label: int) -> list[_Layer]:
    """The scene's layers in drawing order: other classes, then the labelled class, then clutter."""
    size = config.size
    radii = [rng.uniform(*config.scale) * size for _ in range(int(rng.integers(1, 3)))]
    n_other = int(rng.integers(1, len(radii) + 1)) if rng.random() < config.others else 0
    other_classes = [c for c in range(config.classes) if c != label]
    placed: list = []
    labelled = []
    for radius in radii:
        center = _place(rng, size, radius, placed)
        if center is not None:
            placed.append((*center, radius))
            colour = _hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.65, 1.0))
            labelled.append(_shape_layer(rng, size, SHAPES[label], radius, center, colour, label))
    others = []
    for _ in range(n_other):
        cls = other_classes[int(rng.integers(len(other_classes)))]
        radius = rng.uniform(*OTHER_SCALE) * min(radii)
        center = _place(rng, size, radius, placed, overlap=OVERLAP if rng.random() < 0.5 else 0.0)
        if center is not None:
            placed.append((*center, radius))
            colour = _hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.65, 1.0))
            others.append(_shape_layer(rng, size, SHAPES[cls], radius, center, colour, cls))
    clutter = []
    for _ in range(int(rng.integers(*CLUTTER))):
        radius = rng.uniform(0.12, 0.25) * size
        center = rng.uniform(radius * 0.5, size - radius * 0.5, 2)
        colour = _hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.6, 1.0))
        clutter.append(_shape_layer(rng, size, "clutter", radius, center, colour, -1))
    return others + labelled + clutter


def render(config: SyntheticConfig, split: str, index: int) -> Scene:
    """Image ``index`` of ``split`` with its per-class ground truth (see the module docstring)."""
    rng = np.random.default_rng([config.seed, SPLITS[split], index])
    size, classes = config.size, config.classes
    label = int(rng.integers(classes))
    biased = rng.random() < config.bias
    image = _background(rng, size, label / classes if biased else rng.random())
    layers = _layers(config, rng, label)
    while True:  # the label must stay the most visible class: drop any other class that rivals it
        visible = _visible(layers)
        area = {
            c: sum(float((v > 0.5).sum()) for v, l in zip(visible, layers) if l.cls == c)
            for c in range(classes)
        }
        rivals = [c for c in area if c != label and area[c] > DOMINANCE * area[label]]
        if not rivals:
            break
        layers = [layer for layer in layers if layer.cls not in rivals]
    class_map = np.zeros((size, size), np.uint8)
    boxes, box_labels, colours = [], [], []
    for layer, seen in zip(layers, visible):
        image += (layer.colour - image) * layer.cover[..., None]
        rows, cols = np.nonzero(seen > 0.5)
        if layer.cls < 0 or not len(rows):
            continue
        class_map[seen > 0.5] = layer.cls + 1
        boxes.append([int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1])
        box_labels.append(layer.cls)
        colours.append(layer.colour)
    image += NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    return Scene(
        (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8),
        label,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(box_labels, np.int64),
        class_map,
        np.asarray(colours, np.float32).reshape(-1, 3),
    )


def _write_range(args: tuple) -> list[dict]:
    config, split, start, stop, root = args
    out = []
    for i in range(start, stop):
        scene = render(config, split, i)
        name = f"{SHAPES[scene.label]}/{i:06d}.png"
        for folder, array in ((f"{split}/", scene.pixels), (f"masks/{split}/", scene.classes)):
            path = Path(root) / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path, compress_level=1)
        out.append(
            {
                "file": f"{split}/{name}",
                "mask": f"masks/{split}/{name}",
                "label": scene.label,
                "boxes": scene.boxes.astype(int).tolist(),
                "box_labels": scene.box_labels.tolist(),
            }
        )
    return out


def _read_annotations(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the synthetic annotation file {path}: {err}") from None
    if not isinstance(document, dict) or not str(document.get("format", "")).startswith(
        "castream-synthetic/"
    ):
        raise ValueError(f"{path} is not a castream synthetic annotation file")
    if document["format"] != FORMAT:
        raise ValueError(
            f"{path} holds a synthetic set of format {document['format']!r}, written by an older castream; "
            f"this version reads {FORMAT!r} (scenes with several classes and per-class ground truth). "
            "Generate a new set into another folder with castream.data.synthetic.generate or `castream synth`"
        )
    return document


def make_config(
    classes: int = 10,
    size: int = 128,
    bias: float = 0.0,
    seed: int = 0,
    scale: tuple[float, float] = (0.1, 0.2),
    others: float = 0.75,
) -> SyntheticConfig:
    """A validated :class:`SyntheticConfig`."""
    classes, size, seed = (
        check_int("classes", classes, 2),
        check_int("size", size, 32),
        check_int("seed", seed, 0),
    )
    if classes > len(SHAPES):
        raise ValueError(f"classes must lie in [2, {len(SHAPES)}] (one shape per class), got {classes}")
    for name, value in (("bias", bias), ("others", others)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 0.45:
        raise ValueError(
            f"scale must be a (min, max) radius fraction with 0 < min <= max <= 0.45, got {scale}"
        )
    return SyntheticConfig(
        classes, size, float(bias), seed, (float(scale[0]), float(scale[1])), float(others)
    )


def generate(
    root: str | os.PathLike,
    *,
    classes: int = 10,
    train: int = 10_000,
    val: int = 1_000,
    size: int = 128,
    bias: float = 0.0,
    seed: int = 0,
    scale: tuple[float, float] = (0.1, 0.2),
    others: float = 0.75,
    workers: int | None = None,
) -> Path:
    """Write the benchmark to ``root`` once and return it; an existing identical set is reused.

    The set is written into a temporary folder next to ``root`` and renamed into place, so an
    interrupted generation leaves nothing half-written. ``root`` must not exist, be empty, or hold this
    very set: a folder with other contents (another set, or files castream did not write) is refused and
    never modified.
    """
    config = make_config(classes, size, bias, seed, scale, others)
    train, val = check_int("train", train, 0), check_int("val", val, 0)
    if workers is not None:
        workers = check_int("workers", workers, 1)
    root = Path(root)
    expected = {"format": FORMAT, "config": asdict(config), "counts": {"train": train, "val": val}}
    expected = json.loads(json.dumps(expected))  # as stored (tuples become lists)
    annotations = root / "annotations.json"
    if annotations.exists():
        stored = _read_annotations(annotations)
        if {k: stored.get(k) for k in expected} == expected:
            return root
        raise FileExistsError(
            f"{root} holds a different synthetic set ({stored.get('config')}, "
            f"counts {stored.get('counts')}); choose another folder"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists and is not empty, and it is not a castream synthetic set (no annotations.json); "
            "castream will not write into it: choose a new or empty folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        workers = workers or min(os.cpu_count() or 1, 8)
        jobs = []
        for split, count in (("train", train), ("val", val)):
            chunk = max(1, math.ceil(count / (4 * workers)))
            jobs += [(config, split, s, min(s + chunk, count), str(tmp)) for s in range(0, count, chunk)]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(workers) as pool:
                parts = list(pool.map(_write_range, jobs))
        else:
            parts = [_write_range(job) for job in jobs]
        splits: dict[str, list] = {"train": [], "val": []}
        for job, part in zip(jobs, parts):
            splits[job[1]] += part
        document = {**expected, "classes": list(SHAPES[:classes]), "splits": splits}
        (tmp / "annotations.json").write_text(json.dumps(document))
        if root.exists():
            root.rmdir()  # empty (checked above); rmdir refuses anything else
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


class SyntheticShapes(AnnotatedImages):
    """The synthetic benchmark: items ``(image, label, target)``.

    ``target`` holds ``"boxes"`` (n, 4) of every visible class instance with their ``"box_labels"`` (n,),
    ``"classes"`` (H, W) the class map (0: no class, ``c + 1``: class ``c``) and ``"mask"`` (H, W) the
    label's evidence (``classes == label + 1``). ``transform`` is a joint transform of ``(image, target)``
    (see ``castream.data.transforms``): boxes and maps follow the image's resize/crop/flip. Use
    :func:`castream.data.class_boxes` for the boxes of one class.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        root = Path(root)
        path = root / "annotations.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"expected {path}: generate the benchmark with castream.data.synthetic.generate "
                "or `castream synth`"
            )
        document = _read_annotations(path)
        try:
            stored = document["config"]
            self.config = SyntheticConfig(**{**stored, "scale": tuple(stored["scale"])})
            samples = [
                Sample(
                    root / e["file"],
                    int(e["label"]),
                    np.asarray(e["boxes"], np.float32).reshape(-1, 4),
                    np.asarray(e["box_labels"], np.int64),
                    mask=root / e["mask"],
                )
                for e in document["splits"][split]
            ]
            names = document["classes"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} is corrupt ({type(err).__name__}: {err})") from None
        super().__init__(samples, names, transform)

    @classmethod
    def in_memory(
        cls,
        split: str = "val",
        *,
        count: int = 1000,
        classes: int = 10,
        size: int = 128,
        bias: float = 0.0,
        seed: int = 0,
        scale: tuple[float, float] = (0.1, 0.2),
        others: float = 0.75,
        transform=None,
    ) -> RenderedShapes:
        """The same images rendered on the fly (nothing written to disk)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        config = make_config(classes, size, bias, seed, scale, others)
        return RenderedShapes(config, split, check_int("count", count, 0), transform)


class RenderedShapes(AnnotatedImages):
    """Synthetic images rendered at access time (see :meth:`SyntheticShapes.in_memory`)."""

    def __init__(self, config: SyntheticConfig, split: str, count: int, transform=None) -> None:
        self.config, self.split = config, split
        super().__init__(
            [Sample(None, -1, np.zeros((0, 4), np.float32))] * count,
            list(SHAPES[: config.classes]),
            transform,
        )

    def load(self, index: int):
        scene = render(self.config, self.split, index)
        sample = Sample(None, scene.label, scene.boxes, scene.box_labels)
        return Image.fromarray(scene.pixels), sample, scene.classes
