"""The report's figures: what they show is saved during the run (the grid's input images, their boxes and
class names, each cell's maps of them, the streams' raw attention), and rendered from those files only,
with no model: the saliency grid, the insertion/deletion curves and the AD/AG bars.

Layout under the run folder: ``maps/inputs.npy`` (the grid's images, model-input space),
``maps/grid.json`` (their indices and boxes), ``maps/<cell>/<index>-<target>.npy`` (a cell's map of an
image for a target class), ``maps/<label>-raw_attention.npy``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import viz
from .store import Store, cell_name

TARGET_BOX, OTHER_BOX = "lime", "red"
POOLING_NAMES = {"gap": "GAP", "ca": "CA"}


def map_path(out: Path, cell: str, index: int, target: int) -> Path:
    return out / "maps" / cell / f"{index}-{target}.npy"


def save_maps(store: Store, cell: str, grid: list[int], indices: list[int], targets: list[int], maps: Tensor):
    """Keep a cell's maps of the grid's images (float32 .npy, written atomically)."""
    wanted = set(grid)
    for j, (index, target) in enumerate(zip(indices, targets)):
        if index in wanted:
            store.save_array(map_path(store.out, cell, index, target), maps[j].float().numpy())


def save_inputs(runner) -> None:
    """The grid's input images, boxes and box classes, and every stream's raw attention of them (once per
    run folder: a resumed run finds them)."""
    from ..saliency import RawAttention
    from ..stream import StreamModel

    out = runner.out / "maps"
    if (out / "grid.json").is_file():
        return
    indices = runner.figure_indices()
    kept, images, _, meta, _ = runner._to_device(runner._read(indices))
    if images is None:
        return
    for label, model in runner.models.items():
        if isinstance(model, StreamModel):
            raw = RawAttention(model)(images).cpu().float().numpy()
            runner.store.save_array(out / f"{label}-raw_attention.npy", raw)
    runner.store.save_array(out / "inputs.npy", images.cpu().float().numpy())
    grid = {
        "indices": kept,
        "boxes": [t["boxes"].tolist() for t in meta],
        "box_labels": [t["box_labels"].tolist() if "box_labels" in t else None for t in meta],
    }
    out.mkdir(parents=True, exist_ok=True)
    runner.store.write_json("maps/grid.json", grid)


def _saved(out: Path, cell: str, indices: list[int]) -> tuple[Tensor, list[int]] | None:
    """A cell's saved maps of the grid images and their targets (the smallest target where several were
    explained), or None unless every image has one."""
    maps, targets = [], []
    for index in indices:
        found = sorted((out / "maps" / cell).glob(f"{index}-*.npy"), key=lambda p: int(p.stem.split("-")[1]))
        if not found:
            return None
        maps.append(torch.from_numpy(np.load(found[0], allow_pickle=False)))
        targets.append(int(found[0].stem.split("-")[1]))
    return torch.stack(maps), targets


def render(run, cells: list[dict]) -> dict[str, Callable[[Path], None]]:
    """The figures of ``run`` (a :class:`results.StoredRun`) from its stored files: file name ->
    ``draw(path)``, for the report to write as it writes its other files."""
    out, config, files = run.out, run.config, {}
    grid_file = out / "maps" / "grid.json"
    if grid_file.is_file():
        grid = json.loads(grid_file.read_text())
        indices = grid["indices"]
        images = torch.from_numpy(np.load(out / "maps" / "inputs.npy", allow_pickle=False))
        several = len(run.plan.poolings) > 1
        columns, targets = {}, None
        for method in config.methods:
            if method in config.baselines:
                continue
            for label, pooling, name in run.plan.cells():
                saved = _saved(out, cell_name(label, pooling, name), indices) if name == method else None
                if saved is not None:
                    columns[f"{label} " * several + f"{method} {POOLING_NAMES[pooling]}"], targets = saved
        for label in run.plan.poolings:
            raw = out / "maps" / f"{label}-raw_attention.npy"
            if raw.is_file():
                columns[f"{label} " * several + "raw attention"] = torch.from_numpy(np.load(raw))
        if columns and targets is not None:
            boxes = []
            for found, classes, t in zip(grid["boxes"], grid["box_labels"], targets):
                classes = classes if classes is not None else [t] * len(found)
                boxes.append([(b, TARGET_BOX if c == t else OTHER_BOX) for b, c in zip(found, classes)])
            names = [run.class_name(t) for t in targets]
            files["saliency_grid.png"] = partial(
                viz.saliency_grid,
                images=images,
                columns=columns,
                preprocess=run.preprocess,
                titles=names,
                boxes=boxes,
            )
    curves = {}
    for kind in ("insertion", "deletion"):
        series = {c["label"]: c["curves"][kind] for c in cells if kind in c["curves"]}
        if series:
            curves[kind] = series
    if curves:
        files["curves.png"] = partial(viz.curves_figure, series=curves)
    bars = {
        c["label"]: {
            key.upper(): tuple(c["metrics"][key][part] * 100 for part in ("mean", "low", "high"))
            for key in ("ad", "ag")
            if key in c["metrics"]
        }
        for c in cells
    }
    if bars and all(bars.values()):
        scale = [c["label"] for c in cells if c["method"] in config.baselines]
        files["ad_ag.png"] = partial(viz.bars_figure, values=bars, metrics=["AD", "AG"], baselines=scale)
    return files
