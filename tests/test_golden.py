"""The evaluation engine reproduces its golden record (tests/data/golden/<cpu>/): every metric group's
values, intervals and the claims verdicts. Byte for byte on a CPU kind that has a record; on another
one, the same text with every number within the float-reduction noise of another CPU (see golden.py)."""

import re

import pytest
import torch

import golden

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _close(found: str, stored: str, rel: float = 1e-4, printed: float = 0.011) -> bool:
    """Same text, numbers equal to ``rel`` (full-precision CSV values) or to one unit of the last printed
    digit (the report's two decimals)."""
    if NUMBER.split(found) != NUMBER.split(stored):
        return False
    pairs = zip(NUMBER.findall(found), NUMBER.findall(stored), strict=True)
    return all(
        abs(float(a) - float(b))
        <= max(rel * abs(float(b)), printed if "." in b and len(b.split(".")[1]) <= 2 else 1e-9)
        for a, b in pairs
    )


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
    assert stored, "no golden record: python tests/golden.py writes one"
    if found in stored.values():
        print("golden record reproduced byte for byte")
        return
    close = [r for r, (csv, claims) in stored.items() if _close(found[0], csv) and _close(found[1], claims)]
    assert close, (
        f"results.csv and the claims table equal none of the records {[str(r) for r in stored]}, even to "
        f"float noise (this CPU: {torch.backends.cpu.get_cpu_capability()})"
    )


def test_the_tolerant_comparison_tells_noise_from_change():
    assert _close("ad,0.1234567,x", "ad,0.1234568,x")
    assert not _close("ad,0.1234567,x", "ad,0.1244567,x")
    assert _close("| AD ↓ -3.41 |", "| AD ↓ -3.40 |") and not _close("| AD ↓ -3.45 |", "| AD ↓ -3.40 |")
    assert not _close("| reproduced |", "| contradicted |")
