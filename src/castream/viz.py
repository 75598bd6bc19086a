"""Pictures of saliency maps: figures for notebooks and papers, overlays as images, the report's grid,
curves and bar charts.

Everything is drawn on ``matplotlib.figure.Figure`` objects, never through pyplot's global state, and the
backend is never changed: in Jupyter a returned figure shows itself (it renders its own PNG, without
pyplot), ``plt.show()`` keeps working, and a headless server needs no display. Maps use a perceptually
uniform colour map (``inferno``) by default; ``cmap="jet"`` gives the traditional look.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.colors
import matplotlib.patches
import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .preprocess import Preprocess

CMAP = "inferno"


class _Figure(Figure):
    """A figure that a notebook shows as a PNG when it is a cell's value: without pyplot, no backend
    registers a display formatter for figures."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=self.dpi)
        return buffer.getvalue()


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


def _pixels(image: Tensor | Image.Image | np.ndarray, preprocess: Preprocess | None) -> np.ndarray:
    """(H, W, 3) floats in [0, 1] from a normalized tensor, a PIL image or a uint8/float array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    if isinstance(image, np.ndarray):
        return image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
    return to_pixels(image, preprocess)


def _heat(saliency: Tensor | np.ndarray, cmap: str) -> np.ndarray:
    values = saliency.detach().float().cpu().numpy() if isinstance(saliency, Tensor) else np.asarray(saliency)
    return matplotlib.colormaps[cmap](np.clip(values, 0, 1))[..., :3]


def _placed(pixels: np.ndarray, saliency, region: Sequence[float] | None) -> np.ndarray:
    """The map resized onto ``region`` (x0, y0, x1, y1) of the image (the whole image by default), NaN
    elsewhere: a centre-cropped model input shown on the full photograph."""
    height, width = pixels.shape[:2]
    values = saliency.detach().float().cpu().numpy() if isinstance(saliency, Tensor) else np.asarray(saliency)
    x0, y0, x1, y1 = (0, 0, width, height) if region is None else (round(v) for v in region)
    resized = Image.fromarray(values.astype(np.float32), mode="F").resize((x1 - x0, y1 - y0), Image.BILINEAR)
    placed = np.full((height, width), np.nan, dtype=np.float32)
    placed[y0:y1, x0:x1] = np.asarray(resized)
    return placed


def overlay(
    image: Tensor,
    saliency: Tensor,
    preprocess: Preprocess | None = None,
    alpha: float = 0.5,
    cmap: str = CMAP,
) -> np.ndarray:
    """The image with the map in ``cmap`` on top: (H, W, 3) floats in [0, 1] (an array to compute with;
    :func:`overlay_image` and :func:`figure` give pictures)."""
    return (1 - alpha) * to_pixels(image, preprocess) + alpha * _heat(saliency, cmap)


def figure(
    images: Tensor | Sequence,
    maps: Tensor | Mapping[str, Tensor],
    *,
    preprocess: Preprocess | None = None,
    names: Sequence[str] | None = None,
    probabilities: Sequence[float] | None = None,
    regions: Sequence[Sequence[float] | None] | None = None,
    cmap: str = CMAP,
    alpha: float = 0.5,
    size: float = 2.6,
) -> Figure:
    """A figure: one row per image, the input then one overlay per map set, with a colour bar.

    ``images``: a normalized batch (with ``preprocess``), or PIL images / arrays of the full photographs.
    ``maps``: ``(B, H, W)`` in [0, 1], or ``{title: maps}`` for several methods side by side.
    ``names`` and ``probabilities`` title each row (the explained class and its probability).
    ``regions``: where each map lies on its image (x0, y0, x1, y1) when the model saw a crop of it."""
    columns = dict(maps) if isinstance(maps, Mapping) else {"saliency": maps}
    rows = len(images)
    fig = _Figure(figsize=(size * (1 + len(columns)) + 0.6, size * rows), layout="constrained")
    axes = fig.subplots(rows, 1 + len(columns), squeeze=False)
    shown = None
    for r in range(rows):
        pixels = _pixels(images[r], preprocess)
        region = regions[r] if regions is not None else None
        axes[r, 0].imshow(pixels)
        label = names[r] if names is not None else ""
        if probabilities is not None:
            label += f" (p = {probabilities[r]:.2f})"
        axes[r, 0].set_title(label or "input", fontsize=9)
        for c, (title, batch) in enumerate(columns.items(), start=1):
            ax = axes[r, c]
            ax.imshow(pixels)
            shown = ax.imshow(
                _placed(pixels, batch[r], region),
                cmap=cmap,
                vmin=0,
                vmax=1,
                alpha=alpha,
                interpolation="bilinear",
            )
            if region is not None:
                x0, y0, x1, y1 = region
                ax.add_patch(
                    matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=1)
                )
            if r == 0:
                ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes[:, -1].tolist(), shrink=0.8, label="saliency (0 = least, 1 = most)")
    return fig


def to_image(fig: Figure, dpi: int = 110) -> Image.Image:
    """A figure rendered as a PIL image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def overlay_image(
    image: Tensor | Image.Image | np.ndarray,
    saliency: Tensor,
    *,
    preprocess: Preprocess | None = None,
    name: str | None = None,
    probability: float | None = None,
    region: Sequence[float] | None = None,
    title: str = "saliency",
    cmap: str = CMAP,
    alpha: float = 0.5,
) -> Image.Image:
    """One image and its map as a PIL image: the photograph, the overlay (``title``: the method) with a
    colour bar, titled by the class ``name`` and its ``probability`` (see :func:`figure`)."""
    fig = figure(
        [image],
        {title: saliency[None] if isinstance(saliency, Tensor) else [saliency]},
        preprocess=preprocess,
        names=[name] if name is not None else None,
        probabilities=[probability] if probability is not None else None,
        regions=[region] if region is not None else None,
        cmap=cmap,
        alpha=alpha,
        size=3.2,
    )
    return to_image(fig)


def save_overlay(
    path: str | os.PathLike, image: Tensor, saliency: Tensor, preprocess: Preprocess | None = None, **kw
) -> None:
    """:func:`overlay_image` written as PNG."""
    overlay_image(image, saliency, preprocess=preprocess, **kw).save(path, format="png")


def _font(size: int) -> ImageFont.ImageFont:
    """matplotlib's DejaVu Sans at ``size`` pixels (PIL's default bitmap font is tiny)."""
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def saliency_grid(
    path,
    images: Tensor,
    columns: dict[str, Tensor],
    preprocess: Preprocess | None = None,
    titles: Sequence[str] | None = None,
    boxes: Sequence[Sequence[tuple[Sequence[float], str]]] | None = None,
    cmap: str = CMAP,
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
    font = _font(11)
    gap, top, left = max(2, width // 32), 18, 18 if titles else 0
    canvas = np.full((top + rows * (height + gap), left + cols * (width + gap), 3), 255, np.uint8)
    colours = matplotlib.colormaps[cmap]
    panels = [pixels] + [
        0.5 * pixels + 0.5 * enlarge(colours(maps.detach().float().cpu().numpy())[..., :3])
        for maps in columns.values()
    ]
    for c, panel in enumerate(panels):
        x = left + c * (width + gap)
        for r in range(rows):
            y = top + r * (height + gap)
            canvas[y : y + height, x : x + width] = (np.clip(panel[r], 0, 1) * 255).round()
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    drawn = boxes is not None and any(len(b) for b in boxes)
    names = ["input" + (" + boxes" if drawn else ""), *columns]
    for c, name in enumerate(names):
        draw.text((left + c * (width + gap) + width / 2, top / 2), name, fill="black", anchor="mm", font=font)
    for r in range(rows):
        y = top + r * (height + gap)
        if titles:
            label = Image.new("RGB", (height, left), "white")
            ImageDraw.Draw(label).text(
                (height / 2, left / 2), titles[r], fill="black", anchor="mm", font=font
            )
            picture.paste(label.rotate(90, expand=True), (0, y))
        for box, colour in boxes[r] if boxes is not None else ():
            x0, y0, x1, y1 = (scale * v for v in box)
            rgb = tuple(round(255 * v) for v in matplotlib.colors.to_rgb(colour))
            draw.rectangle((left + x0, y + y0, left + x1 - 1, y + y1 - 1), outline=rgb, width=2)
    picture.save(path, format="PNG", compress_level=1)  # the format given: path may be a temporary name


def _save(fig: Figure, path) -> None:
    """Write a figure as PNG, fast (zlib level 1: the figures are re-written by every report)."""
    fig.savefig(path, format="png", dpi=110, pil_kwargs={"compress_level": 1})


def curves(curves: dict[str, dict[str, tuple[list, list]]]) -> Figure:
    """One panel per kind (insertion, deletion): the mean curve of every (method, pooling) series."""
    kinds = [k for k in ("insertion", "deletion") if k in curves]
    fig = _Figure(figsize=(5 * len(kinds), 3.6), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for label, (x, y) in curves[kind].items():
            ax.plot(x, y, label=label, linestyle="--" if label.endswith("GAP") else "-")
        better = "higher AUC is better ↑" if kind == "insertion" else "lower AUC is better ↓"
        ax.set_title(f"{kind} ({better})")
        ax.set_xlabel("fraction of pixels " + ("inserted" if kind == "insertion" else "deleted"))
        ax.set_ylabel("probability of the target class")
        ax.legend(fontsize=7)
    return fig


def curves_figure(path, series: dict[str, dict[str, tuple[list, list]]]) -> None:
    """:func:`curves` written as PNG."""
    _save(curves(series), path)


UNITS = {
    "AD": ("%", "lower is better ↓"),
    "AG": ("%", "higher is better ↑"),
    "AI": ("%", "higher is better ↑"),
}


def bars(
    values: dict[str, dict[str, tuple[float, float, float]]],
    metrics: Sequence[str],
    baselines: Sequence[str] = (),
) -> Figure:
    """Grouped bars: for each metric a panel, one bar per series with its confidence interval; the series
    named in ``baselines`` (Fake-CAM, random) are drawn hatched, apart, after a gap."""
    methods = [s for s in values if s not in baselines]
    scale = [s for s in values if s in baselines]
    labels = methods + scale
    positions = list(range(len(methods))) + [len(methods) + 0.6 + i for i in range(len(scale))]
    fig = _Figure(figsize=(4.5 * len(metrics), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        means = [values[s][metric][0] for s in labels]
        low = [m - values[s][metric][1] for m, s in zip(means, labels)]
        high = [values[s][metric][2] - m for m, s in zip(means, labels)]
        bars_ = ax.bar(
            positions,
            means,
            yerr=[low, high],
            capsize=3,
            color=["#9ab" if s.endswith("GAP") else "#e84" for s in labels],
        )
        for bar, s in zip(bars_, labels):
            if s in baselines:
                bar.set_hatch("//")
                bar.set_color("#ccc")
                bar.set_edgecolor("#666")
        ax.set_xticks(positions, labels, rotation=45, ha="right", fontsize=7)
        unit, better = UNITS.get(metric, ("", ""))
        ax.set_title(f"{metric} ({better}); 95% CI" if better else metric)
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    return fig


def bars_figure(path, values, metrics: Sequence[str], baselines: Sequence[str] = ()) -> None:
    """:func:`bars` written as PNG."""
    _save(bars(values, metrics, baselines), path)
