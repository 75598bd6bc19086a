"""Small shared utilities: parameter and FLOP counting, meta-device probing, atomic file writes, file
content digests, files written only where castream owns them."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode


def uncompiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper runs (its ``_orig_mod``), else ``model``: castream's hooks
    and meta-device traces need eager execution, and the wrapper shares the module's parameters."""
    inner = getattr(model, "_orig_mod", None)
    return inner if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module) else model


def count_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of parameters of ``module``; by default only those with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def meta_call(model: nn.Module, input_size: tuple[int, ...], **forward_kwargs: Any) -> Any:
    """Run ``model`` in eval mode on a meta-device input of ``input_size``: shapes and FLOPs without any
    computation.

    Parameters and buffers are substituted by meta tensors (``torch.func.functional_call``), so the model
    itself is neither copied nor modified (its train/eval modes are restored); its forward hooks fire.
    """
    dtype = next(chain(model.parameters(), model.buffers()), torch.empty(0)).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in chain(model.named_parameters(remove_duplicate=False), model.named_buffers())
    }
    x = torch.empty(input_size, device="meta", dtype=dtype)
    kwargs = {
        k: torch.empty_like(v, device="meta") if isinstance(v, torch.Tensor) else v
        for k, v in forward_kwargs.items()
    }
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return functional_call(model, state, (x,), kwargs, tie_weights=False, strict=False)
    finally:
        for m, mode in modes:
            m.training = mode


def count_flops(
    model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224), **forward_kwargs: Any
) -> int:
    """FLOPs of one forward pass of ``model`` on an input of ``input_size`` (a multiply-add counts 2).

    Counted with ``torch.utils.flop_counter`` on the meta device (no real computation). Only matrix
    products and convolutions are counted, as torch's counter does; elementwise ops, softmax and bias
    additions are not. Keyword arguments go to the forward (e.g. ``pooling="gap"`` for a StreamModel).
    """
    with FlopCounterMode(display=False) as counter:
        meta_call(model, input_size, **forward_kwargs)
    return int(counter.get_total_flops())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file in the same folder, which then
    replaces ``path`` in one ``os.replace`` (a symbolic link there is replaced, never written through).
    An interruption leaves the previous file intact; a full disk is reported as one."""
    path = Path(path)
    tmp = _stage(path, write)
    try:
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def temporary_name(name: str) -> str:
    """The pattern of :func:`atomic_write`'s temporary files for ``name`` (a regular expression): a file
    left by a kill during a write is castream's own."""
    return rf"\.{re.escape(name)}\.[A-Za-z0-9_]+\.tmp"


def _stage(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a new temporary file next to ``path``, flushed to disk: its path. A full disk
    (whatever the writer reports: OSError ENOSPC, torch's "unexpected pos", safetensors' "os error 28",
    numpy's short write) is an OSError saying so; the temporary file is removed on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except Exception as err:
            if not _disk_full(err):
                raise
            previous = (
                f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            )
            raise OSError(
                errno.ENOSPC,
                f"No space left on the disk while writing {path}; {previous} (free space and rerun)",
            ) from err
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the mode open() would
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _disk_full(err: BaseException) -> bool:
    """Whether a writer's exception means the disk is full, whichever library raised it."""
    text = str(err)
    return (
        getattr(err, "errno", None) == errno.ENOSPC
        or "unexpected pos" in text  # torch.save (PyTorch's zip writer)
        or "os error 28" in text  # safetensors (Rust's io::Error)
        or "No space left" in text
        or bool(re.search(r"\d+ requested and \d+ written", text))  # numpy's short write
    )


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, refusing other types (bool, float, str) and values below ``minimum``, with a
    message naming the option: counts and sizes are validated where they enter, never defaulted."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's content: what identifies a checkpoint (the same path may hold other
    weights later). Computed once per file and process, cached by path, size, mtime and inode."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise FileNotFoundError(f"cannot read {path}: {err.strerror}") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = f"sha256:{digest.hexdigest()}"
    return _DIGESTS[key]


def state_digest(module: nn.Module) -> str:
    """``"sha256:<hex>"`` of a module's state dict (names, dtypes, shapes and values): the identity of the
    weights a result was computed with, however they were loaded."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


MANIFEST = ".castream-files.json"


OVERWRITE_HINT = "pass --overwrite (overwrite=True) to replace them, or choose another --out"


def write_owned(
    folder: str | os.PathLike,
    files: dict[str, Callable[[Path], None]],
    overwrite: bool,
    *,
    hint: str = OVERWRITE_HINT,
) -> None:
    """Write ``files`` (name -> ``write(tmp)``, as :func:`atomic_write`) into ``folder``, keeping a manifest
    of the digests of what castream wrote there: a rerun replaces its own files, but a file castream did
    not write (or that was changed since) is only replaced with ``overwrite``. Nothing is written when one
    is refused. The new files are staged first and the manifest accepts the old and the new digest while
    they replace the old ones, so that an interruption at any moment (a kill, a full disk) leaves every
    file castream's in the next run's eyes."""
    folder = Path(folder)
    manifest = check_owned(folder, files, overwrite, hint=hint)
    staged: dict[str, Path] = {}
    try:
        for name, write in files.items():
            staged[name] = _stage(folder / name, write)
        digests = {name: file_digest(tmp) for name, tmp in staged.items()}
        pending = {name: sorted({*_accepted(manifest.get(name)), digests[name]}) for name in staged}
        _write_manifest(folder, {**manifest, **pending})
        for name, tmp in staged.items():
            os.replace(tmp, folder / name)
        _write_manifest(folder, {**manifest, **digests})
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def _accepted(entry) -> list[str]:
    """The digests a manifest entry accepts: one, or the old and new ones of an interrupted write."""
    return [entry] if isinstance(entry, str) else list(entry) if isinstance(entry, list) else []


def _write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write(
        folder / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    )


def check_owned(folder: str | os.PathLike, names, overwrite: bool, *, hint: str = OVERWRITE_HINT) -> dict:
    """The manifest of ``folder`` (see :func:`write_owned`), after checking that none of ``names`` is a
    file castream did not write there, or a symbolic link (unless ``overwrite``): check every name of a long
    job first, then write batch by batch. An unreadable manifest is an error saying so (castream cannot
    tell its files from others then), unless ``overwrite``."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        existing = [name for name in names if (folder / name).exists() or (folder / name).is_symlink()]
        if existing and not overwrite:
            raise FileExistsError(
                f"cannot read castream's record of the files it wrote in {folder} ({manifest_path.name}: "
                f"{err}), so it cannot tell its {', '.join(existing[:3])}{', ...' * (len(existing) > 3)} "
                f"from files of yours; {hint}"
            ) from None
        manifest = {}
    if not overwrite:
        foreign = [
            name
            for name in names
            if (folder / name).is_symlink()  # never written through, wherever it points
            or ((folder / name).exists() and file_digest(folder / name) not in _accepted(manifest.get(name)))
        ]
        if foreign:
            raise FileExistsError(
                f"{folder} already holds {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}, "
                f"which castream did not write there (or which changed since); {hint}"
            )
    return manifest
