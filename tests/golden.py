"""The golden record of the evaluation engine (issue 29): a small evaluation that covers every metric
group, whose results.csv and claims table were written by the engine before its rewrite. The engine
must reproduce them byte for byte (``tests/test_golden.py``); ``python tests/golden.py`` writes them
again, for a change that is meant to alter them (its commit says which columns and why). The record is
exact to this machine's float reductions (2 threads, this torch build): another CPU or torch version may
need it written again, which its commit must then say."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import castream
from castream.evaluate import EvalConfig, Runner
from castream.evaluate.runner import METRIC_GROUPS

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
        metrics=METRIC_GROUPS,
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


def claims_table(run: Path) -> str:
    """The report's claims section (results.md), as the golden record keeps it."""
    text = (run / "results.md").read_text()
    start = text.index("## Claims of the papers, checked")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None].rstrip() + "\n"


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        run = evaluate(Path(folder))
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / "results.csv").write_bytes((run / "results.csv").read_bytes())
        (GOLDEN / "claims.md").write_text(claims_table(run))
    print(GOLDEN, file=sys.stderr)
