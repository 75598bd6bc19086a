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

import numpy as np
import torch

from .. import metrics
from ..stream import StreamModel
from ..utils import count_flops, count_parameters
from . import groups
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
class Columns:
    """A cell's per-image values as arrays: ``keys`` the row keys in sorted order (image index, or (image,
    class) where every positive class of a multi-label image is explained), ``values[name]`` float64
    arrays of shape (n,) or (n, m) in that order; the insertion/deletion curves are kept only as their
    mean over the rows (the report's one use of them). 8 bytes per value, where a row of Python objects
    took about 4.5 KB, and nothing per curve point."""

    keys: list
    values: dict[str, np.ndarray]
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # name -> mean curve over the rows

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def names(self) -> list[str]:
        return list(self.values)

    def images(self) -> set[int]:
        return {k[0] if isinstance(k, tuple) else k for k in self.keys}

    def tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.values[name])

    def paired(self, other: Columns, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``name``'s values of the rows both cells hold, in key order, as the float32 tensors the paired
        bootstrap has always been given; None when either lacks it."""
        if name not in self.values or name not in other.values:
            return None
        mine = {k: i for i, k in enumerate(self.keys)}
        theirs = {k: i for i, k in enumerate(other.keys)}
        common = sorted(set(mine) & set(theirs))
        a = self.values[name][[mine[k] for k in common]]
        b = other.values[name][[theirs[k] for k in common]]
        return torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32))

    def common(self, other: Columns) -> int:
        return len(set(self.keys) & set(other.keys))


@dataclass
class CellRecords:
    """A cell's valid records, read into columns as they come (:meth:`table`), (seconds, images) timings
    per batch, skipped images by index, and a warning per ignored record."""

    timings: list[tuple[float, int]] = field(default_factory=list)
    skipped: dict[int, dict] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    _keys: list = field(default_factory=list)
    _seen: set = field(default_factory=set)
    _chunks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _sums: dict[str, np.ndarray] = field(default_factory=dict)  # curves: float64 sums over the rows
    _names: list[str] | None = None
    _table: Columns | None = None

    @property
    def done(self) -> set[int]:
        """Image indices with a record (computed or skipped): what a resumed run need not compute."""
        return {k[0] if isinstance(k, tuple) else k for k in self._keys} | set(self.skipped)

    def holds(self, key) -> bool:
        return key in self._seen

    def add(self, keys: list, rows: list[dict]) -> None:
        """One shard record's rows (every row of a record has the same metrics): each metric is one array,
        with the groups' derived columns (``overall``, per-host adversarial and fading) added."""
        names = [k for k in rows[0] if k not in ("index", "class")]
        stored = {name: np.asarray([r[name] for r in rows], dtype=np.float64) for name in names}
        inputs, curves = groups.stored_keys(), groups.curve_keys()
        columns = {k: v for k, v in groups.derive(stored).items() if k not in inputs}
        if self._names is None:
            self._names = list(columns)
        elif list(columns) != self._names:
            raise ValueError(f"a shard record holds metrics {list(columns)}, another {self._names}")
        for name, values in columns.items():
            if name in curves:
                self._sums[name] = self._sums.get(name, 0) + values.sum(axis=0)
            else:
                self._chunks.setdefault(name, []).append(values)
        self._keys.extend(keys)
        self._seen.update(keys)
        self._table = None

    def table(self) -> Columns:
        """The rows in key order, one array per metric (built once; the per-record chunks are freed)."""
        if self._table is None:
            order = np.asarray(sorted(range(len(self._keys)), key=self._keys.__getitem__), dtype=np.int64)
            values = {}
            for name in list(self._chunks):
                values[name] = np.concatenate(self._chunks.pop(name))[order]
                self._chunks[name] = [values[name]]  # the same array: keys and chunks now in key order
            self._keys = [self._keys[i] for i in order.tolist()]
            curves = {name: total / len(self._keys) for name, total in self._sums.items()}
            self._table = Columns(list(self._keys), values, curves)
        return self._table

    @property
    def rows(self) -> dict:
        """The rows as dictionaries keyed like the shards (for inspection and tests; the report reads
        :meth:`table`)."""
        table = self.table()
        out = {}
        for position, key in enumerate(table.keys):
            row = {"index": key[0], "class": key[1]} if isinstance(key, tuple) else {"index": key}
            for name, values in table.values.items():
                value = values[position]
                row[name] = value.tolist() if value.ndim else float(value)
            out[key] = row  # (the curves are kept as their mean only: Columns.curves)
        return out


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
            repeated = [k for k in keys if found.holds(k)] + [
                e["index"] for e in record.get("skipped", []) if e["index"] in found.skipped
            ]
            if repeated:
                found.ignored.append(f"{where}: ignored a second record of image(s) {repeated[:5]}")
                continue
            if keys:
                found.add(keys, record["images"])
            found.skipped.update((e["index"], e) for e in record.get("skipped", []))
            if "seconds" in record:
                found.timings.append((record["seconds"], len(record["images"])))
    return found


def read_shards(out: Path, cell: str) -> tuple[dict, list[tuple[float, int]]]:
    """Rows and timings of ``cell`` in ``out`` (see :func:`read_cell`)."""
    records = read_cell(out, cell)
    return records.rows, records.timings


def collect(runner) -> dict:
    """Every cell's records aggregated (:class:`metrics.Aggregator`), the models' accuracy and cost,
    the GAP vs CA comparisons, the claims the run covers, the skipped images and the ignored records:
    everything the report renders."""
    config = runner.config
    fractions = metrics.step_counts(config.size, config.size, config.protocol).double() / config.size**2
    accuracy = [(label, pooling, "accuracy") for label in runner.models for pooling in runner.poolings(label)]
    records = {cell: runner.records(cell_name(*cell)) for cell in [*accuracy, *runner.cells()]}  # read once
    tables = {cell: found.table() for cell, found in records.items()}
    cells = []
    for label, pooling, method in runner.cells():
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
                "images_asked": len(set(runner.method_indices(method)) - skipped),
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
        "claims": check_claims(runner, tables, config.seed),
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
    model, size = runner.models[label], runner.config.size
    kwargs = runner.forward_kwargs(label, pooling)
    if isinstance(model, StreamModel) and pooling == "gap":
        params = count_parameters(model.backbone, trainable_only=False)
    else:
        params = count_parameters(model, trainable_only=False)
    return {
        "parameters": params,
        "gflops": count_flops(model, (1, 3, size, size), **kwargs) / 1e9,
        "accuracy": _accuracy(runner, accuracy),
        "model": label,
        "pooling": pooling,
    }


def comparisons(runner, tables: dict[tuple[str, str, str], Columns]) -> list[dict]:
    """GAP vs CA for every method of every model with a stream: per compared metric, the paired
    bootstrap (PROTOCOL.md) of CA - GAP over the images both cells evaluated."""
    out = []
    for label in runner.models:
        if set(runner.poolings(label)) != {"gap", "ca"}:
            continue
        for method in runner.config.methods:
            gap, ca = tables[(label, "gap", method)], tables[(label, "ca", method)]
            entry = {"model": label, "method": method, "images": gap.common(ca), "metrics": {}}
            for key in groups.compared_keys():
                if entry["images"] and (pair := gap.paired(ca, key)) is not None:
                    entry["metrics"][key] = metrics.paired_bootstrap(*pair, seed=runner.config.seed)
            out.append(entry)
    return out
