"""Report: results.json (everything), results.csv (one row per model/pooling/method), results.md (tables
laid out like thesis Tables 3.1, 2.6 and 3.3) and figures, from the runner's per-image shards."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import torch

from .. import metrics, viz
from ..saliency import RawAttention
from ..stream import StreamModel
from ..utils import count_flops, count_parameters
from .runner import _cell

# metric key -> (column title, shown x100 as a percentage, lower is better)
COLUMNS = {
    "ad": ("AD", True, True), "ag": ("AG", True, False), "ai": ("AI", True, False),
    "insertion": ("I", True, False), "deletion": ("D", True, True),
    "om": ("OM", True, True), "le": ("LE", True, True), "f1": ("F1", True, False),
    "boxacc": ("BA", True, False),
    "sp": ("SP", True, False), "ep": ("EP", True, False), "sm": ("SM", False, True),
    "aopc": ("AOPC", True, False), "max_sensitivity": ("MS", False, True), "adcc": ("ADCC", True, False),
    "coherency": ("Coherency", True, False), "complexity": ("Complexity", True, True),
}  # fmt: skip
TABLES = {
    "Interpretability metrics (thesis Table 3.1 layout)": ("ad", "ag", "ai", "insertion", "deletion"),
    "Localization metrics (thesis Table 2.6 layout)": ("om", "le", "f1", "boxacc", "sp", "ep", "sm"),
    "More metrics (thesis Table 2.3 layout)": ("aopc", "max_sensitivity", "adcc", "coherency", "complexity"),
}
POOLING_NAMES = {"gap": "GAP", "ca": "CA"}


def read_shards(out: Path, cell: str) -> tuple[dict[int, dict], list[tuple[float, int]]]:
    """Per-image rows of a cell (by image index, first record wins) and its (seconds, batch) timings."""
    rows: dict[int, dict] = {}
    timings = []
    for path in sorted((out / "shards").glob(f"{cell}.rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            for row in record["images"]:
                rows.setdefault(row["index"], row)
            if "seconds" in record:
                timings.append((record["seconds"], record["batch"]))
    return rows, timings


def _aggregate(rows: dict[int, dict], seed: int) -> metrics.Aggregator:
    agg = metrics.Aggregator(seed=seed)
    indices = sorted(rows)
    keys = [k for k in rows[indices[0]] if k != "index" and not k.endswith("_curve")] if indices else []
    for key in keys:
        agg.update(
            key, torch.tensor([rows[i][key] for i in indices], dtype=torch.float64), torch.tensor(indices)
        )
    return agg


def _fmt(entry: dict | None, percent: bool) -> str:
    """``mean [low, high]``: a percentage with 2 decimals, or a raw value with 3."""
    if entry is None or entry["n"] == 0:
        return "–"
    scale, digits = (100, 2) if percent else (1, 3)
    mean, low, high = (entry[k] * scale for k in ("mean", "low", "high"))
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _accuracy(runner, label: str, pooling: str) -> dict:
    rows, _ = read_shards(runner.out, _cell(label, pooling, "accuracy"))
    indices = sorted(rows)
    if runner.multilabel:
        scores = torch.tensor([rows[i]["scores"] for i in indices])
        labels = torch.tensor([rows[i]["labels"] for i in indices])
        return {
            "name": "mAP",
            "value": metrics.mean_average_precision(scores, labels),
            "images": len(indices),
        }
    agg = metrics.Aggregator(seed=runner.config.seed)
    agg.update("accuracy", torch.tensor([rows[i]["accuracy"] for i in indices]), torch.tensor(indices))
    summary = agg.summary()["accuracy"]
    return {
        "name": "accuracy",
        "value": summary["mean"],
        "low": summary["low"],
        "high": summary["high"],
        "images": len(indices),
    }


def _model_row(runner, label: str, pooling: str) -> dict:
    model, size = runner.models[label], runner.config.size
    kwargs = runner.forward_kwargs(label, pooling)
    if isinstance(model, StreamModel) and pooling == "gap":
        params = count_parameters(model.backbone, trainable_only=False)
    else:
        params = count_parameters(model, trainable_only=False)
    return {
        "parameters": params,
        "gflops": count_flops(model, (1, 3, size, size), **kwargs) / 1e9,
        "accuracy": _accuracy(runner, label, pooling),
        "model": label,
        "pooling": pooling,
    }


def _figures(runner, cells: list[dict]) -> list[str]:
    out, config = runner.out, runner.config
    files = []
    # saliency grid: the first images, every method through GAP and CA side by side, plus raw attention
    indices = runner.indices[:4]
    images, labels, _ = runner._load(indices)
    columns = {}
    several = len(runner.models) > 1
    for method_name in config.methods:
        for label, pooling, name in runner.cells():
            if name != method_name:
                continue
            with torch.no_grad():
                logits = runner.models[label](images, **runner.forward_kwargs(label, pooling)).float()
            method = runner.build_method(method_name, label, pooling)
            title = f"{label} " * several + f"{method_name} {POOLING_NAMES[pooling]}"
            columns[title] = method(images, runner._targets(labels, logits)).cpu()
    for label, model in runner.models.items():
        if isinstance(model, StreamModel):
            columns[f"{label} " * several + "raw attention"] = RawAttention(model)(images).cpu()
    names = [runner.dataset.classes[int(t)] for t in (labels if labels.dim() == 1 else labels.argmax(1))]
    viz.saliency_grid(out / "saliency_grid.png", images.cpu(), columns, runner.preprocess, names)
    files.append("saliency_grid.png")
    curves = {}
    for kind in ("insertion", "deletion"):
        series = {c["label"]: c["curves"][kind] for c in cells if kind in c["curves"]}
        if series:
            curves[kind] = series
    if curves:
        viz.curves_figure(out / "curves.png", curves)
        files.append("curves.png")
    bars = {
        c["label"]: {
            COLUMNS[k][0]: (
                c["metrics"][k]["mean"] * 100,
                c["metrics"][k]["low"] * 100,
                c["metrics"][k]["high"] * 100,
            )
            for k in ("ad", "ag")
            if k in c["metrics"]
        }
        for c in cells
    }
    if all(bars.values()):
        viz.bars_figure(out / "ad_ag.png", bars, ["AD", "AG"])
        files.append("ad_ag.png")
    return files


def _markdown(runner, cells: list[dict], models: list[dict], figures: list[str]) -> str:
    config = runner.config
    settings = metrics.PROTOCOLS[config.protocol]
    lines = [
        f"# castream evaluation: {config.model} on {config.data}",
        "",
        f"{len(runner.indices)} evaluation images at {config.size}x{config.size}, seed {config.seed}. "
        f"Causal metrics use protocol `{config.protocol}` (pixels per step ceil(H*W/{settings['steps']}), "
        f"insertion from a Gaussian blur with kernel {settings['blur_kernel']} and sigma "
        f"{settings['blur_sigma']}, deletion to {settings['deletion']}). Percentages except SM (nats) and "
        "MS; in brackets a 95% bootstrap confidence interval over images. Target class: the ground truth.",
        "",
        "## Recognition (thesis Table 3.3 layout)",
        "",
        "| NETWORK | POOL | GFLOPS | #PARAM | " + ("mAP↑" if runner.multilabel else "ACC↑") + " |",
        "|---|---|---|---|---|",
    ]
    for row in models:
        acc = row["accuracy"]
        value = f"{acc['value'] * 100:.2f}"
        if "low" in acc:
            value += f" [{acc['low'] * 100:.2f}, {acc['high'] * 100:.2f}]"
        lines.append(
            f"| {row['model']} | {POOLING_NAMES[row['pooling']]} | {row['gflops']:.3f} | "
            f"{row['parameters'] / 1e6:.2f}M | {value} |"
        )
    for title, keys in TABLES.items():
        present = [k for k in keys if any(k in c["metrics"] for c in cells)]
        if not present:
            continue
        arrows = [f"{COLUMNS[k][0]}{'↓' if COLUMNS[k][2] else '↑'}" for k in present]
        lines += [
            "",
            f"## {title}",
            "",
            "| NETWORK | ATTRIBUTION | POOLING | " + " | ".join(arrows) + " |",
            "|" + "---|" * (3 + len(present)),
        ]
        previous = (None, None)
        for c in cells:
            network = c["model"] if c["model"] != previous[0] else ""
            method = c["method"] if (c["model"], c["method"]) != previous else ""
            previous = (c["model"], c["method"])
            values = [_fmt(c["metrics"].get(k), COLUMNS[k][1]) for k in present]
            lines.append(
                f"| {network} | {method} | {POOLING_NAMES[c['pooling']]} | " + " | ".join(values) + " |"
            )
    lines += [
        "",
        "## Time (thesis Table 2.1 layout)",
        "",
        "| NETWORK | ATTRIBUTION | POOLING | T (s per batch of 8) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c['model']} | {c['method']} | {POOLING_NAMES[c['pooling']]} | {c['seconds_per_8']:.3f} |"
        for c in cells
    ]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _csv_rows(runner, cells: list[dict], models: list[dict]) -> list[dict]:
    rows = []
    by_key = {(m["model"], m["pooling"]): m for m in models}
    for c in cells:
        model = by_key[(c["model"], c["pooling"])]
        row = {
            "model": c["model"],
            "pooling": c["pooling"],
            "method": c["method"],
            "protocol": runner.config.protocol,
            "images": c["images"],
            model["accuracy"]["name"]: round(model["accuracy"]["value"] * 100, 6),
            "parameters": model["parameters"],
            "gflops": round(model["gflops"], 6),
        }
        for key, entry in c["metrics"].items():
            scale = 100 if COLUMNS.get(key, ("", True))[1] else 1
            for part in ("mean", "low", "high"):
                row[key if part == "mean" else f"{key}_{part}"] = round(entry[part] * scale, 6)
        rows.append(row)
    return rows


def write_report(runner) -> dict:
    """Aggregate every cell's shards and write the report files; returns the results dictionary."""
    import castream

    config, out = runner.config, runner.out
    cells = []
    several = len(runner.models) > 1
    fractions = metrics.step_counts(config.size, config.size, config.protocol).double() / config.size**2
    for label, pooling, method in runner.cells():
        rows, timings = read_shards(out, _cell(label, pooling, method))
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
                "label": f"{label} " * several + f"{method} {POOLING_NAMES[pooling]}",
                "images": len(rows),
                "metrics": _aggregate(rows, config.seed).summary(),
                "seconds_per_8": sum(s for s, _ in timings) / max(1, sum(n for _, n in timings)) * 8,
                "curves": curves,
            }
        )
    models = [
        _model_row(runner, label, pooling) for label in runner.models for pooling in runner.poolings(label)
    ]
    figures = _figures(runner, cells)
    results = {
        "config": config.to_dict(),
        "protocol": {"name": config.protocol, **metrics.PROTOCOLS[config.protocol]},
        "versions": {
            "castream": castream.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "images": len(runner.indices),
        "models": models,
        "cells": [{k: v for k, v in c.items() if k != "label"} for c in cells],
        "figures": figures,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    rows = _csv_rows(runner, cells, models)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(_markdown(runner, cells, models, figures))
    return results
