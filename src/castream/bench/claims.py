"""Operating characteristics of the claims' verdict rule (``evaluate.claims``), simulated with known
truth: per-image differences are drawn from distributions with a known mean, every metric of a claim
independently, and judged as a run's claims are (paired studentized bootstrap, Holm over the metrics).

- ``false_contradicted``: no true effect on any metric; the share of claims judged "contradicted"
  (target <= 5% per claim), for symmetric, skewed and sparse 0/1-like differences;
- ``false_reproduced``: every metric but one has a large effect on the claimed side, one has none; the
  share judged "reproduced" (target <= 5%);
- ``power``: every metric has the same standardized effect d on the claimed side; the share judged
  "reproduced". ``--run OUT`` takes the effects and image counts of a finished run's claims instead (e.g.
  the demo's: ``--run demo/report``).

    python -m castream.bench.claims --images 32 --claims 2000
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..evaluate.claims import ALPHA, MIN_IMAGES, judge
from ..metrics.aggregate import studentized_tests
from ._timing import base_parser, emit

KINDS = ("normal", "skewed", "ternary", "lognormal", "rare")


def _draw(kind: str, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Differences of mean 0 and variance 1 of one distribution family."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    if kind == "normal":
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    if kind == "skewed":  # exponential, shifted to mean 0 (skewness 2)
        return -torch.log1p(-u) - 1
    if kind == "lognormal":  # skewness 6
        x = torch.randn(shape, generator=generator, dtype=torch.float64).exp()
        return (x - math.exp(0.5)) / math.sqrt((math.e - 1) * math.e)
    if kind == "ternary":  # -1, 0, +1 w.p. 0.2, 0.6, 0.2: an AI or accuracy difference of mean 0
        return (torch.where(u < 0.2, -1.0, 0.0) + torch.where(u > 0.8, 1.0, 0.0)) / math.sqrt(0.4)
    if kind == "rare":  # +0.9 w.p. 0.1, -0.1 w.p. 0.9: rare large gains (skewness 2.7)
        return (torch.where(u < 0.1, 0.9, -0.1)) / 0.3
    raise ValueError(kind)


def _verdicts(effects: list[float], kind: str, images: int, claims: int, seed: int, resamples: int) -> dict:
    """Shares of verdicts over ``claims`` simulated claims whose metric j has standardized effect
    ``effects[j]`` on the claimed side (+)."""
    generator = torch.Generator().manual_seed(seed)
    tests = []
    for j, d in enumerate(effects):
        diffs = _draw(kind, (claims, images), generator) + d
        tests.append(studentized_tests(diffs, resamples=resamples, seed=seed + j))
    counts = {"reproduced": 0, "contradicted": 0, "inconclusive": 0}
    for c in range(claims):
        found = judge(
            {f"m{j}": tests[j][c] for j in range(len(effects))},
            dict.fromkeys((f"m{j}" for j in range(len(effects))), 1),
        )
        counts[found["verdict"]] += 1
    return {k: v / claims for k, v in counts.items()}


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--claims", type=int, default=2000, help="simulated claims per case")
    parser.add_argument("--metrics", type=int, default=5, help="metrics per claim")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--run", default=None, help="a finished evaluation folder: power at its effects")
    args = parser.parse_args(argv)
    if args.images < MIN_IMAGES:
        parser.error(f"--images must be at least {MIN_IMAGES} (below it no verdict is given)")
    k, n, common = args.metrics, args.images, {"claims": args.claims, "resamples": args.resamples}
    for kind in KINDS:
        null = _verdicts([0.0] * k, kind, n, seed=1, **common)
        one_null = _verdicts([1.0] * (k - 1) + [0.0], kind, n, seed=2, **common)
        emit(
            {
                "benchmark": "claims",
                "differences": kind,
                "images": n,
                "metrics": k,
                "alpha": ALPHA,
                "false_contradicted": null["contradicted"],
                "false_reproduced": one_null["reproduced"],
                "target": "false_contradicted <= 0.05 and false_reproduced <= 0.05",
            }
        )
    if args.run is None:
        effects = {f"d={d}": ([d] * k, n) for d in (0.3, 0.5, 0.8)}
    else:
        results = json.loads((Path(args.run) / "results.json").read_text())
        effects = {}
        for c in results["claims"]:
            ds = []
            for m in c["metrics"].values():  # d = mean / sd, the sd from the interval's half-width
                sd = (m["high"] - m["low"]) / (2 * 1.96) * math.sqrt(m["n"])
                sign = m["expected"] or 1
                ds.append(sign * m["mean"] / sd if sd > 0 else 0.0)
            effects[f"{c['id']} {c['comparison']}"] = (ds, c["images"])
    for name, (ds, count) in effects.items():
        if count < MIN_IMAGES:
            continue
        power = _verdicts(ds, "normal", count, seed=3, **common)
        emit(
            {
                "benchmark": "claims",
                "power_at": name,
                "effects": [round(d, 3) for d in ds],
                "images": count,
                "reproduced": power["reproduced"],
                "contradicted": power["contradicted"],
            }
        )


if __name__ == "__main__":
    main()
