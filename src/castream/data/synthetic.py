"""The built-in synthetic benchmark: labelled images whose evidence (boxes, pixel mask) is known exactly.

Each image shows 1-3 instances of its class's shape (disc, square, triangle, star, cross, ring, hexagon,
pentagon, diamond, crescent, arrow, semicircle), anti-aliased, in random colours, sizes and rotations,
on a textured background (smooth noise, stripes or a gradient), with 0-2 distractors (line segments
and waves) that belong to no class. With probability ``bias`` the background hue is the class's own
hue: a context cue a classifier can learn, so users can test whether a method reveals it.

Rendering is deterministic: image ``i`` of a split depends only on ``(seed, split, i)``. ``generate``
writes PNGs in ImageFolder layout (``<root>/<split>/<class>/<i>.png``), the evidence masks as PNGs under
``<root>/masks/``, and ``annotations.json`` with labels and boxes; ``SyntheticShapes.in_memory`` renders
on the fly instead.
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

import numpy as np
from PIL import Image

from .datasets import AnnotatedImages, Sample

SHAPES = (
    "disc", "square", "triangle", "star", "cross", "ring",
    "hexagon", "pentagon", "diamond", "crescent", "arrow", "semicircle",
)  # fmt: skip
SPLITS = {"train": 0, "val": 1}
FORMAT = "castream-synthetic/1"


@dataclass(frozen=True)
class SyntheticConfig:
    classes: int = 10
    size: int = 128
    bias: float = 0.0
    seed: int = 0
    scale: tuple[float, float] = (0.1, 0.2)  # radius of the class shapes, as a fraction of the image size


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


def _place(rng: np.random.Generator, size: int, radius: float, placed: list) -> tuple[float, float] | None:
    for _ in range(30):
        cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
        if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in placed):
            return cx, cy
    return None


def render(config: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, int, list, np.ndarray]:
    """Image ``index`` of ``split``: (RGB uint8 (S, S, 3), label, boxes [[x0, y0, x1, y1], ...],
    evidence mask uint8 (S, S) in {0, 255})."""
    rng = np.random.default_rng([config.seed, SPLITS[split], index])
    size, classes = config.size, config.classes
    label = int(rng.integers(classes))
    biased = rng.random() < config.bias
    hue = label / classes if biased else rng.random()
    image = _background(rng, size, hue)
    evidence = np.zeros((size, size), np.float32)
    placed: list = []
    boxes = []
    instances = [SHAPES[label]] * int(rng.integers(1, 4)) + ["distractor"] * int(rng.integers(0, 3))
    ys, xs = _grid(size)
    for kind in instances:
        radius = rng.uniform(*config.scale) * size if kind != "distractor" else rng.uniform(0.12, 0.25) * size
        center = _place(rng, size, radius, placed)
        if center is None:
            continue
        placed.append((*center, radius))
        cx, cy = center
        angle = rng.uniform(0, 2 * math.pi)
        x0, y0 = max(0, int(cx - radius - 2)), max(0, int(cy - radius - 2))
        x1, y1 = min(size, int(cx + radius + 3)), min(size, int(cy + radius + 3))
        dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
        u = (dx * math.cos(angle) + dy * math.sin(angle)) / radius
        v = (-dx * math.sin(angle) + dy * math.cos(angle)) / radius
        if kind == "distractor":  # a thick line segment or a wave: no class's shape
            wave = 0.35 * np.sin(3 * u) if rng.random() < 0.5 else 0.0
            sdf = np.maximum(np.abs(v - wave) - 0.08, np.abs(u) - 1.0)
            colour = _hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.6, 1.0))
        else:
            sdf = shape_sdf(kind, u, v)
            colour = _hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.65, 1.0))
        cover = _coverage(sdf * radius)
        region = image[y0:y1, x0:x1]
        region += (colour - region) * cover[..., None]
        if kind != "distractor":
            evidence[y0:y1, x0:x1] = np.maximum(evidence[y0:y1, x0:x1], cover)
            rows, cols = np.nonzero(cover > 0.5)
            if len(rows):
                boxes.append(
                    [
                        x0 + int(cols.min()),
                        y0 + int(rows.min()),
                        x0 + int(cols.max()) + 1,
                        y0 + int(rows.max()) + 1,
                    ]
                )
    image += 0.02 * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return pixels, label, boxes, ((evidence > 0.5) * 255).astype(np.uint8)


def _write_range(args: tuple) -> list[dict]:
    config, split, start, stop, root = args
    out = []
    for i in range(start, stop):
        pixels, label, boxes, mask = render(config, split, i)
        name = f"{SHAPES[label]}/{i:06d}.png"
        for folder, array in ((f"{split}/", pixels), (f"masks/{split}/", mask)):
            path = Path(root) / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path, compress_level=1)
        out.append(
            {"file": f"{split}/{name}", "mask": f"masks/{split}/{name}", "label": label, "boxes": boxes}
        )
    return out


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
    workers: int | None = None,
) -> Path:
    """Write the benchmark to ``root`` once and return it; an existing identical set is reused.

    The set is written into a temporary folder next to ``root`` and renamed into place, so an
    interrupted generation leaves nothing half-written.
    """
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"classes must lie in [2, {len(SHAPES)}] (one shape per class), got {classes}")
    if size < 32 or not 0 <= bias <= 1 or train < 0 or val < 0:
        raise ValueError(
            f"need size >= 32, 0 <= bias <= 1 and non-negative counts; got {size}, {bias}, {train}, {val}"
        )
    if not 0 < scale[0] <= scale[1] <= 0.45:
        raise ValueError(
            f"scale must be a (min, max) radius fraction with 0 < min <= max <= 0.45, got {scale}"
        )
    config = SyntheticConfig(classes, size, bias, seed, (float(scale[0]), float(scale[1])))
    root = Path(root)
    expected = {"format": FORMAT, "config": asdict(config), "counts": {"train": train, "val": val}}
    expected = json.loads(json.dumps(expected))  # as stored (tuples become lists)
    annotations = root / "annotations.json"
    if annotations.exists():
        stored = json.loads(annotations.read_text())
        if {k: stored.get(k) for k in expected} == expected:
            return root
        raise FileExistsError(
            f"{root} holds a different synthetic set ({stored.get('config')}); choose another folder"
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
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


class SyntheticShapes(AnnotatedImages):
    """The synthetic benchmark: items ``(image, label, {"boxes": (n, 4), "mask": (H, W)})``.

    ``transform`` is a joint transform of ``(image, target)`` (see ``castream.data.transforms``); boxes
    and the evidence mask follow the image's resize/crop/flip.
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
        document = json.loads(path.read_text())
        if document.get("format") != FORMAT:
            raise ValueError(f"{path} is not a castream synthetic annotation file")
        stored = document["config"]
        self.config = SyntheticConfig(**{**stored, "scale": tuple(stored.get("scale", (0.1, 0.2)))})
        samples = [
            Sample(
                root / e["file"],
                e["label"],
                np.asarray(e["boxes"], np.float32).reshape(-1, 4),
                mask=root / e["mask"],
            )
            for e in document["splits"][split]
        ]
        super().__init__(samples, document["classes"], transform)

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
        transform=None,
    ) -> RenderedShapes:
        """The same images rendered on the fly (nothing written to disk)."""
        config = SyntheticConfig(classes, size, bias, seed, (float(scale[0]), float(scale[1])))
        return RenderedShapes(config, split, count, transform)


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
        pixels, label, boxes, mask = render(self.config, self.split, index)
        sample = Sample(None, label, np.asarray(boxes, np.float32).reshape(-1, 4))
        return Image.fromarray(pixels), sample, mask
