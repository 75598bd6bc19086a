"""Evaluation results on disk: the run's identity (``config.json``) and the per-cell shard files the
runner appends, read back and validated into per-image rows. It serves both the runner's resume and the
report, so that both see the same records.

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
