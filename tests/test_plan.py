"""The run plan (evaluate/plan.py): batches per rank, each method's images, adversarial hosts."""

import pytest

from castream.evaluate.plan import Plan, selection


def plan(count=100, **kw):
    options = {"poolings": {"a": ["gap", "ca"], "b": ["gap"]}, "methods": ["gradcam", "fakecam"]}
    options.update(batch_size=8, method_images={"fakecam": 20}, seed=3, **kw)
    return Plan(selection(1000, count, seed=3), **options)


def test_selection_batches_and_cells():
    p = plan()
    assert p.indices == sorted(p.indices) and len(set(p.indices)) == 100
    assert selection(1000, 100, seed=3) == p.indices and selection(1000, 100, seed=4) != p.indices
    assert selection(50, None, seed=0) == list(range(50)) == selection(50, 80, seed=0)
    assert p.cells() == [(m, q, k) for m, q in [("a", "gap"), ("a", "ca"), ("b", "gap")] for k in p.methods]
    assert p.accuracy_cells() == [("a", "gap", "accuracy"), ("a", "ca", "accuracy"), ("b", "gap", "accuracy")]
    assert p.method_indices("fakecam") == p.indices[:20] and p.method_indices("gradcam") == p.indices
    assert p.wanted(("a", "gap", "accuracy")) == set(p.indices)
    # every batch is computed by exactly one rank, and an image is in the same batch at any world size
    for world in (1, 2, 3, 7):
        mine = [b for rank in range(world) for b in p.batches_of(rank, world)]
        assert sorted(mine) == sorted(p.batches()) and len(mine) == 13
    assert [len(b) for b in p.batches("fakecam")] == [8, 8, 4]


def test_hosts_are_fixed_by_seed_and_image_and_cost_o_cases():
    p = plan(count=1000)
    calls = []

    def accept(c):
        calls.append(c)
        return c % 10 != 0

    hosts = p.hosts(5, 3, accept)
    assert len(set(hosts)) == 3 and 5 not in hosts and all(h % 10 for h in hosts)
    assert hosts == p.hosts(5, 3, lambda c: c % 10 != 0)
    assert len(calls) <= 4 * 3  # one draw of 4 x cases candidates sufficed: no scan of the selection
    assert p.hosts(6, 3, accept) != hosts
    other = Plan(p.indices, p.poolings, p.methods, 32, {}, seed=3)  # another batch size: same hosts
    assert other.hosts(5, 3, lambda c: c % 10 != 0) == hosts


def test_rare_hosts_are_found_by_the_scan_and_missing_ones_named():
    p = plan(count=1000)
    rare = {p.indices[17], p.indices[500]}  # 2 of 1000: the random draws rarely meet both
    assert set(p.hosts(0, 2, lambda c: c in rare)) == rare
    with pytest.raises(ValueError, match="needs 3 hosts of another class for image 0; the 1000 evaluated"):
        p.hosts(0, 3, lambda c: c == p.indices[17], "hosts of another class")
