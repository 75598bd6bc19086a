import os

import pytest
import torch

# at most 2 threads, and under pytest-xdist the cores shared among the workers: 2 workers with 2 threads
# each on 2 cores oversubscribe them and slow the convolution-heavy tests down
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads(), (os.cpu_count() or 1) // _workers)))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped on a machine without a CUDA device (CI, laptops)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (run pytest -m cuda on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def state_snapshot(module: torch.nn.Module) -> dict:
    """Everything about a module's state a method must not change: tensors, flags, hooks, modes."""
    return {
        "tensors": {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in module.named_parameters()},
        "grads": {k: p.grad for k, p in module.named_parameters()},
        "training": {k: m.training for k, m in module.named_modules()},
        "hooks": {
            k: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for k, m in module.named_modules()
        },
        "types": {k: type(m) for k, m in module.named_modules()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert before["types"] == after["types"]
    assert all(after["grads"][k] is None for k in after["grads"] if before["grads"][k] is None)
    assert before["tensors"].keys() == after["tensors"].keys()
    for k, v in before["tensors"].items():
        assert torch.equal(v, after["tensors"][k]), k
