"""The run folder's store: its identity (``config.json``), the per-cell shard files the runner appends and
reads back as columns, and the arrays and JSON files it keeps for the report (run.json, saved maps).

Every shard record names its run (a digest of the folder's ``config.json``, which holds the settings and
the weights' content digests) and its cell. A record of another run or cell (a line copied from another
folder, another ``--seed``, other weights) and a second record of an image are never used: they are
ignored, and each is reported as a warning.

Appends are crash-safe: each record is one flushed line (a kill loses at most the line being written,
which a later append or read drops); the files are fsync'ed at most every ``SYNC_SECONDS`` and when the
run ends, so that the disk never bounds the device pipeline (a kill of the process loses nothing that
was flushed; only a power cut can lose the last seconds, whose batches a rerun computes again).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..utils import atomic_write
from . import groups

SYNC_SECONDS = 5.0


def cell_name(label: str, pooling: str, method: str) -> str:
    """The file-name-safe name of a cell, ``<model label>-<pooling>-<method>``, one per cell: a label of
    letters, digits, ``_`` and ``.`` and a method of letters, digits and ``+`` (as ``p``) are kept as
    they are; any other name is made safe and gets a digest of the exact names (``r-1`` and ``r_1``,
    ``opticam[objective=diff]``), so that two cells never share a file."""
    label_safe = "".join(c if c.isalnum() or c in "_." else "_" for c in label)
    method_safe = "".join(c if c.isalnum() else "p" if c == "+" else "_" for c in method)
    name = f"{label_safe}-{pooling}-{method_safe}"
    if label_safe == label and method.replace("+", "").isalnum():
        return name
    digest = hashlib.sha256(json.dumps([label, pooling, method]).encode()).hexdigest()[:8]
    return f"{name}~{digest}"


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

    def paired(
        self, other: Columns, name: str, other_name: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``name``'s values of the rows both cells hold (``other_name``'s in ``other`` when given: two
        metrics of one cell), in key order, as the float32 tensors the paired bootstrap has always been
        given; None when either lacks it."""
        other_name = name if other_name is None else other_name
        if name not in self.values or other_name not in other.values:
            return None
        mine = {k: i for i, k in enumerate(self.keys)}
        theirs = {k: i for i, k in enumerate(other.keys)}
        common = sorted(set(mine) & set(theirs))
        a = self.values[name][[mine[k] for k in common]]
        b = other.values[other_name][[theirs[k] for k in common]]
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

    def add(
        self, keys: list, rows: list[dict], arrays: dict[str, np.ndarray] | None = None, order=None
    ) -> list[str]:
        """One shard record's rows (every row of a record has the same metrics) and its (rows, m) arrays
        (from the binary sidecar), in the record's column ``order``: each metric is one float64 array,
        with the groups' derived columns (``overall``, per-host adversarial and fading) added. A record
        with a value no metric writes (not a number, infinite, or a NaN curve; NaN otherwise marks a
        metric that does not apply to an image, counted as skipped) is not added: returns its metrics."""
        arrays = arrays or {}
        names = order or [k for k in rows[0] if k not in ("index", "class")]
        inputs, curves = groups.stored_keys(), groups.curve_keys()
        stored, bad = {}, []
        for name in names:
            try:
                values = (
                    arrays[name].astype(np.float64)
                    if name in arrays
                    else np.asarray([r[name] for r in rows], dtype=np.float64)
                )
            except (KeyError, TypeError, ValueError):
                bad.append(f"{name}: not a number")
                continue
            if np.isinf(values).any() or (name in curves and np.isnan(values).any()):
                bad.append(name)
            stored[name] = values
        if bad:
            return bad
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
        return []

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


def read_cell(out: Path, cell: str, run: str | None = None, selection: set[int] | None = None) -> CellRecords:
    """The records of ``cell`` in run folder ``out`` (every process's shard), checked against ``run``
    (default: the identity of ``out/config.json``). Ignored, each with a warning: a record of another run
    or cell, a second record of an image, a record of an image outside ``selection`` (the run's images,
    when given) and a record with an infinite value or a NaN curve (NaN marks a metric that does not apply
    to an image, e.g. localization without boxes: counted as skipped, never averaged)."""
    run = run or run_id(read_config(out))
    found = CellRecords()
    for path in sorted((out / "shards").glob(f"{cell}.rank*.jsonl")):
        side = sidecar(path)
        binary = side.read_bytes() if side.is_file() else b""
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
            foreign = [
                i
                for i in [k[0] if isinstance(k, tuple) else k for k in keys]
                + [e["index"] for e in record.get("skipped", [])]
                if selection is not None and i not in selection
            ]
            if foreign:
                found.ignored.append(
                    f"{where}: ignored a record of image(s) outside the run's selection {foreign[:5]}"
                )
                continue
            if keys:
                arrays = record_arrays(record, binary, len(keys), where, side)
                bad = found.add(keys, record["images"], arrays, record.get("columns"))
                if bad:
                    found.ignored.append(
                        f"{where}: ignored a record with non-finite values ({', '.join(bad[:5])})"
                    )
                    continue
            found.skipped.update((e["index"], e) for e in record.get("skipped", []))
            if "seconds" in record:
                found.timings.append((record["seconds"], len(record["images"])))
    return found


def sidecar(shard: Path) -> Path:
    """The binary file next to a shard that holds its records' (rows, m) arrays."""
    return shard.with_suffix(".bin")


def record_arrays(record: dict, binary: bytes, rows: int, where: str, side: Path) -> dict[str, np.ndarray]:
    """The arrays a record names in its sidecar (``"arrays": {name: [offset, shape, dtype]}``), checked."""
    out = {}
    for name, entry in (record.get("arrays") or {}).items():
        try:
            offset, shape, dtype = entry
            dtype = np.dtype(dtype)
            count = int(np.prod(shape))
            if (
                dtype.kind != "f"
                or shape[0] != rows
                or offset < 0
                or offset + count * dtype.itemsize > len(binary)
            ):
                raise ValueError
            out[name] = np.frombuffer(binary, dtype, count, offset).reshape(shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: the record's array {name!r} ({entry!r}) is not in {side} ({len(binary)} bytes); "
                "delete the cell's shard files to recompute it"
            ) from None
    return out


def read_shards(out: Path, cell: str) -> tuple[dict, list[tuple[float, int]]]:
    """Rows and timings of ``cell`` in ``out`` (see :func:`read_cell`)."""
    records = read_cell(out, cell)
    return records.rows, records.timings


class Store:
    """The shard files of one process (``rank``) in run folder ``out``: append, read back (cached while the
    files are unchanged), and the report's stored arrays and JSON."""

    def __init__(self, out: Path, rank: int = 0, log=print) -> None:
        self.out, self.rank, self.log = Path(out), rank, log
        self.identity: str | None = None  # the run's identity, set when the folder is claimed
        self.selection: set[int] | None = None  # the run's image indices: a record of another is ignored
        self.warnings: list[str] = []  # ignored shard records, in the order they were found
        self._records: dict[str, tuple[tuple, CellRecords]] = {}  # cell -> (shard files' state, records)
        self._unsynced: set[Path] = set()
        self._synced = time.monotonic()

    def shard(self, cell: str) -> Path:
        return self.out / "shards" / f"{cell}.rank{self.rank}.jsonl"

    def records(self, cell: str) -> CellRecords:
        """The valid records of ``cell`` (every process's shards, so the world size may change between
        runs); records of another run or a second record of an image are ignored, with a warning. Read once
        while the shard files are unchanged (their names, sizes and modification times)."""
        state = tuple(
            (p.name, s.st_size, s.st_mtime_ns)
            for p in sorted((self.out / "shards").glob(f"{cell}.rank*.jsonl"))
            for s in (p.stat(),)
        )
        cached = self._records.get(cell)
        if cached is not None and cached[0] == state:
            return cached[1]
        found = read_cell(self.out, cell, self.identity, self.selection)
        self._records[cell] = (state, found)
        for warning in found.ignored:
            if warning not in self.warnings:
                self.warnings.append(warning)
                self.log(f"warning: {warning}")
        return found

    def append(self, cell: str, record: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        """One record of ``cell`` as one flushed line (a line torn by an earlier kill is dropped first);
        its ``arrays`` ((rows, m) float arrays: curves, IoUs) go to the binary sidecar first, the line
        naming where, so that reading them back is a copy, not a JSON decode."""
        path = self.checked(self.shard(cell))
        if arrays:
            entries = {}
            with open(self.checked(sidecar(path)), "ab", opener=_no_follow) as f:
                for name, array in arrays.items():
                    array = np.ascontiguousarray(array)
                    entries[name] = [f.tell(), list(array.shape), array.dtype.str]
                    f.write(array.tobytes())
                f.flush()
            self._unsynced.add(sidecar(path))
            record = {**record, "arrays": entries}
        with open(path, "a+b", opener=_no_follow) as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a record torn by a kill during its write: drop it, its batch reruns
                    f.seek(0)
                    f.truncate(f.read().rfind(b"\n") + 1)
            f.seek(0, os.SEEK_END)
            f.write((json.dumps({"run": self.identity, "cell": cell, **record}) + "\n").encode())
            f.flush()
        self._unsynced.add(path)
        if time.monotonic() - self._synced >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """fsync every shard appended to since the last sync."""
        for path in sorted(self._unsynced):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        self._unsynced.clear()
        self._synced = time.monotonic()

    def save_array(self, path: Path, array: np.ndarray) -> None:
        """A float32 or int .npy under the run folder, written atomically."""
        self.checked(path)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, array)

        atomic_write(path, write)

    def write_json(self, name: str, value) -> None:
        atomic_write(self.checked(self.out / name), lambda tmp: tmp.write_text(json.dumps(value, indent=1)))

    def checked(self, path: Path) -> Path:
        """``path`` under the run folder, its folders made, after refusing a symbolic link on the way from
        the run folder to it: castream writes into the run folder only, never through a link."""
        current = self.out
        for part in path.relative_to(self.out).parts:
            current = current / part
            if current.is_symlink():
                raise FileExistsError(
                    f"{current} is a symbolic link, which castream did not make: it writes into the run "
                    f"folder {self.out} only, never through a link; remove the link (or choose another --out)"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def _no_follow(path: str, flags: int) -> int:
    """An ``open()`` opener that refuses a symbolic link in place of the file (ELOOP)."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)
