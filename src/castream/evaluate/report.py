"""Report: results.json (everything), results.csv (one row per model/pooling/method), results.md (tables
laid out like thesis Tables 3.1, 2.6 and 3.3) and figures. It only renders what ``results.collect``
aggregates from a run folder's stored files (:class:`results.StoredRun`): no model, no runner."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import torch

from .. import metrics
from ..utils import write_owned
from . import figures, groups
from .claims import MIN_IMAGES
from .figures import POOLING_NAMES
from .results import StoredRun, collect
from .store import cell_name

ARROWS = {True: "↓", False: "↑", None: ""}  # lower is better / higher is better / descriptive
BLUR_NAMES = {"gaussian": "Gaussian", "rise": "RISE gkern"}


def _fmt(entry: dict | None, percent: bool) -> str:
    """``mean [low, high]``: a percentage with 2 decimals, or a raw value with 3."""
    if entry is None or entry["n"] == 0:
        return "–"
    scale, digits = (100, 2) if percent else (1, 3)
    mean, low, high = (entry[k] * scale for k in ("mean", "low", "high"))
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summary(runner, cells: list[dict], models: list[dict], compared: list[dict]) -> str:
    """A plain-language paragraph generated from the numbers (no sentence is hard-coded to a result)."""
    config = runner.config
    parts = []
    for row in models:
        acc = row["accuracy"]
        text = (
            f"{row['model']} with {POOLING_NAMES[row['pooling']]} pooling classifies "
            f"{acc['value'] * 100:.1f}% of the {acc['images']} images correctly"
            if acc["value"] is not None
            else f"{row['model']} with {POOLING_NAMES[row['pooling']]} pooling explains its predictions on "
            f"{acc['images']} images whose classes are not the model's (no accuracy)"
        )
        if "probability" in acc:
            p = acc["probability"]
            text += (
                f"; its clean probability of the true class has mean {p['mean']:.2f} "
                f"(quartiles {p['q1']:.2f} / {p['median']:.2f} / {p['q3']:.2f})"
            )
        parts.append(text + ".")
    by = {(c["model"], c["pooling"], c["method"]): c for c in cells}
    label, pooling = cells[0]["model"], cells[0]["pooling"]
    real = [m for m in config.methods if m not in config.baselines]

    def value(method: str, key: str) -> float | None:
        cell = by.get((label, pooling, method))
        entry = cell["metrics"].get(key) if cell else None
        return None if entry is None or entry["n"] == 0 else entry["mean"]

    pool = POOLING_NAMES[pooling]
    for key, better in (("insertion", max), ("sp", max), ("ag", max), ("discrimination", max)):
        scored = [(value(m, key), m) for m in real if value(m, key) is not None]
        if not scored:
            continue
        best_value, best = better(scored)
        base = [f"{b} {value(b, key) * 100:.1f}%" for b in config.baselines if value(b, key) is not None]
        title = groups.column(key).title
        text = f"With {pool} pooling the best {title} ({'higher' if better is max else 'lower'} is "
        text += f"better) is {best}'s {best_value * 100:.1f}%" + (
            f", against {', '.join(base)}" if base else ""
        )
        matched = [
            b for b in config.baselines if (v := value(b, key)) is not None and better(v, best_value) == v
        ]
        if matched:
            text += (
                f" — matched by {' and '.join(matched)}, so {title} does not separate the methods "
                "from a map that explains nothing here"
            )
        parts.append(text + ".")
    fake_ad = value("fakecam", "ad")
    beaten = [m for m in real if fake_ad is not None and (v := value(m, "ad")) is not None and fake_ad < v]
    if beaten:
        parts.append(
            f"Fake-CAM, which keeps the whole image and explains nothing, has an AD of {fake_ad * 100:.2f}%, "
            f"lower than {', '.join(beaten)}: AD alone rewards trivial maps, so read it together with AG, AI "
            "and insertion/deletion (thesis §2.4)."
        )
    if compared:
        significant = []
        for entry in compared:
            if entry["method"] in config.baselines:
                continue
            keys = [
                f"{groups.column(k).title} {'+' if v['mean'] > 0 else ''}{v['mean'] * 100:.1f}"
                for k, v in entry["metrics"].items()
                if v["significant"]
            ]
            if keys:
                significant.append(f"{entry['method']} ({', '.join(keys)})")
        total = len([e for e in compared if e["method"] not in config.baselines])
        parts.append(
            f"CA vs GAP: {len(significant)} of {total} methods differ significantly "
            f"(paired studentized bootstrap, 95%, at least {MIN_IMAGES} images) on at least one metric"
            + (": " + "; ".join(significant) + " (CA - GAP, points)." if significant else ".")
        )
    return " ".join(parts)


def _comparison_table(compared: list[dict]) -> list[str]:
    keys = [k for k in groups.compared_keys() if any(k in e["metrics"] for e in compared)]
    lines = [
        "",
        "## GAP vs CA (paired studentized bootstrap over the same images)",
        "",
        "CA − GAP in points, with the 95% interval of the difference; **sig.** when it excludes 0, by the "
        f"claims' rule: never on fewer than {MIN_IMAGES} images (*too few* then).",
        "",
        "| NETWORK | ATTRIBUTION | N | " + " | ".join(f"Δ{groups.column(k).title}" for k in keys) + " |",
        "|" + "---|" * (3 + len(keys)),
    ]
    for e in compared:
        values = []
        for k in keys:
            v = e["metrics"].get(k)
            if v is None or v["n"] == 0:
                values.append("–")
                continue
            text = f"{v['mean'] * 100:+.2f} [{v['low'] * 100:+.2f}, {v['high'] * 100:+.2f}]"
            verdict = " *too few*" if v["n"] < MIN_IMAGES else " **sig.**" if v["significant"] else " n.s."
            values.append(text + verdict)
        lines.append(f"| {e['model']} | {e['method']} | {e['images']} | " + " | ".join(values) + " |")
    return lines


def _claims_sentence(claims: list[dict]) -> str:
    """The summary's sentence on the claims: how many of each verdict."""
    if not claims:
        return ""
    counts = {
        v: sum(c["verdict"] == v for c in claims) for v in ("reproduced", "contradicted", "inconclusive")
    }
    listed = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f' Claims of the papers this evaluation covers: {listed} (table "Claims of the papers, checked").'


def _claims_table(claims: list[dict]) -> list[str]:
    """One row per checked claim: the measured differences against the claimed directions, the verdict."""
    arrows = {1: "↑", -1: "↓", 0: "≈"}
    lines = [
        "",
        "## Claims of the papers, checked",
        "",
        "Differences B − A (in points where the metric is a percentage) with their 95% paired studentized "
        "bootstrap interval, against the direction the claim's table cells have (↑ B higher, ↓ lower, ≈ "
        "equal within the accuracy margin). Reproduced: every metric on the claimed side (one-sided p ≤ "
        "2.5% each); contradicted: a metric on the other side after Holm's correction over the claim's "
        "metrics (marked ✗); inconclusive: otherwise, with the number of images that would likely decide it "
        "(from the observed spread). A claim measured on other data or models than this run's is "
        '"extrapolated".',
        "",
        "| CLAIM | SOURCE | B − A | N | DIFFERENCES | VERDICT | SCOPE |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        parts = []
        for k, m in c["metrics"].items():
            scale = 100 if _percent(k) else 1
            parts.append(
                f"{_title(k)} {arrows[m['expected']]} {m['mean'] * scale:+.2f} "
                f"[{m['low'] * scale:+.2f}, {m['high'] * scale:+.2f}]" + (" ✗" if k in c["against"] else "")
            )
        verdict = c["verdict"] + (
            f" (~{c['images_to_decide']} images would decide)" if c["images_to_decide"] else ""
        )
        note = f" Note: {c['note']}." if c["note"] else ""
        lines.append(
            f"| {c['claim']}{note} (`{c['id']}`) | {c['source']} | {c['comparison']} | {c['images']} | "
            f"{'; '.join(parts)} | {verdict} | {c['scope']} |"
        )
    return lines


def _percent(key: str) -> bool:
    try:
        return groups.column(key).percent
    except KeyError:  # accuracy
        return True


def _coverage(cells: list[dict]) -> list[str]:
    """A warning paragraph when a cell holds fewer images than it was asked for (an unfinished run)."""
    short = [
        f"{c['label']}: {c['images']} of {c['images_asked']}"
        for c in cells
        if c["images"] < c["images_asked"]
    ]
    if not short:
        return []
    return [f"**Incomplete:** some cells cover fewer images than asked ({'; '.join(short)}).", ""]


def _skipped(entries: list[dict]) -> list[str]:
    if not entries:
        return []
    listed = "; ".join(e["reason"] for e in entries[:10]) + ("; ..." if len(entries) > 10 else "")
    unlabelled = sum("no class to explain" in e["reason"] for e in entries)
    kinds = [
        f"{count} {what}"
        for count, what in (
            (len(entries) - unlabelled, "unreadable image(s)"),
            (unlabelled, "image(s) without an object to explain"),
        )
        if count
    ]
    return [f"**Skipped:** {' and '.join(kinds)} left out of every table ({listed}).", ""]


def _with_cases(keys: tuple[str, ...], cells: list[dict]) -> list[str]:
    """``keys`` with the per-host columns (``adversarial_case1``, ...) found in the cells after their mean."""
    found = {k for c in cells for k in c["metrics"] if "_case" in k}
    number = lambda k: int(k.rpartition("_case")[2])  # noqa: E731
    out = []
    for key in keys:
        out.append(key)
        out += sorted((k for k in found if k.rpartition("_case")[0] == key), key=number)
    return out


def _title(key: str) -> str:
    """A key's column title (the key itself when no group declares it)."""
    try:
        return groups.column(key).title
    except KeyError:
        return key


def _ignored(warnings: list[str]) -> list[str]:
    """A warning paragraph when shard records were ignored (another run's, or a second one of an image)."""
    if not warnings:
        return []
    listed = "; ".join(warnings[:5]) + ("; ..." if len(warnings) > 5 else "")
    return [f"**Ignored records:** {len(warnings)} shard record(s) were not used ({listed}).", ""]


def _markdown(runner, cells: list[dict], models: list[dict], figures: list[str], results: dict) -> str:
    config = runner.config
    settings = metrics.PROTOCOLS[config.protocol]
    maps = runner.map_size()
    blur = config.metric_options.get("insertion", {}).get("blur") or settings["blur"]
    wrong = sum("correct predictions only" in s["reason"] for s in results["skipped"])
    correct = (
        f"Explanations of correct predictions only (thesis §1.3.4): the {wrong} image(s) the GAP classifier "
        "misclassifies are skipped by every method cell (the accuracy cells keep every image). "
        if config.correct_only
        else ""
    )
    lines = [
        f"# castream evaluation: {config.model} on {config.data}",
        "",
        results["summary"],
        "",
        correct
        + f"{len(runner.indices)} evaluation images at {config.size}x{config.size}, seed {config.seed}"
        + (f"; explained layer {maps[0]} with {maps[1]} × {maps[2]} feature maps" if maps else "")
        + ". "
        f"Causal metrics use protocol `{config.protocol}` ({metrics.step_rule(config.protocol)}, "
        f"insertion from a {BLUR_NAMES[blur]} blur with kernel {settings['blur_kernel']} and sigma "
        f"{settings['blur_sigma']} ({settings['blur_padding']} padding), deletion to {settings['deletion']}, "
        f"{settings['ties']} tie order). Percentages except SM (nats) and "
        "MS; in brackets a 95% bootstrap confidence interval over images; N is the number of images of the "
        "row. Target class: the ground truth"
        + (
            " (multi-label images: every positive class, one row per image-class pair; confidence intervals "
            "resample the pairs)"
            if runner.multilabel and config.multilabel_targets == "all"
            else " (multi-label images: the positive class with the highest logit)"
            if runner.multilabel
            else ""
        )
        + (". Probabilities: per-class sigmoids" if config.scores == "sigmoid" else "")
        + f". Input statistics: mean {runner.preprocess.mean}, std {runner.preprocess.std}"
        + (
            f". The models ran under {config.amp} autocast (castream's own steps in float32)"
            if config.amp
            else ""
        )
        + (", channels_last" if config.channels_last else "")
        + ". Baselines: "
        + ", ".join(_baseline_text(runner, b) for b in config.baselines or ("none",))
        + ".",
        "",
        *(
            [
                "Metric options (non-default): "
                + "; ".join(
                    f"{group}: " + ", ".join(f"{k}={v}" for k, v in opts.items())
                    for group, opts in config.metric_options.items()
                )
                + ".",
                "",
            ]
            if config.metric_options
            else []
        ),
        *_coverage(cells),
        *_skipped(results["skipped"]),
        *_ignored(results["ignored_records"]),
        "## Recognition (thesis Table 3.3 layout)",
        "",
        "| NETWORK | POOL | GFLOPS | #PARAM | "
        + ("mAP↑" if runner.multilabel else "ACC↑ | p(true class): mean [q1, median, q3]")
        + " |",
        "|---|---|---|---|---|" + ("" if runner.multilabel else "---|"),
    ]
    for row in models:
        acc = row["accuracy"]
        value = f"{acc['value'] * 100:.2f}" if acc["value"] is not None else "–"
        if "low" in acc:
            value += f" [{acc['low'] * 100:.2f}, {acc['high'] * 100:.2f}]"
        if not runner.multilabel:
            p = acc.get("probability")
            value += " | " + (
                f"{p['mean']:.3f} [{p['q1']:.3f}, {p['median']:.3f}, {p['q3']:.3f}]" if p else "–"
            )
        lines.append(
            f"| {row['model']} | {POOLING_NAMES[row['pooling']]} | {row['gflops']:.3f} | "
            f"{row['parameters'] / 1e6:.2f}M | {value} |"
        )
    for name, table in groups.TABLES.items():
        keys = _with_cases(groups.table_keys(name), cells)  # a column per host ("case") after its mean
        present = [k for k in keys if any(k in c["metrics"] for c in cells)]
        if not any(groups.column(k).table == name for k in present):
            continue
        columns = [groups.column(k) for k in present]
        title = table.title
        arrows = [c.title + ARROWS[c.lower_is_better] for c in columns]
        lines += [
            "",
            f"## {title}",
            "",
            "| NETWORK | ATTRIBUTION | POOLING | N | " + " | ".join(arrows) + " |",
            "|" + "---|" * (4 + len(present)),
        ]
        previous = (None, None)
        for c in cells:
            network = c["model"] if c["model"] != previous[0] else ""
            method = c["method"] if (c["model"], c["method"]) != previous else ""
            previous = (c["model"], c["method"])
            values = [_fmt(c["metrics"].get(k), column.percent) for k, column in zip(present, columns)]
            count = (
                str(c["images"])
                if c["images"] == c["images_asked"]
                else f"{c['images']} of {c['images_asked']} ⚠"
            ) + (f" ({c['rows']} image-class pairs)" if c["rows"] != c["images"] else "")
            lines.append(
                f"| {network} | {method} | {POOLING_NAMES[c['pooling']]} | {count} | "
                + " | ".join(values)
                + " |"
            )
    if results["comparisons"]:
        lines += _comparison_table(results["comparisons"])
    if results["claims"]:
        lines += _claims_table(results["claims"])
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
            "images_asked": c["images_asked"],
            model["accuracy"]["name"]: (
                round(model["accuracy"]["value"] * 100, 6) if model["accuracy"]["value"] is not None else ""
            ),
            "parameters": model["parameters"],
            "gflops": round(model["gflops"], 6),
        }
        for key, entry in c["metrics"].items():
            scale = 100 if _percent(key) else 1
            for part in ("mean", "low", "high"):
                row[key if part == "mean" else f"{key}_{part}"] = round(entry[part] * scale, 6)
        rows.append(row)
    return rows


def _percent(key: str) -> bool:
    """Whether ``key`` is reported x100 (a key no group declares is)."""
    try:
        return groups.column(key).percent
    except KeyError:
        return True


def _baseline_text(runner, name: str) -> str:
    """A baseline as the report names it: what the random map is, so that its scores read right."""
    if name == "fakecam":
        return "Fake-CAM (keeps every pixel but one)"
    if name != "random":
        return name
    grid = runner.config.method_options.get("random", {}).get("grid", "layer")
    lattice = (
        "the explained layer's resolution"
        if grid == "layer"
        else "one value per pixel"
        if grid == "pixel"
        else f"a {grid} x {grid} grid"
    )
    return (
        f"random (seeded uniform noise at {lattice}, upsampled: what a map of that smoothness scores by "
        "chance)"
    )


def write_report(run, log=print, *, overwrite: bool = False) -> dict:
    """Render the results (:func:`results.collect`) of run folder ``run`` (a path, or a
    :class:`results.StoredRun`) as results.json, results.csv, results.md, per_image.csv and the figures;
    returns the results dictionary. Each file is written atomically and recorded in the folder's manifest
    (:func:`castream.utils.write_owned`): a file castream did not write there, a changed one or a symbolic
    link is never written through, unless ``overwrite`` (which replaces the link, not its target)."""
    import castream

    runner = run if isinstance(run, StoredRun) else StoredRun(getattr(run, "out", run), log=log)
    config, out = runner.config, runner.out
    found = collect(runner)
    cells, models, compared, claims = found["cells"], found["models"], found["comparisons"], found["claims"]
    several = len(runner.plan.poolings) > 1
    for c in cells:  # the cell's name in tables and figures
        c["label"] = f"{c['model']} " * several + f"{c['method']} {POOLING_NAMES[c['pooling']]}"
    drawn = figures.render(runner, cells)
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
        "skipped": found["skipped"],
        "ignored_records": found["ignored_records"],
        "comparisons": compared,
        "claims": claims,
        "summary": summary(runner, cells, models, compared) + _claims_sentence(claims),
        "figures": list(drawn),
    }
    rows = _csv_rows(runner, cells, models)
    markdown = _markdown(runner, cells, models, list(drawn), results)
    files = {
        "results.json": lambda tmp: tmp.write_text(json.dumps(results, indent=1)),
        "results.csv": lambda tmp: _write_csv(tmp, rows),
        "results.md": lambda tmp: tmp.write_text(markdown),
        PER_IMAGE: lambda tmp: write_per_image(runner, tmp),
        **drawn,
    }
    write_owned(out, files, overwrite, hint=REPORT_HINT)
    return results


REPORT_HINT = "move them away, or re-render with `castream report OUT --overwrite` to replace them"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)


PER_IMAGE = "per_image.csv"  # one row per image, cell and target: pandas.read_csv("per_image.csv")


def write_per_image(runner, path) -> None:
    """Every per-image value of every method cell (the per-image metrics; BoxAcc's IoUs and other (n, m)
    arrays are summarized only in the tables): columns model, pooling, method, index, target (the class
    explained, for runs that explain several per image), then the metrics as stored (fractions, not
    percentages), written with a per-cell format string (500,000 rows in seconds)."""

    tables = {cell: runner.records(cell_name(*cell)).table() for cell in runner.plan.cells()}
    names = list(dict.fromkeys(k for t in tables.values() for k, v in t.values.items() if v.ndim == 1))
    with open(path, "w") as f:
        f.write(",".join(["model", "pooling", "method", "index", "target", *names]) + "\n")
        for (label, pooling, method), table in tables.items():
            if not len(table):
                continue
            present = [n for n in names if n in table.values]
            fields = [f"%({n}).9g" if n in present else "" for n in names]
            prefix = f"{_csv_field(label)},{pooling},{method},".replace("%", "%%")
            template = prefix + "%(index)d,%(target)s," + ",".join(fields)
            index = [k[0] if isinstance(k, tuple) else k for k in table.keys]
            target = [str(k[1]) if isinstance(k, tuple) else "" for k in table.keys]
            columns = {"index": index, "target": target, **{n: table.values[n].tolist() for n in present}}
            keys = list(columns)
            f.writelines(template % dict(zip(keys, row)) + "\n" for row in zip(*columns.values()))


def _csv_field(text: str) -> str:
    """``text`` as one CSV field (quoted when it holds a comma, a quote or a newline)."""
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
