"""Shared timing helpers for the benchmarks (they print JSON; nothing here asserts speed)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .._precision import AMP_DTYPES, autocast


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Wall times of each of ``fns`` in seconds, measured in turn within every repeat (so that a change
    of the machine's load reaches every one alike, not one block of repeats): per name, ``min`` and
    ``median``, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: {"min": min(t), "median": statistics.median(t)} for name, t in times.items()}


def ratio_fields(subject: dict[str, float], reference: dict[str, float], factor: float = 1.0) -> dict:
    """The JSON fields of a subject's time against its reference (``factor`` references), interleaved:
    median and min of each, and the ratios of the medians and of the mins."""
    return {
        "seconds": round(subject["median"], 4),
        "seconds_min": round(subject["min"], 4),
        "reference_seconds": round(reference["median"] * factor, 4),
        "reference_seconds_min": round(reference["min"] * factor, 4),
        "ratio": round(subject["median"] / (reference["median"] * factor), 3),
        "ratio_min": round(subject["min"] / (reference["min"] * factor), 3),
    }


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds, after ``warmup`` untimed calls (a time with no reference;
    a ratio is measured with :func:`interleaved`)."""
    return interleaved({"fn": fn}, device, repeats, warmup)["fn"]["median"]


def environment(device: torch.device, args: argparse.Namespace | None = None) -> dict:
    """Where and how a benchmark ran (with ``args``: its precision and memory format)."""
    info = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    if args is not None:
        info.update(amp=args.amp, channels_last=args.channels_last)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options of every benchmark: device, precision (--amp), memory format (--channels-last), repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default=None, help="run models under autocast")
    parser.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last")
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def prepare(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """``model`` on the benchmark's device, in its memory format, declaring ImageNet's statistics (the
    benchmarks time random-weight models on ImageNet-normalized inputs)."""
    from ..preprocess import Preprocess

    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    return Preprocess().declare(model.to(torch.device(args.device), memory_format=memory))


def inputs(shape: tuple[int, ...], args: argparse.Namespace) -> torch.Tensor:
    """Random images of ``shape`` on the benchmark's device, in its memory format."""
    memory = torch.channels_last if args.channels_last and len(shape) == 4 else torch.contiguous_format
    return torch.randn(shape, device=torch.device(args.device)).contiguous(memory_format=memory)


def precision(args: argparse.Namespace):
    """The benchmark's autocast context (a no-op without --amp)."""
    return autocast(torch.device(args.device), args.amp)
