"""The seeds' claims, checked against an evaluation's numbers.

:data:`CLAIMS` lists every claim of the four source documents (``shared/seeds``) that castream's runner can
test. Each names its source, says the claim in one sentence, and holds its **evidence**: the table cells
(table, row, column, value of A, value of B) it rests on. The direction a claim expects for a metric is
*derived* from those cells: the sign of B − A where every cell agrees; a metric whose cells disagree is
left out of the claim (and its note says so), so that no registered direction can depart from its
tables. :func:`check_claims` finds the claims an evaluation covers and gives each a verdict from paired
studentized bootstrap tests of the per-image differences (:func:`castream.metrics.paired_test`), one-sided
at :data:`ALPHA` = 2.5% (the 95% intervals the report shows):

- **reproduced**: every metric differs on its claimed side (p ≤ α each: an intersection-union test, so a
  false "reproduced" needs every metric wrong and has probability ≤ α);
- **contradicted**: some metric differs on the other side after Holm's correction over the claim's
  metrics (a false "contradicted" has probability ≤ α per claim, however many metrics it has);
- **inconclusive**: otherwise, or with fewer than :data:`MIN_IMAGES` images, with the number of images
  that would likely decide it: an interval's half-width shrinks as 1/sqrt(n), so an undecided metric with
  mean difference m and half-width h at n images is decided near n (h/|m|)^2; the largest of these.

The operating characteristics of this rule, simulated with known truth, are printed by
``castream bench claims``. An "accuracy maintained" claim is an equivalence: reproduced when the 95%
interval of the accuracy difference lies within ±margin, contradicted when it lies outside, inconclusive
otherwise; the margin (:data:`ACCURACY_MARGIN`, settable per run) lies above every ImageNet |ΔACC| of the
seeds. Each claim has a **scope**: the datasets, model families and poolings its tables measured; a run
outside it is still judged, and its row says "extrapolated". :data:`UNTESTABLE` lists the claims left
out, with the reason. Nothing here is a stored result: every verdict is computed from the run's records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from .. import metrics

CA_PAPER = "000_62b68348d9eae980.txt"
THESIS = "002_e98b9679a659a809.txt"
SA_CAM = "003_9bd740d72a775b3e.txt"
UP, DOWN = 1, -1
ALPHA = 0.025  # one-sided level of every test (two-sided 95% intervals)

# The ImageNet accuracy changes of the seeds (thesis Table 3.3 = CA-Stream paper Table 1 + ResNet-18,
# ConvNeXt-S): +0.26, +0.15, -0.12, -0.21 points. 0.5 points is about twice the largest: an honest
# reproduction of any of them is "reproduced" once the interval is narrow enough (~2,000 images), a
# change of a point is not. Set another one per run (EvalConfig.accuracy_margin, --accuracy-margin).
ACCURACY_MARGIN = 0.005
# below this many images no verdict: a bootstrap of a few pairs has too few distinct resamples to trust
MIN_IMAGES = 30


@dataclass(frozen=True)
class Cell:
    """One number pair of a seed's table that a claim rests on: ``column`` is castream's metric key, ``a``
    and ``b`` the values of the claim's A and B (GAP and CA, or the other method and the claimed one)."""

    table: str
    row: str
    column: str
    a: float
    b: float


@dataclass(frozen=True)
class Scope:
    """Where a claim's tables measured it: data kinds (``EvalConfig.data``'s ``KIND:``), model families
    (``"cnn"``, ``"vit"``) and, for comparisons of methods, the poolings (the seeds' Opti-CAM, Fake-CAM and
    SA-CAM tables use plain models: GAP)."""

    datasets: tuple[str, ...] = ("imagenet",)
    families: tuple[str, ...] = ("cnn",)
    poolings: tuple[str, ...] = ("gap",)

    def describe(self) -> str:
        return f"{'/'.join(self.datasets)}, {'/'.join(f.upper() for f in self.families)}"


@dataclass(frozen=True)
class Claim:
    """One testable claim. ``kind``: ``"pooling"`` (B = CA, A = GAP for ``method``), ``"methods"`` (B =
    ``method``, A = ``other``, under the scope's poolings), ``"columns"`` (B and A are two metrics of one
    cell of ``method``: ``columns`` maps each evidence column to its (key of A, key of B)), or
    ``"accuracy"`` (CA vs GAP top-1 accuracy, an equivalence), or ``"streams"`` (two streams of one
    classifier through CA: B's and A's settings in ``streams``, ``method``'s cells, or the accuracy cells
    when ``method`` is None). ``method`` and ``other`` may name a variant (``"opticam[objective=diff]"``,
    matched by :func:`matches`). ``via``: evidence columns checked through another metric, ``(column,
    metric, factor)`` (the fading rate through Acc_adv, factor -1). ``equivalence``: the accuracy claim
    is "B within ±margin of A" rather than a direction."""

    id: str
    document: str
    section: str
    text: str
    kind: str
    evidence: tuple[Cell, ...]
    method: str | None = None
    other: str | None = None
    columns: tuple[tuple[str, str, str], ...] = ()
    via: tuple[tuple[str, str, int], ...] = ()
    streams: tuple[dict, dict] | None = None
    equivalence: bool = False
    scope: Scope = Scope()
    note: str = ""

    @property
    def equivalent(self) -> bool:
        return self.kind == "accuracy" or self.equivalence

    @property
    def table(self) -> str:
        return ", ".join(dict.fromkeys(c.table for c in self.evidence))

    def directions(self) -> dict[str, int]:
        """Each evidence column's sign of B − A where all its cells agree (no tie): the claimed direction."""
        signs: dict[str, set[int]] = {}
        for cell in self.evidence:
            signs.setdefault(cell.column, set()).add((cell.b > cell.a) - (cell.b < cell.a))
        return {k: s.pop() for k, s in signs.items() if len(s) == 1 and 0 not in s}

    def mixed(self) -> list[str]:
        """Evidence columns left out because their cells disagree (or tie); none for an equivalence."""
        if self.equivalent:
            return []
        return [k for k in dict.fromkeys(c.column for c in self.evidence) if k not in self.directions()]

    @property
    def expected(self) -> tuple[tuple[str, int], ...]:
        """(tested metric, sign of B − A) pairs, from :meth:`directions` (0: the accuracy equivalence)."""
        if self.equivalent:
            return (("accuracy", 0),)
        via = {column: (key, factor) for column, key, factor in self.via}
        out = []
        for column, sign in self.directions().items():
            key, factor = via.get(column, (column, 1))
            out.append((key, sign * factor))
        return tuple(out)

    def keys(self, metric: str) -> tuple[str, str]:
        """(key in A's cell, key in B's cell) of a tested metric."""
        pairs = {column: (a, b) for column, a, b in self.columns}
        return pairs.get(metric, (metric, metric))


_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "opticam": "Opti-CAM",
    "fakecam": "Fake-CAM",
    "sacam": "SA-CAM",
}
_ARROWS = {UP: "higher", DOWN: "lower"}


def _metric_title(key: str) -> str:
    from . import groups

    try:
        return groups.column(key).title
    except KeyError:
        return key


def _cells(table: str, columns: tuple[str, ...], rows: dict[str, tuple]) -> tuple[Cell, ...]:
    """The cells of one table: ``rows`` maps a row to its (A, B) value pairs, one per column."""
    return tuple(
        Cell(table, row, k, a, b) for row, pairs in rows.items() for k, (a, b) in zip(columns, pairs)
    )


def _claim(text_b: str, text_a: str, **fields) -> Claim:
    """A claim whose sentence is written from its derived directions ("B gives AD lower, ... than A"),
    and whose note names the evidence columns its cells leave undecided."""
    claim = Claim(text="", **fields)
    parts = ", ".join(f"{_metric_title(k)} {_ARROWS[s]}" for k, s in claim.directions().items())
    note = claim.note
    if claim.mixed() and not note:
        left = ", ".join(_metric_title(k) for k in claim.mixed())
        note = f"{left} left out: the cells of {claim.table} disagree on its direction"
    return Claim(**{**claim.__dict__, "text": f"{text_b} gives {parts} than {text_a}.", "note": note})


_CA = ("ad", "ag", "ai", "insertion", "deletion")
# CA-Stream paper Tables 1-2 (= thesis Table 3.1), ImageNet: (GAP, CA) of AD, AG, AI, I, D per network
_CA_IMAGENET = {
    "gradcam": {
        "Table 1": {
            "ResNet-50": ((13.04, 12.54), (17.56, 22.67), (44.47, 48.56), (72.57, 75.53), (13.24, 13.50)),
            "ConvNeXt-B": ((33.72, 19.45), (2.43, 13.96), (15.25, 32.89), (52.85, 86.38), (29.57, 45.29)),
        },
        "Table 2": {
            "ResNet-18": ((17.64, 16.99), (12.73, 17.22), (41.21, 44.95), (63.13, 65.94), (10.66, 10.68)),
            "ConvNeXt-S": ((42.99, 22.09), (1.69, 14.91), (12.60, 32.65), (48.42, 84.82), (30.12, 43.02)),
        },
    },
    "gradcam++": {
        "Table 1": {
            "ResNet-50": ((13.79, 13.99), (15.87, 19.29), (42.08, 44.60), (72.32, 75.21), (13.33, 13.78)),
            "ConvNeXt-B": ((34.01, 36.69), (2.37, 8.00), (15.60, 21.95), (52.83, 85.39), (29.17, 53.42)),
        },
        "Table 2": {
            "ResNet-18": ((19.05, 19.02), (11.16, 14.76), (37.99, 40.82), (62.80, 65.53), (10.75, 10.82)),
            "ConvNeXt-S": ((56.42, 51.87), (1.32, 9.40), (10.35, 20.55), (48.28, 84.28), (33.41, 52.58)),
        },
    },
    "scorecam": {
        "Table 1": {
            "ResNet-50": ((8.83, 7.09), (17.97, 23.65), (48.46, 54.20), (71.99, 74.91), (14.31, 14.68)),
            "ConvNeXt-B": ((43.55, 23.51), (2.23, 11.04), (15.67, 27.35), (50.96, 83.41), (39.49, 60.53)),
        },
        "Table 2": {
            "ResNet-18": ((13.64, 11.53), (12.98, 18.12), (44.53, 50.32), (62.56, 65.33), (11.37, 11.51)),
            "ConvNeXt-S": ((74.79, 64.21), (1.29, 8.81), (10.10, 18.96), (47.40, 82.92), (38.21, 57.46)),
        },
    },
}
# CA-Stream paper Table 3: CUB-200-2011, ResNet-50
_CA_CUB = {
    "gradcam": ((10.87, 10.44), (10.29, 17.61), (45.81, 53.54), (65.71, 74.60), (6.17, 6.56)),
    "gradcam++": ((11.35, 11.01), (9.68, 16.50), (44.32, 51.63), (65.64, 74.64), (5.92, 6.21)),
    "scorecam": ((9.05, 6.37), (10.62, 19.50), (48.90, 60.41), (65.58, 74.22), (5.94, 2.14)),
}
_GRADCAMPP_NOTE = (
    "AD is left out: Table 1 has it rising with CA (ResNet-50 13.79 → 13.99, ConvNeXt-B 34.01 → 36.69) and "
    "Table 2 falling (ResNet-18 19.05 → 19.02, ConvNeXt-S 56.42 → 51.87), though §4's sentence speaks of "
    "consistent improvements in AD; castream follows the tables"
)
# thesis Table 2.1 (ImageNet, CNNs): AD, AG, AI of (ResNet50, VGG16)
_T21 = {
    "fakecam": {"ResNet50": (0.8, 1.6, 46.0), "VGG16": (0.5, 0.6, 42.6)},
    "gradcam": {"ResNet50": (12.2, 17.6, 44.4), "VGG16": (14.2, 14.7, 40.6)},
    "opticam": {"ResNet50": (1.5, 68.8, 92.8), "VGG16": (1.3, 71.2, 92.7)},
}
# thesis Table 2.5 (VGG16): AD, AG, AI of S, B∩S and S∖B per method; S := B and S := I∖B
_T25 = {
    "gradcam": ((15.0, 72.6, 52.1), (15.3, 1.8, 6.0), (40.4, 8.4, 19.4)),
    "gradcam++": ((16.5, 72.9, 53.1), (10.6, 1.6, 4.1), (35.2, 7.3, 17.1)),
    "scorecam": ((12.5, 71.5, 50.5), (16.1, 2.2, 6.3), (42.5, 8.6, 20.8)),
    "opticam": ((1.4, 62.5, 34.8), (66.3, 8.7, 25.8), (92.5, 18.6, 47.1)),
}
_T25_BOX, _T25_COMPLEMENT = (67.2, 2.3, 9.2), (44.0, 2.8, 16.3)  # AD, AG, AI of S := B and S := I∖B


def _pairs(a: dict[str, tuple], b: dict[str, tuple]) -> dict[str, tuple]:
    """{row: ((a, b) per column)} from two {row: values} dicts with the same rows."""
    return {row: tuple(zip(a[row], b[row])) for row in a}


def _opti_vs_gradcam(table: str, columns: tuple[str, ...], opti: dict, grad: dict, **fields) -> Claim:
    return _claim(
        "Opti-CAM",
        "Grad-CAM",
        document=THESIS,
        kind="methods",
        evidence=_cells(table, columns, _pairs(grad, opti)),
        method="opticam",
        other="gradcam",
        **fields,
    )


# thesis Table 2.8 (VGG16, 1,000 ImageNet images): Opti-CAM's AD, AG, AI per (objective, normalization)
_T28 = {
    ("mask", "range"): (1.4, 66.3, 92.5),
    ("diff", "range"): (7.1, 18.5, 54.9),
    ("mask", "max"): (1.6, 66.2, 90.3),
    ("diff", "max"): (6.8, 17.8, 54.5),
    ("mask", "sigmoid"): (5.0, 18.3, 57.5),
    ("diff", "sigmoid"): (6.5, 10.0, 45.3),
}
_NORMS = {"range": "Range (2.9)", "max": "Max (2.10)", "sigmoid": "Sigmoid (2.11)"}


def _opticam(objective: str, normalization: str) -> str:
    """The variant name of Opti-CAM with these options (the defaults, mask and range, left out)."""
    options = [
        f"{k}={v}"
        for k, v, d in (("objective", objective, "mask"), ("normalization", normalization, "range"))
        if v != d
    ]
    return f"opticam[{','.join(options)}]" if options else "opticam"


def _objective_claim(norm: str) -> Claim:
    a, b = _T28[("diff", norm)], _T28[("mask", norm)]
    return _claim(
        f"Opti-CAM's Mask objective (2.6) with {_NORMS[norm]} normalization",
        "the Diff objective (2.12)",
        id=f"opti-cam/objective/{norm}",
        document=THESIS,
        section="2.8 Ablation study",
        kind="methods",
        evidence=_cells("Table 2.8", ("ad", "ag", "ai"), {f"Mask vs Diff, {_NORMS[norm]}": tuple(zip(a, b))}),
        method=_opticam("mask", norm),
        other=_opticam("diff", norm),
    )


# CA-Stream paper Table 5 (ResNet-50, ImageNet): AG, AI, I of S0-S4 and S4-S4 per method
_T5 = {
    "gradcam": ((22.67, 20.65), (48.56, 47.14), (75.53, 74.32)),
    "gradcam++": ((19.29, 18.36), (44.60, 44.40), (75.21, 74.19)),
    "scorecam": ((23.65, 19.45), (54.20, 50.45), (74.91, 74.19)),
}
_PLACEMENT_NOTE = (
    "the placements' claim is the paper's 'S4–S4 is inferior': AG, AI and I; AD is left out (its cells "
    "disagree: Grad-CAM 12.54 → 12.77, Grad-CAM++ 13.99 → 13.67), and so is D, lower with S4–S4 in every "
    "row (13.50 → 13.37, 13.78 → 13.30, 14.68 → 14.46), which the paper's sentence does not discuss"
)
# stream settings of the variants (run.json "streams"): start "last" = the last tap alone (S_L - S_L)
_S0, _SL = {"start": 0}, {"start": "last"}


CLAIMS: tuple[Claim, ...] = (
    *(
        _claim(
            f"CA-Stream pooling (B) of {_NAMES[method]}",
            "GAP (A)",
            id=f"ca-stream/{method}",
            document=CA_PAPER,
            section="4. Experiments",
            kind="pooling",
            evidence=sum((_cells(t, _CA, rows) for t, rows in _CA_IMAGENET[method].items()), ()),
            method=method,
            scope=Scope(poolings=("gap", "ca")),
            note=_GRADCAMPP_NOTE if method == "gradcam++" else "",
        )
        for method in ("gradcam", "gradcam++", "scorecam")
    ),
    *(
        _claim(
            f"On CUB, CA-Stream pooling (B) of {_NAMES[method]}",
            "GAP (A)",
            id=f"ca-stream/cub/{method}",
            document=CA_PAPER,
            section="D. More Architectures",
            kind="pooling",
            evidence=_cells("Table 3", _CA, {"CUB-200-2011 ResNet-50": _CA_CUB[method]}),
            method=method,
            scope=Scope(datasets=("cub",), poolings=("gap", "ca")),
        )
        for method in ("gradcam", "gradcam++", "scorecam")
    ),
    Claim(
        id="ca-stream/accuracy",
        document=THESIS,
        section="3.6 Quantitative Evaluation",
        text="CA-Stream keeps the classifier's accuracy: CA − GAP within ±margin (Table 3.3's changes are "
        "+0.26, +0.15, −0.12 and −0.21 points).",
        kind="accuracy",
        evidence=_cells(
            "Table 3.3",
            ("accuracy",),
            {
                "ResNet-18": ((67.28, 67.54),),
                "ResNet-50": ((74.55, 74.70),),
                "ConvNeXt-S": ((83.26, 83.14),),
                "ConvNeXt-B": ((83.72, 83.51),),
            },
        ),
        scope=Scope(poolings=("gap", "ca")),
    ),
    _opti_vs_gradcam(
        "Table 2.1",
        ("ad", "ag", "ai"),
        _T21["opticam"],
        _T21["gradcam"],
        id="opti-cam/classification",
        section="2.7 Quantitative Evaluation",
    ),
    _opti_vs_gradcam(
        "Table 2.3",
        ("aopc", "max_sensitivity"),
        {"ResNet50": (6.3, 1.03), "VGG16": (8.9, 1.06)},
        {"ResNet50": (11.7, 1.05), "VGG16": (13.1, 1.10)},
        id="opti-cam/aopc-ms",
        section="2.7 Quantitative Evaluation",
    ),
    _opti_vs_gradcam(
        "Table 2.4",
        ("insertion",),
        {"ResNet50": (62.0,), "VGG16": (59.2,)},
        {"ResNet50": (66.3,), "VGG16": (64.1,)},
        id="opti-cam/insertion",
        section="2.7 Quantitative Evaluation",
    ),
    _opti_vs_gradcam(
        "Table 2.6",
        ("om", "le", "sp", "ep"),
        {"ResNet50": (72.2, 64.8, 59.4, 30.5), "VGG16": (69.1, 59.9, 61.4, 30.7)},
        {"ResNet50": (72.9, 65.8, 69.8, 33.3), "VGG16": (71.1, 62.3, 64.8, 32.0)},
        id="opti-cam/localization",
        section="2.9 Discussion",
    ),
    *(
        _claim(
            "Fake-CAM, which explains nothing,",
            _NAMES[other],
            id=f"fake-cam/{other}",
            document=THESIS,
            section="2.7 Quantitative Evaluation",
            kind="methods",
            evidence=_cells("Table 2.1", ("ad", "ag", "ai"), _pairs(_T21[other], _T21["fakecam"])),
            method="fakecam",
            other=other,
        )
        for other in ("gradcam", "opticam")
    ),
    *(
        _claim(
            f"Restricting {_NAMES[method]}'s map to the box (B∩S)",
            "the map itself (S)",
            id=f"box-study/{method}",
            document=THESIS,
            section="2.7 Quantitative Evaluation",
            kind="columns",
            evidence=_cells(
                "Table 2.5",
                ("ad", "ag", "ai"),
                {f"{_NAMES[method]} S vs B∩S": tuple((v[0], v[1]) for v in _T25[method])},
            ),
            method=method,
            columns=(("ad", "ad", "ad_inside"), ("ag", "ag", "ag_inside"), ("ai", "ai", "ai_inside")),
        )
        for method in ("gradcam", "gradcam++", "scorecam", "opticam")
    ),
    _claim(
        "The box's complement as a map (S := I∖B)",
        "the box (S := B)",
        id="box-study/complement",
        document=THESIS,
        section="2.7 Quantitative Evaluation",
        kind="columns",
        evidence=_cells(
            "Table 2.5", ("ad", "ag", "ai"), {"S := B vs S := I∖B": tuple(zip(_T25_BOX, _T25_COMPLEMENT))}
        ),
        method="fakecam",  # the pseudo-maps do not depend on the method: read in the baseline's cell
        columns=(
            ("ad", "ad_box", "ad_complement"),
            ("ag", "ag_box", "ag_complement"),
            ("ai", "ai_box", "ai_complement"),
        ),
    ),
    *(
        _claim(
            "SA-CAM",
            _NAMES[other],
            id=f"sa-cam/adversarial-{other}",
            document=SA_CAM,
            section="4.6. Adversarial Verification",
            kind="methods",
            evidence=_cells(
                "Table 4", ("adversarial",), {f"Case-{j + 1}": ((a, b),) for j, (a, b) in enumerate(rows)}
            ),
            method="sacam",
            other=other,
        )
        for other, rows in (
            ("gradcam", ((18.40, 22.35), (21.59, 29.26), (29.73, 34.67))),
            ("scorecam", ((22.31, 22.35), (24.18, 29.26), (28.11, 34.67))),
        )
    ),
    *(
        _claim(
            "SA-CAM",
            _NAMES[other],
            id=f"sa-cam/fading-{other}",
            document=SA_CAM,
            section="4.6. Adversarial Verification",
            kind="methods",
            evidence=_cells(
                "Table 5", ("fading",), {f"Case-{j + 1}": ((a, b),) for j, (a, b) in enumerate(rows)}
            ),
            method="sacam",
            other=other,
            via=(("fading", "adversarial", -1),),
            note="checked through Acc_adv: on one set of images the clean accuracy is one number, and the "
            "fading rate 1 − Acc_adv / Acc_clean is Acc_adv rescaled (lower fading = higher Acc_adv)",
        )
        for other, rows in (
            ("gradcam", ((75.56, 70.31), (71.32, 61.14), (60.51, 53.95))),
            ("scorecam", ((70.37, 70.31), (67.88, 61.14), (62.66, 53.95))),
        )
    ),
    _claim(
        "SA-CAM",
        "Grad-CAM",
        id="sa-cam/insertion-deletion-gradcam",
        document=SA_CAM,
        section="4.5. Deletion and Insertion",
        kind="methods",
        evidence=(
            Cell("Table 1", "Total", "insertion", 1.924, 2.035),
            Cell("Table 2", "Total", "deletion", 0.464, 0.301),
        ),
        method="sacam",
        other="gradcam",
    ),
    _claim(
        "SA-CAM",
        "Score-CAM",
        id="sa-cam/insertion-scorecam",
        document=SA_CAM,
        section="4.5. Deletion and Insertion",
        kind="methods",
        evidence=(Cell("Table 1", "Total", "insertion", 2.001, 2.035),),
        method="sacam",
        other="scorecam",
        note="deletion is not claimed: Table 2's SA-CAM total (0.301) is above Score-CAM's (0.269), "
        "which the paper calls very close",
    ),
    *(_objective_claim(norm) for norm in _NORMS),
    _claim(
        "Opti-CAM with the Mask objective and Sigmoid normalization (2.11)",
        "with Range (2.9)",
        id="opti-cam/normalization",
        document=THESIS,
        section="2.8 Ablation study",
        kind="methods",
        evidence=_cells(
            "Table 2.8",
            ("ad", "ag", "ai"),
            {"Mask, Sigmoid vs Range": tuple(zip(_T28[("mask", "range")], _T28[("mask", "sigmoid")]))},
        ),
        method=_opticam("mask", "sigmoid"),
        other=_opticam("mask", "range"),
        note="the Diff objective's row is not claimed: with Sigmoid its AD improves (7.1 → 6.5) while AG "
        "and AI worsen, so the tables give AD no direction across objectives",
    ),
    _claim(
        "The CA block (6) (B)",
        "PROJ→CA (11) (A)",
        id="ca-stream/block",
        document=CA_PAPER,
        section="E. Ablation Experiments",
        kind="streams",
        evidence=(Cell("Table 4", "ResNet-50", "accuracy", 74.41, 74.70),),
        streams=({"block": "proj"}, {"block": "ca"}),
        scope=Scope(poolings=("ca",)),
    ),
    *(
        _claim(
            f"{_NAMES[method]} on a stream from the first stage (S0–S4)",
            "on the last stage alone (S4–S4)",
            id=f"ca-stream/placement/{method}",
            document=CA_PAPER,
            section="E. Ablation Experiments",
            kind="streams",
            evidence=_cells(
                "Table 5",
                ("ag", "ai", "insertion"),
                {f"{_NAMES[method]} S4–S4 vs S0–S4": tuple((b, a) for a, b in _T5[method])},
            ),
            method=method,
            streams=(_SL, _S0),
            scope=Scope(poolings=("ca",)),
            note=_PLACEMENT_NOTE,
        )
        for method in _T5
    ),
    Claim(
        id="ca-stream/class-specific",
        document=CA_PAPER,
        section="E. Ablation Experiments",
        text="A class-specific query (B) keeps the class-agnostic stream's (A) accuracy: B − A within "
        "±margin (Table 6: 74.68 vs 74.70); it brings no improvement.",
        kind="streams",
        evidence=(Cell("Table 6", "ResNet-50", "accuracy", 74.70, 74.68),),
        streams=({"class_specific": False}, {"class_specific": True}),
        equivalence=True,
        scope=Scope(poolings=("ca",)),
        note="an equivalence on accuracy: Table 6's interpretability differences (≤ 0.15 points) have no "
        "margin in the paper to test them against",
    ),
)

UNTESTABLE: tuple[tuple[str, str], ...] = (
    (
        "Thesis ch. 4 (Tables 4.1-4.3): the gradient regularizer improves the interpretability metrics",
        "an evaluation compares models by label; it cannot tell which one was trained with the regularizer "
        "(compare them with --compare and read the models table)",
    ),
    (
        "Thesis Table 2.8: Opti-CAM's normalization 'has little effect overall' (Range vs Max)",
        "'little effect' names no margin to test an equivalence against; Sigmoid's lower performance is "
        "registered (opti-cam/normalization)",
    ),
    (
        "Thesis §2.7 (Table 2.1): Opti-CAM is on par with or faster than the gradient-free methods",
        "times are per batch, not per image, so no paired interval exists; the Time table reports them",
    ),
    (
        "Thesis Tables 2.2, 2.4 and 2.7 (ViT-B, DeiT-B) and CA-Stream paper Table 3 (Pascal VOC)",
        "not registered: the transformer columns compare methods castream's runner does not evaluate there "
        "side by side with the CNN claims, and the paper draws no conclusion from VOC (its cells disagree "
        "across methods)",
    ),
    (
        "Thesis §1.3 / Adebayo et al.: saliency maps change when the model's weights are randomized",
        "metrics.sanity_check runs outside the runner (it re-initializes copies of the model)",
    ),
)


def _holm(p_values: dict[str, float], alpha: float) -> list[str]:
    """The keys whose hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``."""
    rejected = []
    for rank, (key, p) in enumerate(sorted(p_values.items(), key=lambda kv: kv[1])):
        if p > alpha / (len(p_values) - rank):
            break
        rejected.append(key)
    return rejected


def judge(tests: dict[str, dict], expected: dict[str, int], alpha: float = ALPHA) -> dict:
    """Verdict of a directional claim from :func:`metrics.paired_test` results (module docstring):
    ``{"verdict", "images_to_decide", "against"}``, ``against`` the metrics that contradict it."""
    few = _too_few(tests.values())
    if few:
        return few
    claimed = {k: tests[k]["p_greater" if sign > 0 else "p_less"] for k, sign in expected.items()}
    other = {k: tests[k]["p_less" if sign > 0 else "p_greater"] for k, sign in expected.items()}
    against = _holm(other, alpha)
    if against:
        return {"verdict": "contradicted", "images_to_decide": None, "against": against}
    if all(p <= alpha for p in claimed.values()):
        return {"verdict": "reproduced", "images_to_decide": None, "against": []}
    open_ = [tests[k] for k, p in claimed.items() if p > alpha]
    needed = _needed(open_, lambda e: abs(e["mean"]))
    return {"verdict": "inconclusive", "images_to_decide": needed, "against": []}


def judge_equivalence(entry: dict, margin: float) -> dict:
    """Verdict of an equivalence claim: the difference's 95% interval within ±margin (module docstring).
    Below 1/margin images a single image that changes exceeds the margin, so equivalence cannot be shown:
    inconclusive."""
    if not (isinstance(margin, int | float) and math.isfinite(margin) and 0 < margin < 1):
        raise ValueError(f"the accuracy margin must be a fraction in (0, 1), e.g. 0.005; got {margin!r}")
    few = _too_few([entry], minimum=max(MIN_IMAGES, math.ceil(1 / margin)))
    if few:
        return few
    if -margin <= entry["low"] and entry["high"] <= margin:
        return {"verdict": "reproduced", "images_to_decide": None, "against": []}
    if entry["low"] > margin or entry["high"] < -margin:
        return {"verdict": "contradicted", "images_to_decide": None, "against": ["accuracy"]}
    return {
        "verdict": "inconclusive",
        "images_to_decide": _needed([entry], lambda e: abs(margin - abs(e["mean"]))),
        "against": [],
    }


def significant(test: dict) -> bool:
    """The report's "significant" for a :func:`metrics.paired_test` result, by the claims' rule: at least
    :data:`MIN_IMAGES` images, and a one-sided p at most :data:`ALPHA` on either side (the 95% interval
    excludes 0)."""
    return test["n"] >= MIN_IMAGES and min(test["p_greater"], test["p_less"]) <= ALPHA


def _too_few(entries, minimum: int = MIN_IMAGES) -> dict | None:
    """Inconclusive below ``minimum`` images, whatever the tests say; a test with a non-finite mean or
    bound (above 1 image) is an error: no verdict rests on it."""
    entries = list(entries)
    for e in entries:
        values = [e[k] for k in ("mean", "low", "high") if k in e]
        if e["n"] >= 2 and not all(math.isfinite(v) for v in values):
            raise ValueError(f"a claim's test has non-finite values ({e}): no verdict rests on it")
    n = min(e["n"] for e in entries)
    return {"verdict": "inconclusive", "images_to_decide": minimum, "against": []} if n < minimum else None


def _needed(entries: list[dict], distance) -> int | None:
    """Images at which every interval's half-width would shrink to its ``distance`` from the boundary."""
    counts = []
    for entry in entries:
        gap, half = distance(entry), (entry["high"] - entry["low"]) / 2
        if gap == 0 or not math.isfinite(gap) or not math.isfinite(half) or entry["n"] == 0:
            return None
        counts.append(math.ceil(entry["n"] * (half / gap) ** 2))
    return max(counts) if counts else None


def _applies(claim: Claim, kind: str) -> bool:
    """Whether a run on data ``kind`` checks ``claim``: the claims of its own dataset when the seeds
    measured it (CUB's on CUB), else the ImageNet claims, as extrapolations (a user's folder, the demo)."""
    measured = {d for c in CLAIMS for d in c.scope.datasets}
    return kind in claim.scope.datasets or (kind not in measured and "imagenet" in claim.scope.datasets)


def _in_scope(claim: Claim, run, label: str) -> bool:
    """Whether the run measures what the claim's tables measured: the data kind and the model family."""
    kind = run.config.data.partition(":")[0]
    family = run.info.get("families", {}).get(label) if hasattr(run, "info") else None
    return kind in claim.scope.datasets and (family is None or family in claim.scope.families)


@cache
def _defining() -> dict[str, frozenset[str]]:
    """Per method, the options some claim's variant names: they tell the variants apart in a run."""
    from ..saliency import canonical, split_spec

    out: dict[str, set[str]] = {}
    for claim in CLAIMS:
        for name in (claim.method, claim.other):
            if name:
                out.setdefault(canonical(split_spec(name)[0]), set()).update(split_spec(name)[1])
    return {k: frozenset(v) for k, v in out.items()}


def _resolved(name: str, options: dict) -> tuple[str, dict]:
    """(registry name, every option with its default) of a method variant given ``options`` besides."""
    from ..saliency import canonical, method_defaults, spec

    cls, inline = spec(name)
    return canonical(name.partition("[")[0]), {**method_defaults(cls), **options, **inline}


def matches(run_method: str, claimed: str, options: dict | None = None) -> bool:
    """Whether a run's method (``options``: its ``method_options``) is the variant a claim names: the same
    method, and the same value of every option that tells that method's claimed variants apart (a plain
    name in a claim means those options' defaults: ``opticam`` is Mask with Range normalization)."""
    base, have = _resolved(run_method, options or {})
    claimed_base, want = _resolved(claimed, {})
    keys = _defining().get(base, frozenset())
    return base == claimed_base and all(have.get(k) == want.get(k) for k in keys)


def _stream_value(settings: dict, key: str, value):
    return settings.get("taps", 0) - 1 if (key, value) == ("start", "last") else value


def _stream_pairs(claim: Claim, streams: dict[str, dict]) -> list[tuple[str, str]]:
    """(label of A, label of B) of the run's streams that differ as the claim's variants do and agree on
    every other setting (block, placement, class-specific query)."""
    spec_a, spec_b = claim.streams
    keys = ("block", "start", "class_specific")

    def fits(settings: dict, spec: dict) -> bool:
        return all(settings.get(k) == _stream_value(settings, k, v) for k, v in spec.items())

    return [
        (a, b)
        for a, sa in streams.items()
        for b, sb in streams.items()
        if a != b
        and fits(sa, spec_a)
        and fits(sb, spec_b)
        and all(sa.get(k) == sb.get(k) for k in keys if k not in spec_a and k not in spec_b)
    ]


def _cell_pairs(claim: Claim, run, label: str, methods: list[str]) -> list[tuple[tuple, tuple]]:
    """The (A cell, B cell) pairs of model ``label`` a claim compares; cells are (label, pooling, method)."""
    poolings = run.plan.poolings[label]
    options = run.config.method_options

    def found(claimed: str) -> list[str]:
        return [m for m in methods if matches(m, claimed, options.get(m))]

    if claim.kind in ("accuracy", "pooling"):
        if set(poolings) != {"gap", "ca"} or (claim.kind == "accuracy" and run.multilabel):
            return []
        names = ["accuracy"] if claim.kind == "accuracy" else found(claim.method)
        return [((label, "gap", m), (label, "ca", m)) for m in names]
    scoped = [p for p in poolings if p in claim.scope.poolings]
    if claim.kind == "columns":
        return [((label, p, m), (label, p, m)) for p in scoped for m in found(claim.method)]
    return [
        ((label, p, a), (label, p, b))
        for p in scoped
        for a in found(claim.other)
        for b in found(claim.method)
    ]


def check_claims(runner, tables: dict, seed: int, margin: float = ACCURACY_MARGIN) -> list[dict]:
    """Every claim the evaluation covers, with its measured differences and verdict. ``tables``: the
    per-image columns (``results.Columns``) of each (model label, pooling, method) cell, the accuracy
    cells as method ``"accuracy"``; ``margin``: the accuracy equivalence margin."""
    out = []
    methods, kind = list(runner.config.methods), runner.config.data.partition(":")[0]
    streams = runner.info.get("streams", {}) if hasattr(runner, "info") else {}
    for claim in (c for c in CLAIMS if _applies(c, kind)):
        if claim.kind == "streams":
            if claim.method is None and runner.multilabel:
                continue
            names = (
                ["accuracy"]
                if claim.method is None
                else [m for m in methods if matches(m, claim.method, runner.config.method_options.get(m))]
            )
            pairs = [((a, "ca", m), (b, "ca", m)) for a, b in _stream_pairs(claim, streams) for m in names]
        else:
            pairs = [
                pair for label in runner.plan.poolings for pair in _cell_pairs(claim, runner, label, methods)
            ]
        for cell_a, cell_b in pairs:
            entry = _check(tables, claim, cell_a, cell_b, seed, margin)
            if entry is not None:
                entry["scope"] = (
                    "in scope"
                    if _in_scope(claim, runner, cell_b[0])
                    else (f"extrapolated (measured on {claim.scope.describe()})")
                )
                out.append(entry)
    return out


def _check(tables, claim: Claim, a: tuple, b: tuple, seed: int, margin: float) -> dict | None:
    first, second = tables.get(a), tables.get(b)
    expected = dict(claim.expected)
    if first is None or second is None or not first.common(second):
        return None
    pairs = {key: first.paired(second, *claim.keys(key)) for key in expected}
    if any(pair is None for pair in pairs.values()):
        return None
    tests = metrics.paired_tests(pairs, seed=seed)
    verdict = judge_equivalence(tests["accuracy"], margin) if claim.equivalent else judge(tests, expected)
    if claim.kind == "columns":
        comparison = f"{b[2]} {b[1].upper()}: " + ", ".join(
            f"{_metric_title(kb)} − {_metric_title(ka)}" for ka, kb in map(claim.keys, expected)
        )
    elif claim.kind == "streams":
        comparison = f"{b[2]} CA: {b[0]} − {a[0]}"
    else:
        comparison = f"{b[2]} {b[1].upper()} − {a[2]} {a[1].upper()}"
    label = b[0] if a[0] == b[0] else f"{b[0]} vs {a[0]}"
    return {
        "id": claim.id,
        "source": f"{claim.document} {claim.section}, {claim.table}",
        "claim": claim.text,
        "note": claim.note,
        "model": label,
        "comparison": comparison,
        "images": first.common(second),
        "metrics": {
            key: {
                "expected": expected[key],
                **{k: tests[key][k] for k in ("mean", "low", "high", "n", "p_greater", "p_less")},
            }
            for key in expected
        },
        **verdict,
    }
