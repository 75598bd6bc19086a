"""The claims registry and the verdict rule (issue 23)."""

import math
from pathlib import Path

import pytest
import torch

from castream import metrics, saliency
from castream.evaluate import claims
from castream.evaluate.groups import columns as registered_columns

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def _test(differences):
    return metrics.paired_test(torch.zeros(len(differences)), torch.tensor(differences), seed=0)


def test_verdict_rule_on_hand_made_differences():
    torch.manual_seed(0)
    up = (1 + 0.1 * torch.randn(50)).tolist()  # clearly positive
    down = (-1 + 0.1 * torch.randn(50)).tolist()
    small = (0.05 + torch.randn(40)).tolist()  # mean 0.05 +- ~0.3: undecided
    assert claims.judge({"ag": _test(up)}, {"ag": 1})["verdict"] == "reproduced"
    assert claims.judge({"ad": _test(down)}, {"ad": -1})["verdict"] == "reproduced"
    # one metric clearly on the other side contradicts, whatever the others say
    both = claims.judge({"ag": _test(up), "ad": _test(up)}, {"ag": 1, "ad": -1})
    assert both == {"verdict": "contradicted", "images_to_decide": None, "against": ["ad"]}
    entry = _test(small)
    assert entry["low"] < 0 < entry["high"] and entry["p_greater"] > claims.ALPHA
    open_ = claims.judge({"ag": _test(up), "ai": entry}, {"ag": 1, "ai": 1})
    half = (entry["high"] - entry["low"]) / 2
    assert open_ == {
        "verdict": "inconclusive",
        "images_to_decide": math.ceil(40 * (half / abs(entry["mean"])) ** 2),
        "against": [],
    }
    assert open_["images_to_decide"] > 40
    zero = claims.judge(
        {"ag": {"n": 50, "mean": 0.0, "low": -1.0, "high": 1.0, "p_greater": 0.5, "p_less": 0.5}}, {"ag": 1}
    )
    assert zero == {"verdict": "inconclusive", "images_to_decide": None, "against": []}  # no count predicted
    # too few images for a trustworthy bootstrap: no verdict, however clear it looks
    few = claims.judge({"ag": _test(up[:5])}, {"ag": 1})
    assert few == {"verdict": "inconclusive", "images_to_decide": claims.MIN_IMAGES, "against": []}


def _p(p_greater, p_less, n=100):
    return {"n": n, "mean": 0.1, "low": 0.0, "high": 0.2, "p_greater": p_greater, "p_less": p_less}


def test_contradiction_is_holm_corrected_and_reproduction_needs_every_metric():
    expected = {f"m{j}": 1 for j in range(5)}
    # one metric at p = 0.01 against the claim: below 2.5% alone, not below Holm's 2.5% / 5 = 0.5%
    tests = {**{k: _p(0.001, 0.999) for k in expected}, "m4": _p(0.99, 0.01)}
    assert claims.judge(tests, expected)["verdict"] == "inconclusive"
    tests["m4"] = _p(0.999, 0.004)
    assert claims.judge(tests, expected) == {
        "verdict": "contradicted",
        "images_to_decide": None,
        "against": ["m4"],
    }
    # Holm steps down: the second smallest p is compared with 2.5% / 4
    tests = {**{k: _p(0.5, 0.5) for k in expected}, "m3": _p(0.999, 0.004), "m4": _p(0.999, 0.006)}
    assert claims.judge(tests, expected)["against"] == ["m3", "m4"]
    # reproduced: every metric on its side at 2.5% (an intersection-union test, no correction needed)
    tests = {k: _p(0.02, 0.98) for k in expected}
    assert claims.judge(tests, expected)["verdict"] == "reproduced"
    tests["m0"] = _p(0.03, 0.97)
    assert claims.judge(tests, expected)["verdict"] == "inconclusive"


def test_equivalence_margin():
    inside = {"n": 1000, "mean": 0.0, "low": -0.001, "high": 0.001}
    crossing = {"n": 1000, "mean": 0.0005, "low": -0.002, "high": 0.006}
    outside = {"n": 1000, "mean": 0.01, "low": 0.0055, "high": 0.015}
    margin = claims.ACCURACY_MARGIN
    assert margin == 0.005 and margin * 100 > 0.26  # above every ImageNet |ΔACC| of the seeds (Table 3.3)
    assert claims.judge_equivalence(inside, margin)["verdict"] == "reproduced"
    assert claims.judge_equivalence(outside, margin)["verdict"] == "contradicted"
    verdict = claims.judge_equivalence(crossing, margin)
    assert verdict["verdict"] == "inconclusive"
    assert verdict["images_to_decide"] == math.ceil(1000 * (0.004 / (0.005 - 0.0005)) ** 2)
    # below 1/margin images one changed prediction exceeds the margin: no equivalence from 100 images
    assert claims.judge_equivalence({**inside, "n": 100}, margin)["images_to_decide"] == 200
    # a faithful ConvNeXt-B reproduction (-0.21 points) can be reproduced once its interval is narrow
    faithful = {"n": 50000, "mean": -0.0021, "low": -0.0035, "high": -0.0007}
    assert claims.judge_equivalence(faithful, margin)["verdict"] == "reproduced"
    with pytest.raises(ValueError, match="margin must be a fraction"):
        claims.judge_equivalence(inside, 0.0)


def test_paired_test_agrees_with_hand_values_and_refuses_infinities():
    diff = torch.tensor([0.5] * 30)  # no spread: the point itself, decided on its side
    found = metrics.paired_test(torch.zeros(30), diff)
    assert found["low"] == found["high"] == found["mean"] == 0.5
    assert found["p_greater"] == pytest.approx(1 / 1001) and found["p_less"] == 1.0
    zeros = metrics.paired_test(torch.zeros(30), torch.zeros(30))
    assert zeros["p_greater"] == zeros["p_less"] == 1.0
    torch.manual_seed(0)
    x = torch.randn(200).double()
    found = metrics.paired_test(torch.zeros(200), x)
    se = float(x.std() / 200**0.5)
    # a normal sample: the bootstrap-t interval is close to mean +- t_{0.975} se
    assert found["mean"] == pytest.approx(float(x.mean()))
    assert found["high"] - found["low"] == pytest.approx(2 * 1.97 * se, rel=0.15)
    with pytest.raises(ValueError, match="infinite"):
        metrics.paired_test(torch.zeros(3), torch.tensor([1.0, float("inf"), 0.0]))


# The directions of every registered claim, as read by hand from its tables (B − A: +1 higher, -1 lower)
READ_FROM_THE_TABLES = {
    "ca-stream/gradcam": {"ad": -1, "ag": 1, "ai": 1, "insertion": 1, "deletion": 1},
    "ca-stream/gradcam++": {"ag": 1, "ai": 1, "insertion": 1, "deletion": 1},  # AD: Table 1 up, Table 2 down
    "ca-stream/scorecam": {"ad": -1, "ag": 1, "ai": 1, "insertion": 1, "deletion": 1},
    "ca-stream/cub/gradcam": {"ad": -1, "ag": 1, "ai": 1, "insertion": 1, "deletion": 1},
    "ca-stream/cub/gradcam++": {"ad": -1, "ag": 1, "ai": 1, "insertion": 1, "deletion": 1},
    "ca-stream/cub/scorecam": {"ad": -1, "ag": 1, "ai": 1, "insertion": 1, "deletion": -1},  # D 5.94 -> 2.14
    "ca-stream/accuracy": {"accuracy": 0},
    "opti-cam/classification": {"ad": -1, "ag": 1, "ai": 1},
    "opti-cam/aopc-ms": {"aopc": -1, "max_sensitivity": -1},
    "opti-cam/insertion": {"insertion": -1},
    "opti-cam/localization": {"om": -1, "le": -1, "sp": -1, "ep": -1},
    "fake-cam/gradcam": {"ad": -1, "ag": -1, "ai": 1},  # AI 46.0 vs 44.4, 42.6 vs 40.6
    "fake-cam/opticam": {"ad": -1, "ag": -1, "ai": -1},
    **{
        f"box-study/{m}": {"ad": 1, "ag": -1, "ai": -1}
        for m in ("gradcam", "gradcam++", "scorecam", "opticam")
    },
    "box-study/complement": {"ad": -1, "ag": 1, "ai": 1},
    "sa-cam/adversarial-gradcam": {"adversarial": 1},
    "sa-cam/adversarial-scorecam": {"adversarial": 1},
    "sa-cam/fading-gradcam": {"adversarial": 1},  # fading lower = Acc_adv higher
    "sa-cam/fading-scorecam": {"adversarial": 1},
    "sa-cam/insertion-deletion-gradcam": {"insertion": 1, "deletion": -1},
    "sa-cam/insertion-scorecam": {"insertion": 1},
    # thesis Table 2.8: Mask (B) vs Diff (A) per normalization; Sigmoid (B) vs Range (A) with Mask
    **{f"opti-cam/objective/{n}": {"ad": -1, "ag": 1, "ai": 1} for n in ("range", "max", "sigmoid")},
    "opti-cam/normalization": {"ad": 1, "ag": -1, "ai": -1},  # 1.4 -> 5.0, 66.3 -> 18.3, 92.5 -> 57.5
    # CA-Stream paper Tables 4-6: CA (B) vs PROJ→CA (A); S0-S4 (B) vs S4-S4 (A); class-specific ≈ agnostic
    "ca-stream/block": {"accuracy": 1},  # 74.70 vs 74.41
    **{
        f"ca-stream/placement/{m}": {"ag": 1, "ai": 1, "insertion": 1}
        for m in ("gradcam", "gradcam++", "scorecam")
    },
    "ca-stream/class-specific": {"accuracy": 0},
}


def test_every_registered_direction_is_the_tables():
    assert {c.id for c in claims.CLAIMS} == set(READ_FROM_THE_TABLES)
    for claim in claims.CLAIMS:
        assert dict(claim.expected) == READ_FROM_THE_TABLES[claim.id], claim.id
    gradcampp = next(c for c in claims.CLAIMS if c.id == "ca-stream/gradcam++")
    assert gradcampp.mixed() == ["ad"] and "13.79 → 13.99" in gradcampp.note


def test_registry_integrity():
    """Every claim compares known methods on metrics the runner records, with unique ids."""
    ids = [c.id for c in claims.CLAIMS]
    assert len(ids) == len(set(ids))
    for claim in claims.CLAIMS:
        assert claim.kind in ("pooling", "methods", "columns", "accuracy", "streams"), claim.id
        for key, sign in claim.expected:
            for k in claim.keys(key):
                assert k == "accuracy" or k in registered_columns(), (claim.id, k)
            assert sign in ((0,) if claim.equivalent else (1, -1)), claim.id
        for method in (claim.method, claim.other):
            if method is not None:
                saliency.spec(method)  # a method or a variant of one, with options it takes
        # the comparisons of methods are scoped to the plain (GAP) models the seeds evaluated; the stream
        # variants are compared through CA
        if claim.kind in ("methods", "columns"):
            assert claim.scope.poolings == ("gap",), claim.id
        if claim.kind == "streams":
            assert claim.scope.poolings == ("ca",) and len(claim.streams) == 2, claim.id
    assert claims.UNTESTABLE and all(len(reason) > 20 for _, reason in claims.UNTESTABLE)


def test_scope_follows_the_data_and_the_model_family():
    class Run:
        def __init__(self, data, family):
            self.config = type("C", (), {"data": data})()
            self.info = {"families": {"m": family}}

    by_id = {c.id: c for c in claims.CLAIMS}
    assert claims._in_scope(by_id["ca-stream/gradcam"], Run("imagenet:/x", "cnn"), "m")
    assert not claims._in_scope(by_id["ca-stream/gradcam"], Run("synthetic:/x", "cnn"), "m")
    assert not claims._in_scope(by_id["ca-stream/gradcam"], Run("imagenet:/x", "vit"), "m")
    assert claims._in_scope(by_id["ca-stream/cub/gradcam"], Run("cub:/x", "cnn"), "m")
    # which claims a run checks: its dataset's own, else ImageNet's as extrapolations
    assert claims._applies(by_id["ca-stream/cub/gradcam"], "cub")
    assert not claims._applies(by_id["ca-stream/gradcam"], "cub")
    assert not claims._applies(by_id["ca-stream/cub/gradcam"], "imagenet")
    assert claims._applies(by_id["ca-stream/gradcam"], "synthetic")
    assert not claims._applies(by_id["ca-stream/cub/gradcam"], "folder")


def test_the_cli_margin_default_is_the_registry_s():
    from castream.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--model", "m", "--data", "synthetic:x", "--out", "o"])
    assert args.accuracy_margin == claims.ACCURACY_MARGIN


def test_every_claim_cites_an_existing_section_and_its_cells_are_in_the_seed():
    if not SEEDS.is_dir():
        pytest.skip(f"the seeds are not next to this clone ({SEEDS})")
    for claim in claims.CLAIMS:
        text = (SEEDS / claim.document).read_text()
        assert claim.section in text, claim.id
        for cell in claim.evidence:
            assert cell.table in text, (claim.id, cell)
            for value in (cell.a, cell.b):  # as the table prints it: 74.70, 0.5, 1.924; "1.4 7.1" (Table 2.8)
                printed = {f"{value:.2f}", f"{value:.1f}", f"{value:.3f}", repr(value)}
                assert any(
                    f"{a}{p}{b}" in text for p in printed for a in "\t " for b in "\t\n " if a + b != "  "
                ), (claim.id, cell, value)
