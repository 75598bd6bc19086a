"""Evaluation results: a run folder's stored records aggregated (:func:`collect`: per-cell metrics with
bootstrap intervals, the models' accuracy and cost, GAP vs CA comparisons, the claims the run covers), from
the folder alone (:class:`StoredRun`: config.json, run.json and the shards), with no model: the report
renders what this returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import metrics
from ..preprocess import Preprocess
from . import groups
from .claims import check_claims, significant
from .config import EvalConfig
from .plan import Plan
from .store import (  # noqa: F401  (re-exported: the names results offered before the store split)
    CellRecords,
    Columns,
    Store,
    cell_name,
    read_cell,
    read_config,
    read_shards,
    run_id,
    shard_records,
)

RUN_INFO = "run.json"  # what the runner knows that the report needs: written when a run starts


class StoredRun:
    """A run folder read back without models: its configuration (config.json), what the runner recorded
    when it started (run.json: the selection, cells, models' cost, class names, the figures' images) and
    its shards. It offers the names the results and claims read (``config``, ``indices``, ``plan``,
    ``records(cell)``, ...), so that the report is a function of the stored files only."""

    def __init__(self, out: str | Path, log=print, accuracy_margin: float | None = None) -> None:
        """``accuracy_margin``: the accuracy claim's margin, over the stored one (a report-only setting)."""
        self.out = Path(out)
        stored = read_config(self.out)
        fields = {k: v for k, v in stored.items() if k != "weights"}
        if accuracy_margin is not None:
            fields["accuracy_margin"] = accuracy_margin
        try:
            self.config = EvalConfig(**fields, out=str(self.out))
        except TypeError as err:
            raise ValueError(
                f"{self.out}/config.json is not a configuration this castream reads ({err})"
            ) from None
        path = self.out / RUN_INFO
        try:
            self.info = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot read {path} ({err}): it is written when a run starts; run castream evaluate with "
                "this folder's settings again to write it (finished images are not recomputed)"
            ) from None
        self.store = Store(self.out, log=log)
        self.store.identity = run_id(stored)
        self.indices: list[int] = self.info["selection"]
        self.store.selection = set(self.indices)
        self.multilabel: bool = self.info["multilabel"]
        self.preprocess = Preprocess(self.info["preprocess"]["mean"], self.info["preprocess"]["std"])
        self.plan = Plan.from_info(self.config, self.info)

    @property
    def warnings(self) -> list[str]:
        return self.store.warnings

    def records(self, cell: str) -> CellRecords:
        return self.store.records(cell)

    def map_size(self) -> tuple[str, int, int] | None:
        found = self.info.get("map_size")
        return tuple(found) if found else None

    def model_cost(self, label: str, pooling: str) -> dict:
        return self.info["cost"][f"{label}/{pooling}"]

    def class_name(self, cls: int) -> str:
        names = self.info.get("class_names")
        return names[cls] if names else str(cls)


def collect(runner) -> dict:
    """Every cell's records aggregated (:class:`metrics.Aggregator`), the models' accuracy and cost,
    the GAP vs CA comparisons, the claims the run covers, the skipped images and the ignored records:
    everything the report renders."""
    config = runner.config
    fractions = metrics.step_counts(config.size, config.size, config.protocol).double() / config.size**2
    plan = runner.plan
    accuracy = plan.accuracy_cells()
    records = {cell: runner.records(cell_name(*cell)) for cell in [*accuracy, *plan.cells()]}  # read once
    tables = {cell: found.table() for cell, found in records.items()}
    cells = []
    for label, pooling, method in plan.cells():
        found, table = records[(label, pooling, method)], tables[(label, pooling, method)]
        timings, skipped = found.timings, set(found.skipped)
        curves = {
            kind: (fractions.tolist(), table.curves[f"{kind}_curve"].tolist())
            for kind in ("insertion", "deletion")
            if f"{kind}_curve" in table.curves
        }
        cells.append(
            {
                "model": label,
                "pooling": pooling,
                "method": method,
                "images": len(table.images()),
                "rows": len(table),
                # images the cell could explain: skipped ones (unreadable, no object) are listed apart
                "images_asked": len(set(plan.method_indices(method)) - skipped),
                "metrics": _aggregate(table, config.seed).summary(),
                "seconds_per_8": sum(s for s, _ in timings) / max(1, sum(n for _, n in timings)) * 8,
                "curves": curves,
            }
        )
    # images left out (unreadable ones in every cell; multi-label images without an object in the method
    # cells only: they still count in the mAP), each once
    skipped_images = {}
    for found in records.values():
        for index, entry in found.skipped.items():
            skipped_images.setdefault(index, entry)
    return {
        "cells": cells,
        "models": [
            _model_row(runner, label, pooling, tables[(label, pooling, "accuracy")])
            for label, pooling, _ in accuracy
        ],
        "comparisons": comparisons(runner, tables),
        "claims": check_claims(runner, tables, config.seed, config.accuracy_margin),
        "skipped": [skipped_images[i] for i in sorted(skipped_images)],
        "ignored_records": list(runner.warnings),
    }


def _aggregate(table: Columns, seed: int) -> metrics.Aggregator:
    """Every metric of a cell, in the order of its rows' keys (image index, or (image, class))."""
    names = table.names if len(table) else []
    agg = metrics.Aggregator(seed=seed, reducers=groups.reducers(names))
    for name in names:
        agg.update(name, table.tensor(name), torch.arange(len(table)))
    return agg


def _accuracy(runner, table: Columns) -> dict:
    """Top-1 accuracy (mAP for multi-label data) with its interval, and the clean probability's spread."""
    if runner.multilabel:
        return {
            "name": "mAP",
            "value": metrics.mean_average_precision(
                table.tensor("scores").float(), table.tensor("labels").long()
            ),
            "images": len(table),
        }
    if len(table) and "accuracy" not in table.values:  # classes unknown to the model: no accuracy
        return {"name": "accuracy", "value": None, "images": len(table)}
    agg = metrics.Aggregator(seed=runner.config.seed)
    agg.update("accuracy", table.tensor("accuracy"), torch.tensor(table.keys, dtype=torch.long))
    summary = agg.summary()["accuracy"]
    out = {
        "name": "accuracy",
        "value": summary["mean"],
        "low": summary["low"],
        "high": summary["high"],
        "images": len(table),
    }
    if len(table) and "probability" in table.values:
        p = table.tensor("probability")
        q1, median, q3 = torch.quantile(p, torch.tensor([0.25, 0.5, 0.75], dtype=p.dtype)).tolist()
        out["probability"] = {"mean": float(p.mean()), "q1": q1, "median": median, "q3": q3}
    return out


def _model_row(runner, label: str, pooling: str, accuracy: Columns) -> dict:
    cost = runner.model_cost(label, pooling)
    return {
        "parameters": cost["parameters"],
        "gflops": cost["gflops"],
        "accuracy": _accuracy(runner, accuracy),
        "model": label,
        "pooling": pooling,
    }


def comparisons(runner, tables: dict[tuple[str, str, str], Columns]) -> list[dict]:
    """GAP vs CA for every method of every model with a stream: per compared metric, the paired
    studentized bootstrap test of CA - GAP over the images both cells evaluated, "significant" by the
    claims' rule (:func:`claims.significant`: one rule for every test of a report, never below
    :data:`claims.MIN_IMAGES` images)."""
    out = []
    for label in runner.plan.poolings:
        if set(runner.plan.poolings[label]) != {"gap", "ca"}:
            continue
        for method in runner.config.methods:
            gap, ca = tables[(label, "gap", method)], tables[(label, "ca", method)]
            entry = {"model": label, "method": method, "images": gap.common(ca), "metrics": {}}
            pairs = {key: gap.paired(ca, key) for key in groups.compared_keys()} if entry["images"] else {}
            pairs = {key: pair for key, pair in pairs.items() if pair is not None}
            for key, test in metrics.paired_tests(pairs, seed=runner.config.seed).items():
                entry["metrics"][key] = {**test, "significant": significant(test)}
            out.append(entry)
    return out
