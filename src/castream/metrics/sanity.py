"""Model-parameter randomization test (Adebayo et al.; used in SA-CAM §4.4)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor, nn

from ..saliency.base import SaliencyMethod
from ..utils import check_int
from .robustness import pearson


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Spearman rank correlation of maps (B, ...) with average ranks for ties (B,), float64 on
    ``a``'s device (the ranks are computed on the CPU)."""
    ra = torch.from_numpy(rankdata(a.detach().flatten(1).double().cpu().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.detach().flatten(1).double().cpu().numpy(), axis=1))
    return pearson(ra, rb).to(a.device)


def layer_seed(seed: int, repeat: int, index: int) -> int:
    """The torch seed under which the ``index``-th randomized layer of repeat ``repeat`` is re-initialized:
    explicit, so any single layer's randomization can be reproduced alone."""
    return int(np.random.SeedSequence([seed, repeat, index]).generate_state(1)[0])


def _randomize(module: nn.Module, generator_seed: int) -> None:
    """Re-initialize a module and all its submodules as untrained: each one's ``reset_parameters`` when
    it has one, else N(0, 0.02) for its own parameters. A block or a whole stage is randomized entirely,
    as in Adebayo et al.'s cascading test (before, only the module's own parameters were, so a block
    was left untouched). The caller's random state is left as found, on the CPU and on every CUDA device
    the module lives on."""
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(generator_seed)
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            else:
                for p in sub.parameters(recurse=False):
                    p.normal_(0.0, 0.02)


def _constant(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    return flat.max(dim=1).values == flat.min(dim=1).values


def sanity_check(
    method_factory: Callable[[nn.Module], SaliencyMethod],
    model: nn.Module,
    images: Tensor,
    targets=None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    repeats: int = 1,
    details: bool = False,
) -> dict:
    """Cascading randomization from the head backwards: after each layer is re-initialized (cumulatively),
    the mean Spearman rank correlation between the original maps and the new ones. A method that passes
    the check gives correlations that fall as more layers are randomized.

    ``method_factory(model) -> method`` builds the method on the model copy (e.g.
    ``lambda m: saliency.GradCAM(m)``). ``layers``: module names in randomization order (default: every
    module with its own parameters, in reverse definition order, i.e. from the head backwards). A name
    may be a block or a whole stage (e.g. ``["fc", "layer4", "layer3"]``): all its parameters are
    re-initialized. The
    caller's model is untouched: everything happens on deep copies. Targets are fixed to those of the
    original model (its predictions when ``targets`` is None).

    Seeding: layer ``i`` of repeat ``r`` is re-initialized under ``torch.manual_seed(layer_seed(seed, r,
    i))``; ``repeats`` runs the cascade on ``repeats`` fresh copies and averages (per-layer values swing
    widely over a few images). Constant maps (original or randomized): Spearman's rho is undefined, so the
    image is skipped and counted, as Quantus' MPRT does (NaN), rather than scored 0. Returns
    ``{layer: mean rho}`` (NaN when every image was skipped), or with ``details=True`` ``{layer: {"rho",
    "per_repeat", "constant", "pairs"}}`` where ``constant`` counts the skipped (repeat, image) pairs.
    """
    if not callable(method_factory) or isinstance(method_factory, SaliencyMethod):
        raise TypeError(
            "method_factory must build a method from a model (e.g. lambda m: saliency.GradCAM(m)), got "
            f"{type(method_factory).__name__}"
        )
    check_int("repeats", repeats)
    check_int("seed", seed, 0)
    original_method = method_factory(copy.deepcopy(model))
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
            for n, m in reversed(list(model.named_modules()))
            if any(True for _ in m.parameters(recurse=False))
        ]
    for name in layers:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"layers names {name!r}, which is not a module of {type(model).__name__}"
            ) from None
        if not any(True for _ in module.parameters()):
            raise ValueError(f"layer {name!r} has no parameters: randomizing it would change nothing")
    rho = {name: [] for name in layers}
    for r in range(repeats):
        clone = copy.deepcopy(model)
        for i, name in enumerate(layers):
            _randomize(clone.get_submodule(name), layer_seed(seed, r, i))
            randomized = method_factory(clone)(images, targets)
            values = spearman(original, randomized).double()
            rho[name].append(torch.where(_constant(original) | _constant(randomized), float("nan"), values))
    out = {}
    for name, per_repeat in rho.items():
        values = torch.stack(per_repeat)  # (repeats, B)
        kept = values[~values.isnan()]
        mean = float(kept.mean()) if len(kept) else float("nan")
        out[name] = {
            "rho": mean,
            "per_repeat": [
                float(v[~v.isnan()].mean()) if (~v.isnan()).any() else float("nan") for v in values
            ],
            "constant": int(values.isnan().sum()),
            "pairs": values.numel(),
        }
    return out if details else {name: entry["rho"] for name, entry in out.items()}
