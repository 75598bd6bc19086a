"""Overlays, saliency grids, insertion/deletion curves and metric bar charts (matplotlib, no display)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from .preprocess import Preprocess


def to_pixels(image: Tensor, preprocess: Preprocess | None = None) -> np.ndarray:
    """A normalized (C, H, W) image as (H, W, C) floats in [0, 1]."""
    pixels = (preprocess or Preprocess()).denormalize(image.detach().float().cpu()).clamp(0, 1)
    return pixels.permute(1, 2, 0).numpy()


def overlay(
    image: Tensor, saliency: Tensor, preprocess: Preprocess | None = None, alpha: float = 0.5
) -> np.ndarray:
    """The image with the map in the 'jet' colour map on top: (H, W, 3) floats in [0, 1]."""
    heat = matplotlib.colormaps["jet"](saliency.detach().float().cpu().numpy())[..., :3]
    return (1 - alpha) * to_pixels(image, preprocess) + alpha * heat


def save_overlay(
    path: str | os.PathLike, image: Tensor, saliency: Tensor, preprocess: Preprocess | None = None
) -> None:
    plt.imsave(path, np.clip(overlay(image, saliency, preprocess), 0, 1))


def _draw_boxes(ax, boxes: Sequence[tuple[Sequence[float], str]]) -> None:
    for (x0, y0, x1, y1), colour in boxes:
        ax.add_patch(
            matplotlib.patches.Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.2
            )
        )


def saliency_grid(
    path,
    images: Tensor,
    columns: dict[str, Tensor],
    preprocess: Preprocess | None = None,
    titles: Sequence[str] | None = None,
    boxes: Sequence[Sequence[tuple[Sequence[float], str]]] | None = None,
    tile: float = 1.9,
) -> None:
    """Rows = images; first column the input (with ``boxes[r]``: (box, colour) pairs drawn on it), then
    one overlay per named map tensor (B, H, W). ``tile`` is the size of one panel in inches."""
    rows, cols = len(images), 1 + len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(tile * cols, tile * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(to_pixels(images[r], preprocess))
        if boxes is not None:
            _draw_boxes(axes[r, 0], boxes[r])
        axes[r, 0].set_ylabel(titles[r] if titles else "", fontsize=8)
        for c, (name, maps) in enumerate(columns.items(), start=1):
            axes[r, c].imshow(np.clip(overlay(images[r], maps[r], preprocess), 0, 1))
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input" + (" + boxes" if boxes is not None else ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
