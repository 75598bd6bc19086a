"""Overlays, saliency grids, insertion/deletion curves and metric bar charts (matplotlib, no display)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from .preprocess import Preprocess


def to_pixels(image: Tensor, preprocess: Preprocess | None = None) -> np.ndarray:
    """A normalized (C, H, W) image as (H, W, C) floats in [0, 1], undoing ``preprocess`` (the statistics
    the image was normalized with). ``None`` is allowed only for an image already in [0, 1] (pixels): a
    guessed normalization would wash out or darken the picture without a word."""
    image = image.detach().float().cpu()
    if preprocess is None:
        if image.min() < 0 or image.max() > 1:
            raise ValueError(
                f"the image has values in [{image.min():.3g}, {image.max():.3g}] (it is normalized): pass "
                "preprocess= with its statistics (castream.Preprocess(mean, std), e.g. Preprocess() for "
                "ImageNet's)"
            )
        return image.permute(1, 2, 0).numpy()
    return preprocess.denormalize(image).clamp(0, 1).permute(1, 2, 0).numpy()


def overlay(
    image: Tensor, saliency: Tensor, preprocess: Preprocess | None = None, alpha: float = 0.5
) -> np.ndarray:
    """The image with the map in the 'jet' colour map on top: (H, W, 3) floats in [0, 1]."""
    heat = matplotlib.colormaps["jet"](saliency.detach().float().cpu().numpy())[..., :3]
    return (1 - alpha) * to_pixels(image, preprocess) + alpha * heat


def save_overlay(
    path: str | os.PathLike, image: Tensor, saliency: Tensor, preprocess: Preprocess | None = None
) -> None:
    plt.imsave(path, np.clip(overlay(image, saliency, preprocess), 0, 1), format="png")


def saliency_grid(
    path,
    images: Tensor,
    columns: dict[str, Tensor],
    preprocess: Preprocess | None = None,
    titles: Sequence[str] | None = None,
    boxes: Sequence[Sequence[tuple[Sequence[float], str]]] | None = None,
) -> None:
    """Rows = images; first column the input (with ``boxes[r]``: (box, colour) pairs drawn on it), then
    one overlay per named map tensor (B, H, W), at the images' resolution (small images are enlarged by
    an integer factor to at least 128 pixels, so that the titles fit).

    Composed as one image and written with Pillow: a matplotlib grid of many axes takes seconds to lay out,
    draw and resample, and every report writes one."""
    rows, cols = len(images), 1 + len(columns)
    scale = max(1, -(-128 // images.shape[-1]))

    def enlarge(a: np.ndarray) -> np.ndarray:
        return a.repeat(scale, axis=1).repeat(scale, axis=2)

    pixels = enlarge(np.stack([to_pixels(image, preprocess) for image in images]))
    height, width = pixels.shape[1:3]
    gap, top, left = max(2, width // 32), 16, 16 if titles else 0
    canvas = np.full((top + rows * (height + gap), left + cols * (width + gap), 3), 255, np.uint8)
    jet = matplotlib.colormaps["jet"]
    panels = [pixels] + [
        0.5 * pixels + 0.5 * enlarge(jet(maps.detach().float().cpu().numpy())[..., :3])
        for maps in columns.values()
    ]
    for c, panel in enumerate(panels):
        x = left + c * (width + gap)
        for r in range(rows):
            y = top + r * (height + gap)
            canvas[y : y + height, x : x + width] = (np.clip(panel[r], 0, 1) * 255).round()
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    names = ["input" + (" + boxes" if boxes is not None else ""), *columns]
    for c, name in enumerate(names):
        draw.text((left + c * (width + gap) + width / 2, top / 2), name, fill="black", anchor="mm")
    for r in range(rows):
        y = top + r * (height + gap)
        if titles:
            label = Image.new("RGB", (height, left), "white")
            ImageDraw.Draw(label).text((height / 2, left / 2), titles[r], fill="black", anchor="mm")
            picture.paste(label.rotate(90, expand=True), (0, y))
        for box, colour in boxes[r] if boxes is not None else ():
            x0, y0, x1, y1 = (scale * v for v in box)
            rgb = tuple(round(255 * v) for v in matplotlib.colors.to_rgb(colour))
            draw.rectangle((left + x0, y + y0, left + x1 - 1, y + y1 - 1), outline=rgb, width=2)
    picture.save(path, compress_level=1)


def _save(fig, path) -> None:
    """Write a figure as PNG, fast (zlib level 1: the figures are re-written by every report) and close it."""
    fig.savefig(path, dpi=110, pil_kwargs={"compress_level": 1})
    plt.close(fig)


def curves_figure(path, curves: dict[str, dict[str, tuple[list, list]]]) -> None:
    """One panel per kind (insertion, deletion): the mean curve of every (method, pooling) series."""
    kinds = [k for k in ("insertion", "deletion") if k in curves]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for label, (x, y) in curves[kind].items():
            ax.plot(x, y, label=label, linestyle="--" if label.endswith("GAP") else "-")
        ax.set_title(kind)
        ax.set_xlabel("fraction of pixels " + ("inserted" if kind == "insertion" else "deleted"))
        ax.set_ylabel("probability of the target class")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def bars_figure(
    path, values: dict[str, dict[str, tuple[float, float, float]]], metrics: Sequence[str]
) -> None:
    """Grouped bars: for each metric a panel, one bar per series with its confidence interval."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    labels = list(values)
    for ax, metric in zip(axes[0], metrics):
        means = [values[s][metric][0] for s in labels]
        low = [m - values[s][metric][1] for m, s in zip(means, labels)]
        high = [values[s][metric][2] - m for m, s in zip(means, labels)]
        ax.bar(
            range(len(labels)),
            means,
            yerr=[low, high],
            capsize=3,
            color=["#9ab" if s.endswith("GAP") else "#e84" for s in labels],
        )
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(metric)
    fig.tight_layout()
    _save(fig, path)
