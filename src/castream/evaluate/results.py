"""Evaluation results: the run's identity (``config.json``) and the per-cell shard files the runner
appends, read back and validated into per-image rows, then aggregated (:func:`collect`: per-cell
metrics with bootstrap intervals, the models' accuracy and cost, GAP vs CA comparisons, the claims the run
covers). It serves both the runner's resume and the report, which only renders what it returns.

Every shard record names its run (a digest of the folder's ``config.json``, which holds the settings and
the weights' content digests) and its cell. A record of another run or cell (a line copied from another
folder, another ``--seed``, other weights) and a second record of an image are never used: they are
ignored, and each is reported as a warning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import metrics
from ..stream import StreamModel
from ..utils import count_flops, count_parameters
from .claims import check_claims


def cell_name(label: str, pooling: str, method: str) -> str:
    """The file-name-safe name of a cell: ``<model label>-<pooling>-<method>``."""
    safe = "".join(c if c.isalnum() or c in "_." else "_" for c in label)
    return f"{safe}-{pooling}-{method.replace('+', 'p')}"


def run_id(fingerprint: dict) -> str:
    """The identity of a run: a digest of its stored configuration (settings and weight digests)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def read_config(out: Path) -> dict:
    """The configuration a run folder was made with (``config.json``), or a clear error."""
    path = out / "config.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} ({err}); delete it or use another --out") from None
    if not isinstance(stored, dict):
        raise ValueError(f"{path} is not a castream evaluation config; delete it or use another --out")
    return stored


def shard_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a shard file. Only its last line may be torn (a kill during a write: no
    newline yet), and it is skipped; any other unreadable or malformed line is an error naming the file
    and line."""
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number == len(lines):  # the unterminated last line
                continue
            raise ValueError(
                f"{path}:{number}: corrupt shard line; delete the file to recompute it"
            ) from None
        rows = record.get("images") if isinstance(record, dict) else None
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("index"), int) for r in rows
        ):
            raise ValueError(
                f'{path}:{number}: a shard line must be {{"images": [{{"index": int, ...}}, ...]}}; '
                "delete the file to recompute it"
            )
        yield number, record


@dataclass
class CellRecords:
    """A cell's valid records: rows keyed by image index (or (image, class) where every positive class of
    a multi-label image is explained), (seconds, images) timings per batch, skipped images by index, and a
    warning per ignored record."""

    rows: dict = field(default_factory=dict)
    timings: list[tuple[float, int]] = field(default_factory=list)
    skipped: dict[int, dict] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def done(self) -> set[int]:
        """Image indices with a record (computed or skipped): what a resumed run need not compute."""
        return {k[0] if isinstance(k, tuple) else k for k in self.rows} | set(self.skipped)


def read_cell(out: Path, cell: str, run: str | None = None) -> CellRecords:
    """The records of ``cell`` in run folder ``out`` (every process's shard), checked against ``run``
    (default: the identity of ``out/config.json``)."""
    run = run or run_id(read_config(out))
    found = CellRecords()
    for path in sorted((out / "shards").glob(f"{cell}.rank*.jsonl")):
        for number, record in shard_records(path):
            where = f"{path}:{number}"
            if record.get("run") != run or record.get("cell") != cell:
                found.ignored.append(
                    f"{where}: ignored a record of another run or cell (run {record.get('run')!r}, cell "
                    f"{record.get('cell')!r}; this is run {run!r}, cell {cell!r})"
                )
                continue
            keys = [(r["index"], r["class"]) if "class" in r else r["index"] for r in record["images"]]
            repeated = [k for k in keys if k in found.rows] + [
                e["index"] for e in record.get("skipped", []) if e["index"] in found.skipped
            ]
            if repeated:
                found.ignored.append(f"{where}: ignored a second record of image(s) {repeated[:5]}")
                continue
            for key, row in zip(keys, record["images"]):
                if "insertion" in row and "deletion" in row:  # SA-CAM §4.5's "overall" AUC, per image
                    row["overall"] = row["insertion"] - row["deletion"]
                for j, hit in enumerate(row.pop("adversarial_cases", []), start=1):  # SA-CAM Tables 4-5
                    row[f"adversarial_case{j}"] = hit
                    row[f"fading_case{j}"] = [hit, row["fading"][1]]
                found.rows[key] = row
            found.skipped.update((e["index"], e) for e in record.get("skipped", []))
            if "seconds" in record:
                found.timings.append((record["seconds"], len(record["images"])))
    return found


def read_shards(out: Path, cell: str) -> tuple[dict, list[tuple[float, int]]]:
    """Rows and timings of ``cell`` in ``out`` (see :func:`read_cell`)."""
    records = read_cell(out, cell)
    return records.rows, records.timings


# per-image metrics compared between GAP and CA with the paired bootstrap
COMPARED = ("ad", "ag", "ai", "insertion", "deletion", "overall", "sp", "discrimination", "sp_target")


def collect(runner) -> dict:
    """Every cell's records aggregated (:class:`metrics.Aggregator`), the models' accuracy and cost,
    the GAP vs CA comparisons, the claims the run covers, the skipped images and the ignored records:
    everything the report renders."""
    config = runner.config
    fractions = metrics.step_counts(config.size, config.size, config.protocol).double() / config.size**2
    accuracy = [(label, pooling, "accuracy") for label in runner.models for pooling in runner.poolings(label)]
    records = {cell: runner.records(cell_name(*cell)) for cell in [*accuracy, *runner.cells()]}  # read once
    all_rows = {cell: found.rows for cell, found in records.items()}
    cells = []
    for label, pooling, method in runner.cells():
        found = records[(label, pooling, method)]
        rows, timings, skipped = found.rows, found.timings, set(found.skipped)
        curves = {
            kind: (fractions.tolist(), torch.tensor(series).mean(0).tolist())
            for kind in ("insertion", "deletion")
            if (series := [r[f"{kind}_curve"] for r in rows.values() if f"{kind}_curve" in r])
        }
        cells.append(
            {
                "model": label,
                "pooling": pooling,
                "method": method,
                "images": len({k[0] if isinstance(k, tuple) else k for k in rows}),
                "rows": len(rows),
                # images the cell could explain: skipped ones (unreadable, no object) are listed apart
                "images_asked": len(set(runner.method_indices(method)) - skipped),
                "metrics": _aggregate(rows, config.seed).summary(),
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
            _model_row(runner, label, pooling, all_rows[(label, pooling, "accuracy")])
            for label, pooling, _ in accuracy
        ],
        "comparisons": comparisons(runner, all_rows),
        "claims": check_claims(runner, all_rows, config.seed),
        "skipped": [skipped_images[i] for i in sorted(skipped_images)],
        "ignored_records": list(runner.warnings),
    }


def _aggregate(rows: dict, seed: int) -> metrics.Aggregator:
    """Every metric of a cell's rows, in the order of their keys (image index, or (image, class))."""
    order = sorted(rows)
    skip = ("index", "class")
    keys = [k for k in rows[order[0]] if k not in skip and not k.endswith("_curve")] if order else []
    cases = {k: metrics.fading_rate for k in keys if k.startswith("fading_case")}  # per-host fading rates
    agg = metrics.Aggregator(seed=seed, reducers=cases)
    for key in keys:
        values = torch.tensor([rows[i][key] for i in order], dtype=torch.float64)
        agg.update(key, values, torch.arange(len(order)))
    return agg


def _accuracy(runner, rows: dict) -> dict:
    """Top-1 accuracy (mAP for multi-label data) with its interval, and the clean probability's spread."""
    indices = sorted(rows)
    if runner.multilabel:
        scores = torch.tensor([rows[i]["scores"] for i in indices])
        labels = torch.tensor([rows[i]["labels"] for i in indices])
        return {
            "name": "mAP",
            "value": metrics.mean_average_precision(scores, labels),
            "images": len(indices),
        }
    if indices and "accuracy" not in rows[indices[0]]:  # classes unknown to the model: no accuracy
        return {"name": "accuracy", "value": None, "images": len(indices)}
    agg = metrics.Aggregator(seed=runner.config.seed)
    agg.update("accuracy", torch.tensor([rows[i]["accuracy"] for i in indices]), torch.tensor(indices))
    summary = agg.summary()["accuracy"]
    out = {
        "name": "accuracy",
        "value": summary["mean"],
        "low": summary["low"],
        "high": summary["high"],
        "images": len(indices),
    }
    if indices and "probability" in rows[indices[0]]:
        p = torch.tensor([rows[i]["probability"] for i in indices], dtype=torch.float64)
        q1, median, q3 = torch.quantile(p, torch.tensor([0.25, 0.5, 0.75], dtype=p.dtype)).tolist()
        out["probability"] = {"mean": float(p.mean()), "q1": q1, "median": median, "q3": q3}
    return out


def _model_row(runner, label: str, pooling: str, accuracy_rows: dict) -> dict:
    model, size = runner.models[label], runner.config.size
    kwargs = runner.forward_kwargs(label, pooling)
    if isinstance(model, StreamModel) and pooling == "gap":
        params = count_parameters(model.backbone, trainable_only=False)
    else:
        params = count_parameters(model, trainable_only=False)
    return {
        "parameters": params,
        "gflops": count_flops(model, (1, 3, size, size), **kwargs) / 1e9,
        "accuracy": _accuracy(runner, accuracy_rows),
        "model": label,
        "pooling": pooling,
    }


def comparisons(runner, rows: dict[tuple[str, str, str], dict[int, dict]]) -> list[dict]:
    """GAP vs CA for every method of every model with a stream: per metric of COMPARED, the paired
    bootstrap (PROTOCOL.md) of CA - GAP over the images both cells evaluated."""
    out = []
    for label in runner.models:
        if set(runner.poolings(label)) != {"gap", "ca"}:
            continue
        for method in runner.config.methods:
            gap, ca = rows[(label, "gap", method)], rows[(label, "ca", method)]
            common = sorted(set(gap) & set(ca))
            entry = {"model": label, "method": method, "images": len(common), "metrics": {}}
            for key in COMPARED:
                if common and key in gap[common[0]] and key in ca[common[0]]:
                    a, b = ([float(r[i][key]) for i in common] for r in (gap, ca))
                    entry["metrics"][key] = metrics.paired_bootstrap(
                        torch.tensor(a), torch.tensor(b), seed=runner.config.seed
                    )
            out.append(entry)
    return out
