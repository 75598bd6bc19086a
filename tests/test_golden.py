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
    found = ((run / "results.csv").read_text(), golden.claims_table(run))
    stored = {
        record: ((record / "results.csv").read_text(), (record / "claims.md").read_text())
        for record in golden.records()
    }
    assert found in stored.values(), (
        f"results.csv and the claims table equal none of the records {[str(r) for r in stored]} "
        f"(this CPU: {torch.backends.cpu.get_cpu_capability()})"
    )
