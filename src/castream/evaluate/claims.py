"""The seeds' claims, checked against an evaluation's numbers.

:data:`CLAIMS` lists every claim of the four source documents (``shared/seeds``) that an evaluation of
castream's runner can test: each names its source, says the claim in one sentence, and fixes the
comparison and the expected direction of each metric. :func:`check_claims` finds the claims an
evaluation covers and gives each a verdict from paired-bootstrap intervals of the per-image differences:

- **reproduced**: every metric's 95% interval lies on the claimed side of 0;
- **contradicted**: at least one lies on the other side;
- **inconclusive**: otherwise, or with fewer than :data:`MIN_IMAGES` images, with the number of images
  that would likely decide it: the interval's
  half-width shrinks as 1/sqrt(n), so an undecided metric with mean difference m and half-width h at n
  images is decided near n (h/|m|)^2; the largest of these (none when a mean is exactly 0).

An "accuracy maintained" claim is an equivalence: reproduced when the interval of the accuracy
difference lies within ±margin, contradicted when it lies outside, inconclusive otherwise; the margin is
the seed's own largest |ΔACC| (:data:`ACCURACY_MARGIN`). :data:`UNTESTABLE` lists the claims left out,
with the reason. Nothing here is a stored result: every verdict is computed from the run's records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import metrics

CA_PAPER = "000_62b68348d9eae980.txt"
THESIS = "002_e98b9679a659a809.txt"
SA_CAM = "003_9bd740d72a775b3e.txt"
UP, DOWN = 1, -1

# CA-Stream paper Table 1: ResNet-50 74.55 -> 74.70, ConvNeXt-B 83.72 -> 83.51; the largest |ΔACC|
ACCURACY_MARGIN = 0.0021
# below this many images a percentile bootstrap interval is too narrow to trust (2 pairs have 3 possible
# resample means): no verdict
MIN_IMAGES = 20


@dataclass(frozen=True)
class Claim:
    """One testable claim. ``kind``: ``"pooling"`` (B = CA, A = GAP for ``method``), ``"methods"`` (B =
    ``method``, A = ``other``, under every pooling evaluated), or ``"accuracy"`` (CA vs GAP top-1
    accuracy, an equivalence within :data:`ACCURACY_MARGIN`). ``expected``: metric -> sign of B − A."""

    id: str
    document: str
    section: str
    table: str
    text: str
    kind: str
    expected: tuple[tuple[str, int], ...]
    method: str | None = None
    other: str | None = None


_CA_TEXT = (
    "CA-Stream improves over GAP on AD, AG, AI and insertion for {method}, while performing lower on "
    "deletion (its D is higher)."
)
_CA_EXPECTED = (("ad", DOWN), ("ag", UP), ("ai", UP), ("insertion", UP), ("deletion", UP))

CLAIMS: tuple[Claim, ...] = (
    *(
        Claim(
            id=f"ca-stream/{method}",
            document=CA_PAPER,
            section="4. Experiments",
            table="Table 1",
            text=_CA_TEXT.format(method=name),
            kind="pooling",
            expected=_CA_EXPECTED,
            method=method,
        )
        for method, name in (("gradcam", "Grad-CAM"), ("gradcam++", "Grad-CAM++"), ("scorecam", "Score-CAM"))
    ),
    Claim(
        id="ca-stream/accuracy",
        document=CA_PAPER,
        section="4. Experiments",
        table="Table 1",
        text="CA-Stream keeps the classifier's accuracy (its largest change in Table 1 is 0.21 points).",
        kind="accuracy",
        expected=(("accuracy", 0),),
    ),
    Claim(
        id="opti-cam/ad-ai",
        document=THESIS,
        section="2.7 Quantitative Evaluation",
        table="Table 2.1",
        text="Opti-CAM improves AD and AI over the CAM methods (here: over Grad-CAM).",
        kind="methods",
        expected=(("ad", DOWN), ("ai", UP)),
        method="opticam",
        other="gradcam",
    ),
    Claim(
        id="opti-cam/localization",
        document=THESIS,
        section="2.9 Discussion",
        table="Table 2.6",
        text="Opti-CAM trades localization for faithfulness: its pointing game is worse than Grad-CAM's.",
        kind="methods",
        expected=(("sp", DOWN), ("ep", DOWN)),
        method="opticam",
        other="gradcam",
    ),
    *(
        Claim(
            id=f"fake-cam/{method}",
            document=THESIS,
            section="2.7 Quantitative Evaluation",
            table="Table 2.1",
            text=f"Fake-CAM, which explains nothing, wins AD but fails AG (here: against {name}).",
            kind="methods",
            expected=(("ad", DOWN), ("ag", DOWN)),
            method="fakecam",
            other=method,
        )
        for method, name in (("gradcam", "Grad-CAM"), ("opticam", "Opti-CAM"))
    ),
    *(
        Claim(
            id=f"sa-cam/adversarial-{other}",
            document=SA_CAM,
            section="4.6. Adversarial Verification",
            table="Table 4",
            text=f"SA-CAM's key area is more robust than {name}'s in adversarial environments (accuracy).",
            kind="methods",
            expected=(("adversarial", UP),),
            method="sacam",
            other=other,
        )
        for other, name in (("gradcam", "Grad-CAM"), ("scorecam", "Score-CAM"))
    ),
)

UNTESTABLE: tuple[tuple[str, str], ...] = (
    (
        "Thesis ch. 4 (Tables 4.1-4.3): the gradient regularizer improves the interpretability metrics",
        "an evaluation compares models by label; it cannot tell which one was trained with the regularizer "
        "(compare them with --compare and read the models table)",
    ),
    (
        "Thesis §3.6 (Table 3.6): a class-specific stream brings no improvement over a class-agnostic one",
        "needs two streams of the same classifier; one evaluation holds one",
    ),
    (
        "Thesis §2.7 (Table 2.1): Opti-CAM is on par with or faster than the gradient-free methods",
        "times are per batch, not per image, so no paired interval exists; the Time table reports them",
    ),
    (
        "Thesis §2.7 (Table 2.2) and §3.6 (Table 3.2): results on transformers, CUB and VOC",
        "properties of those models and datasets; they apply to an evaluation of them, not in general",
    ),
    (
        "SA-CAM §4.6 (Table 5): lower fading rate than Grad-CAM and Score-CAM",
        "the fading rate is a ratio of dataset means, with no per-image difference to pair; its per-image "
        "parts (Acc_adv) are checked instead",
    ),
    (
        "Thesis §1.3 / Adebayo et al.: saliency maps change when the model's weights are randomized",
        "metrics.sanity_check runs outside the runner (it re-initializes copies of the model)",
    ),
)


def judge(intervals: dict[str, dict], expected: dict[str, int]) -> dict:
    """Verdict of a directional claim from paired-bootstrap intervals (module docstring)."""
    few = _too_few(intervals.values())
    if few:
        return few
    sides = {}
    for key, sign in expected.items():
        entry = intervals[key]
        if entry["low"] * sign > 0 and entry["high"] * sign > 0:
            sides[key] = "claimed"
        elif entry["low"] * sign < 0 and entry["high"] * sign < 0:
            sides[key] = "other"
        else:
            sides[key] = "open"
    if "other" in sides.values():
        return {"verdict": "contradicted", "images_to_decide": None}
    if all(side == "claimed" for side in sides.values()):
        return {"verdict": "reproduced", "images_to_decide": None}
    open_ = [intervals[k] for k, side in sides.items() if side == "open"]
    return {"verdict": "inconclusive", "images_to_decide": _needed(open_, lambda e: abs(e["mean"]))}


def judge_equivalence(entry: dict, margin: float) -> dict:
    """Verdict of an equivalence claim: the difference's interval within ±margin (module docstring).
    Below 1/margin images a single image that changes exceeds the margin, so equivalence cannot be shown:
    inconclusive."""
    few = _too_few([entry], minimum=max(MIN_IMAGES, math.ceil(1 / margin)))
    if few:
        return few
    if -margin <= entry["low"] and entry["high"] <= margin:
        return {"verdict": "reproduced", "images_to_decide": None}
    if entry["low"] > margin or entry["high"] < -margin:
        return {"verdict": "contradicted", "images_to_decide": None}
    return {
        "verdict": "inconclusive",
        "images_to_decide": _needed([entry], lambda e: abs(margin - abs(e["mean"]))),
    }


def _too_few(entries, minimum: int = MIN_IMAGES) -> dict | None:
    """Inconclusive below ``minimum`` images, whatever the intervals say."""
    n = min(e["n"] for e in entries)
    return {"verdict": "inconclusive", "images_to_decide": minimum} if n < minimum else None


def _needed(entries: list[dict], distance) -> int | None:
    """Images at which every interval's half-width would shrink to its ``distance`` from the boundary."""
    counts = []
    for entry in entries:
        gap, half = distance(entry), (entry["high"] - entry["low"]) / 2
        if gap == 0 or not math.isfinite(gap) or entry["n"] == 0:
            return None
        counts.append(math.ceil(entry["n"] * (half / gap) ** 2))
    return max(counts) if counts else None


def check_claims(runner, tables: dict, seed: int) -> list[dict]:
    """Every claim the evaluation covers, with its measured differences and verdict. ``tables``: the
    per-image columns (``results.Columns``) of each (model label, pooling, method) cell, the accuracy
    cells as method ``"accuracy"``."""
    out = []
    for label in runner.plan.poolings:
        poolings = runner.plan.poolings[label]
        for claim in CLAIMS:
            if claim.kind == "accuracy":
                if set(poolings) != {"gap", "ca"} or runner.multilabel:
                    continue
                pairs = [("gap", "ca", "accuracy", "accuracy")]
            elif claim.kind == "pooling":
                if set(poolings) != {"gap", "ca"} or claim.method not in runner.config.methods:
                    continue
                pairs = [("gap", "ca", claim.method, claim.method)]
            else:
                if not {claim.method, claim.other} <= set(runner.config.methods):
                    continue
                pairs = [(p, p, claim.other, claim.method) for p in poolings]
            for pool_a, pool_b, method_a, method_b in pairs:
                entry = _check(tables, claim, label, (pool_a, method_a), (pool_b, method_b), seed)
                if entry is not None:
                    out.append(entry)
    return out


def _check(tables, claim: Claim, label: str, a: tuple, b: tuple, seed: int) -> dict | None:
    first, second = (tables.get((label, pooling, method)) for pooling, method in (a, b))
    expected = dict(claim.expected)
    if first is None or second is None or not first.common(second):
        return None
    pairs = {key: first.paired(second, key) for key in expected}
    if any(pair is None for pair in pairs.values()):
        return None
    intervals = {key: metrics.paired_bootstrap(*pair, seed=seed) for key, pair in pairs.items()}
    if claim.kind == "accuracy":
        verdict = judge_equivalence(intervals["accuracy"], ACCURACY_MARGIN)
    else:
        verdict = judge(intervals, expected)
    return {
        "id": claim.id,
        "source": f"{claim.document} {claim.section}, {claim.table}",
        "claim": claim.text,
        "model": label,
        "comparison": f"{b[1]} {b[0].upper()} − {a[1]} {a[0].upper()}",
        "images": first.common(second),
        "metrics": {
            key: {"expected": expected[key], **{k: intervals[key][k] for k in ("mean", "low", "high", "n")}}
            for key in expected
        },
        **verdict,
    }
