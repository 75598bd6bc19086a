"""Model-parameter randomization test (Adebayo et al.; used in SA-CAM §4.4)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from scipy.stats import rankdata
from torch import Tensor, nn

from ..saliency.base import SaliencyMethod
from .robustness import pearson


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Spearman rank correlation of maps (B, ...) with average ranks for ties (B,)."""
    ra = torch.from_numpy(rankdata(a.detach().flatten(1).double().cpu().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.detach().flatten(1).double().cpu().numpy(), axis=1))
    return pearson(ra, rb)


def _randomize(module: nn.Module, generator_seed: int) -> None:
    """Re-initialize a module's own parameters as untrained (``reset_parameters`` when it has one)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(generator_seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                p.normal_(0.0, 0.02)


def sanity_check(
    method_factory: Callable[[nn.Module], SaliencyMethod],
    model: nn.Module,
    images: Tensor,
    targets=None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Cascading randomization from the head backwards: after each layer is re-initialized (cumulatively),
    the mean Spearman rank correlation between the original maps and the new ones. A method that passes
    the check gives correlations that fall as more layers are randomized.

    ``method_factory(model) -> method`` builds the method on the model copy (e.g.
    ``lambda m: saliency.GradCAM(m)``). ``layers``: module names in randomization order (default: every
    module with its own parameters, in reverse definition order, i.e. from the head backwards). The
    caller's model is untouched: everything happens on a deep copy. Targets are fixed to those of the
    original model (its predictions when ``targets`` is None).
    """
    if not callable(method_factory) or isinstance(method_factory, SaliencyMethod):
        raise TypeError(
            "method_factory must build a method from a model (e.g. lambda m: saliency.GradCAM(m)), got "
            f"{type(method_factory).__name__}"
        )
    clone = copy.deepcopy(model)
    original_method = method_factory(clone)
    if not isinstance(original_method, SaliencyMethod):
        raise TypeError(
            "method_factory(model) must return a castream saliency method, got "
            f"{type(original_method).__name__}"
        )
    if targets is None:
        with original_method.session(), torch.no_grad():
            targets = original_method.logits(images).argmax(dim=1)
    original = original_method(images, targets)
    if layers is None:
        layers = [
            n
            for n, m in reversed(list(clone.named_modules()))
            if any(True for _ in m.parameters(recurse=False))
        ]
    results: dict[str, float] = {}
    for i, name in enumerate(layers):
        _randomize(clone.get_submodule(name), seed + i)
        results[name] = float(spearman(original, method_factory(clone)(images, targets)).mean())
    return results
