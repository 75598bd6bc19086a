"""The evaluation engine reproduces its golden record (tests/data/golden, written by the engine before
issue 29's rewrite) byte for byte: every metric group's values, intervals and the claims verdicts."""

import pytest

import golden


@pytest.mark.slow
def test_the_engine_reproduces_its_golden_record(tmp_path):
    run = golden.evaluate(tmp_path)
    assert (run / "results.csv").read_text() == (golden.GOLDEN / "results.csv").read_text()
    assert golden.claims_table(run) == (golden.GOLDEN / "claims.md").read_text()
