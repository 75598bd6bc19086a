"""Report stage at scale: the time and peak memory of turning a finished run's shards into its report
(collection, bootstrap, GAP-vs-CA comparisons, claims, rendering) for N images, without computing N
images' maps; the report reads the stored files only (no model is loaded). A real 10-cell run (3
methods and the 2 baselines, under GAP and CA; the default metric groups, insertion/deletion curves
included) is evaluated on ``--base`` synthetic images with the demo's classifier and stream; its shard
records are then repeated under new image indices up to N, in a run whose dataset (a CSV) lists N
images, and the report of that run is timed in a fresh process.

    python benchmarks/report.py --images 50000      # issue 29's target: <= 120 s and <= 3 GB on 2 cores
"""

from __future__ import annotations

import csv
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ._timing import base_parser, emit, environment

METHODS = ("gradcam", "gradcam++", "xgradcam")


def _config(root: Path, images: int, out: Path, protocol: str):
    from .. import demo
    from ..evaluate import EvalConfig

    weights = Path(demo.__file__).parent / "demo_weights"
    return EvalConfig(
        model=demo.DemoConfig().model,
        data=f"csv:{root / f'images-{images}.csv'}",
        checkpoint=str(weights / "classifier.safetensors"),
        stream=str(weights / "stream.safetensors"),
        methods=METHODS,
        protocol=protocol,
        images=images,
        size=64,
        resize=64,
        metric_batch=256,
        out=str(out),
    )


def _dataset(root: Path, base: int, images: int) -> None:
    """CSVs of ``base`` synthetic images (labels and boxes) and of ``images`` rows cycling through them:
    row i of the large one is image ``i % base``, so the small run's records hold for it."""
    from ..data import SyntheticShapes, synthetic
    from ..demo import DemoConfig

    demo = DemoConfig()
    folder = synthetic.generate(
        root / "shapes",
        classes=demo.classes,
        train=0,
        val=base + 8 * demo.classes,
        size=demo.size,
        seed=demo.seed,
        scale=demo.shape_scale,
        others=demo.others,
    )
    everything = SyntheticShapes(folder, "val").samples
    # every class among the listed images: the CSV's classes are the labels it lists, and the model has 6
    first = [next(s for s in everything if s.label == c) for c in range(demo.classes)]
    samples = (first + [s for s in everything if s not in first])[:base]
    for count in (base, images):
        with open(root / f"images-{count}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "boxes"])
            for i in range(count):
                s = samples[i % base]
                boxes = ";".join(" ".join(f"{v:g}" for v in box) for box in s.boxes)
                writer.writerow([s.path, s.label, boxes])


def _repeat_shards(small: Path, large: Path, identity: str, base: int, images: int) -> int:
    """Copy every cell's records of the small run into the large one, under indices shifted by
    multiples of ``base`` up to ``images`` (their sidecar arrays with them); returns the bytes written."""
    from ..evaluate.store import Store, record_arrays, shard_records, sidecar

    store = Store(large, log=lambda *a: None)
    store.identity = identity
    for path in sorted((small / "shards").glob("*.jsonl")):
        cell = path.name.split(".rank")[0]
        binary = sidecar(path).read_bytes() if sidecar(path).is_file() else b""
        records = []
        for number, record in shard_records(path):
            arrays = record_arrays(record, binary, len(record["images"]), f"{path}:{number}", sidecar(path))
            records.append(({k: v for k, v in record.items() if k not in ("run", "cell", "arrays")}, arrays))
        for copy in range(0, images, base):
            for record, arrays in records:
                keep = [j for j, row in enumerate(record["images"]) if row["index"] + copy < images]
                if keep:
                    rows = [
                        {**record["images"][j], "index": record["images"][j]["index"] + copy} for j in keep
                    ]
                    store.append(cell, {**record, "images": rows}, {k: v[keep] for k, v in arrays.items()})
    store.sync()
    return sum(p.stat().st_size for p in (large / "shards").iterdir())


def _report(out: Path, queue) -> None:
    """In a fresh process: the report of the finished run, from its stored files (no model is loaded)."""
    from ..evaluate.report import write_report

    try:
        start = time.perf_counter()
        write_report(out, log=lambda *a: None)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
        queue.put({"seconds": time.perf_counter() - start, "peak_rss_gb": peak / 2**30})
    except BaseException as err:  # the parent waits for one message, whatever happens here
        queue.put({"error": f"{type(err).__name__}: {err}"})
        raise


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--base", type=int, default=32, help="images actually evaluated (at least 6)")
    parser.add_argument("--protocol", default="thesis", help="insertion/deletion steps: 'thesis' (224)")
    args = parser.parse_args(argv)
    if args.images < args.base:
        parser.error(f"--images must be at least --base ({args.base})")
    from ..evaluate import Runner

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _dataset(root, args.base, args.images)
        small = _config(root, args.base, root / "small", args.protocol)
        Runner(small, progress=False, log=lambda *a: None).run()
        large = _config(root, args.images, root / "large", args.protocol)
        runner = Runner(large, progress=False, log=lambda *a: None)
        runner.claim()  # writes config.json: the run's identity the copied records carry
        runner.store.write_json("run.json", runner.run_info())
        shutil.copytree(root / "small" / "maps", root / "large" / "maps")  # the grid's first images agree
        size = _repeat_shards(root / "small", root / "large", runner.identity, args.base, args.images)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        shards = {p: p.stat().st_size for p in (root / "large" / "shards").iterdir()}
        process = context.Process(target=_report, args=(root / "large", queue))
        process.start()
        measured = queue.get()
        process.join()
        if "error" in measured:
            raise RuntimeError(f"the report failed: {measured['error']}")
        if {p: p.stat().st_size for p in (root / "large" / "shards").iterdir()} != shards:
            raise RuntimeError("the report stage computed cells: the copied records were not all used")
    cells = 2 * (len(METHODS) + 2)
    emit(
        {
            "benchmark": "report",
            "images": args.images,
            "cells": cells,
            "protocol": args.protocol,
            "shard_gb": size / 2**30,
            **measured,
            "target": "<= 120 s and <= 3 GB at 50,000 images; <= 30 s at 10,000 (2 CPU cores)",
            "environment": environment(__import__("torch").device("cpu")),
        }
    )


if __name__ == "__main__":
    main(sys.argv[1:])
