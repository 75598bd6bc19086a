"""The claims registry and the verdict rule (issue 23)."""

import math
from pathlib import Path

import pytest
import torch

from castream import metrics, saliency
from castream.evaluate import claims
from castream.evaluate.groups import columns as registered_columns

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def _interval(differences):
    return metrics.paired_bootstrap(torch.zeros(len(differences)), torch.tensor(differences), seed=0)


def test_verdict_rule_on_hand_made_differences():
    torch.manual_seed(0)
    up = (1 + 0.1 * torch.randn(50)).tolist()  # clearly positive
    down = (-1 + 0.1 * torch.randn(50)).tolist()
    small = (0.05 + torch.randn(40)).tolist()  # mean 0.05 +- ~0.3: undecided
    assert claims.judge({"ag": _interval(up)}, {"ag": 1})["verdict"] == "reproduced"
    assert claims.judge({"ad": _interval(down)}, {"ad": -1})["verdict"] == "reproduced"
    # one metric on the other side contradicts, whatever the others say
    both = claims.judge({"ag": _interval(up), "ad": _interval(up)}, {"ag": 1, "ad": -1})
    assert both == {"verdict": "contradicted", "images_to_decide": None}
    entry = _interval(small)
    assert entry["low"] < 0 < entry["high"]
    open_ = claims.judge({"ag": _interval(up), "ai": entry}, {"ag": 1, "ai": 1})
    half = (entry["high"] - entry["low"]) / 2
    assert open_ == {
        "verdict": "inconclusive",
        "images_to_decide": math.ceil(40 * (half / abs(entry["mean"])) ** 2),
    }
    assert open_["images_to_decide"] > 40
    # equivalence within a margin: [-0.002, 0.003] is outside ±0.0021 on one side only -> inconclusive
    inside = {"n": 1000, "mean": 0.0, "low": -0.001, "high": 0.001}
    crossing = {"n": 1000, "mean": 0.0005, "low": -0.002, "high": 0.003}
    outside = {"n": 1000, "mean": 0.01, "low": 0.005, "high": 0.015}
    assert claims.judge_equivalence(inside, 0.0021)["verdict"] == "reproduced"
    assert claims.judge_equivalence(outside, 0.0021)["verdict"] == "contradicted"
    verdict = claims.judge_equivalence(crossing, 0.0021)
    assert verdict["verdict"] == "inconclusive"
    assert verdict["images_to_decide"] == math.ceil(1000 * (0.0025 / (0.0021 - 0.0005)) ** 2)
    # below 1/margin images one changed prediction exceeds the margin: no equivalence from 100 images
    assert claims.judge_equivalence({**inside, "n": 100}, 0.0021) == {
        "verdict": "inconclusive",
        "images_to_decide": 477,
    }
    zero = claims.judge({"ag": {"n": 50, "mean": 0.0, "low": -1.0, "high": 1.0}}, {"ag": 1})
    assert zero == {"verdict": "inconclusive", "images_to_decide": None}  # no count is predicted
    # too few images for a trustworthy bootstrap interval: no verdict, however clear it looks
    few = claims.judge({"ag": _interval(up[:5])}, {"ag": 1})
    assert few == {"verdict": "inconclusive", "images_to_decide": claims.MIN_IMAGES}


def test_registry_integrity():
    """Every claim compares known methods on metrics the runner records, with unique ids."""
    ids = [c.id for c in claims.CLAIMS]
    assert len(ids) == len(set(ids))
    for claim in claims.CLAIMS:
        assert claim.kind in ("pooling", "methods", "accuracy"), claim.id
        for key, sign in claim.expected:
            assert key == "accuracy" or key in registered_columns(), (claim.id, key)
            assert sign in ((0,) if claim.kind == "accuracy" else (1, -1)), claim.id
        for method in (claim.method, claim.other):
            if method is not None:
                saliency.get(method)
    assert claims.UNTESTABLE and all(len(reason) > 20 for _, reason in claims.UNTESTABLE)


def test_every_claim_cites_an_existing_section_and_table():
    if not SEEDS.is_dir():
        pytest.skip(f"the seeds are not next to this clone ({SEEDS})")
    for claim in claims.CLAIMS:
        text = (SEEDS / claim.document).read_text()
        assert claim.section in text and claim.table in text, claim.id
