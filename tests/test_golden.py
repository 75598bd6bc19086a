"""The evaluation engine reproduces its golden record (tests/data/golden, written by the engine before
issue 29's rewrite) byte for byte: every metric group's values, intervals and the claims verdicts."""

import pytest
import torch

import golden


@pytest.mark.slow
def test_the_engine_reproduces_its_golden_record(tmp_path):
    # the record was written with 2 threads (python tests/golden.py): float reductions depend on the count
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = golden.evaluate(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert (run / "results.csv").read_text() == (golden.GOLDEN / "results.csv").read_text()
    assert golden.claims_table(run) == (golden.GOLDEN / "claims.md").read_text()
