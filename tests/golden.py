"""The golden record of the evaluation engine (issue 29): a small evaluation that covers every metric
group, whose results.csv and claims table were written by the engine before its rewrite. The engine
must reproduce them byte for byte (``tests/test_golden.py``); ``python tests/golden.py`` writes them
again, for a change that is meant to alter them (its commit says which columns and why).

A record is exact to the float reductions of the CPU that wrote it (2 threads, this torch build): an AMD
EPYC with AVX2 and the machine of the first record differ in the 6th-7th significant digit. So there is
one record per CPU kind the engine was recorded on before its rewrite: ``tests/data/golden`` (the first
one, the CI machine's) and ``tests/data/golden/<cpu capability>/`` (``avx2``: written by the pre-rewrite
engine, commit 2b7cddd, on an AVX2 machine). The engine must reproduce one of them byte for byte."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import castream
from castream.evaluate import EvalConfig, Runner
from castream.evaluate.groups import group_names

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
WEIGHTS = Path(castream.demo.__file__).parent / "demo_weights"


def evaluate(folder: Path) -> Path:
    """The golden evaluation, run in ``folder``: the demo's shipped classifier and stream on 24 synthetic
    images, Grad-CAM and the two baselines under GAP and CA, every metric group. Returns the run folder."""
    torch.manual_seed(0)
    demo = castream.demo.DemoConfig()
    root = castream.data.synthetic.generate(
        folder / "shapes",
        classes=demo.classes,
        train=0,
        val=24,
        size=demo.size,
        seed=demo.seed,
        scale=demo.shape_scale,
        others=demo.others,
    )
    config = EvalConfig(
        model=demo.model,
        data=f"synthetic:{root}",
        checkpoint=str(WEIGHTS / "classifier.safetensors"),
        stream=str(WEIGHTS / "stream.safetensors"),
        methods=("gradcam",),
        metrics=group_names(),
        protocol="coarse",
        images=24,
        batch_size=8,
        size=demo.size,
        resize=demo.size,
        metric_options={"max-sensitivity": {"samples": 2}, "aopc": {"patch_size": 16, "regions": 4}},
        out=str(folder / "run"),
    )
    Runner(config, progress=False, log=lambda *a: None).run()
    return folder / "run"


def records() -> list[Path]:
    """The folders of every stored record (see the module docstring)."""
    return [GOLDEN, *sorted(p for p in GOLDEN.iterdir() if p.is_dir())]


def claims_table(run: Path) -> str:
    """The report's claims section (results.md), as the golden record keeps it."""
    text = (run / "results.md").read_text()
    start = text.index("## Claims of the papers, checked")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None].rstrip() + "\n"


if __name__ == "__main__":
    import tempfile

    # python tests/golden.py [FOLDER]: write the record into FOLDER (default: tests/data/golden)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        run = evaluate(Path(folder))
        target.mkdir(parents=True, exist_ok=True)
        (target / "results.csv").write_bytes((run / "results.csv").read_bytes())
        (target / "claims.md").write_text(claims_table(run))
    print(target, file=sys.stderr)
