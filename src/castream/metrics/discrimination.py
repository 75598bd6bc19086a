"""Class discrimination on scenes with several classes (castream's own metric; no seed defines it).

On the synthetic benchmark every class present has a ground-truth mask (the class map, see
``castream.data.synthetic``). A map that explains class ``c`` should put its saliency on ``c``'s
evidence and not on the evidence of the other classes in the image: a class-discriminative method
(Grad-CAM of the right logit) does, a class-agnostic one (raw attention, a saliency of "objects") does
not. Per image, with ``s`` the map, ``M_c`` the target's mask and ``M_o`` the other classes' masks:

- ``energy_target`` = Σ s·M_c / Σ s and ``energy_other`` = Σ s·M_o / Σ s: the shares of the saliency
  energy on the target's and on the other classes' evidence (0 for a zero map);
- ``discrimination`` = μ_c / (μ_c + μ_o), with μ the *mean* saliency over the pixels of ``M_c`` and of
  ``M_o``: 1 when only the target's evidence is salient, 0 when only the others' is, 0.5 when both are
  equally salient per pixel (a class-agnostic map, a random map, a constant map), whatever their areas;
- ``sp_target`` / ``sp_other``: the pointing game (ties as in :func:`pointing_hits`) against ``M_c`` only
  and against ``M_o``.

Metrics that need another class (``energy_other``, ``discrimination``, ``sp_other``) are NaN for images
that hold only the target class; every metric is NaN where the target class is not visible. Aggregation
skips and counts NaN values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_map_values
from .localization import pointing_hits

KEYS = ("energy_target", "energy_other", "discrimination", "sp_target", "sp_other")


def class_discrimination(maps: Tensor, classes: Tensor, targets) -> dict[str, Tensor]:
    """Per-image (B,) class-discrimination metrics (module docstring) of ``maps`` (B, H, W) in [0, 1] for
    ``targets`` (B,), given class maps ``classes`` (B, H, W) integers: 0 where no class is visible,
    ``c + 1`` where class ``c`` is (``target["classes"]`` of the synthetic benchmark)."""
    if not isinstance(maps, Tensor) or maps.dim() != 3:
        got = getattr(maps, "shape", type(maps).__name__)
        raise ValueError(f"expected maps of shape (B, H, W), got {got}")
    if not isinstance(classes, Tensor) or classes.shape != maps.shape:
        raise ValueError(
            f"expected class maps of the maps' shape {tuple(maps.shape)}, "
            f"got {getattr(classes, 'shape', type(classes).__name__)}"
        )
    if classes.is_floating_point() or classes.is_complex() or (classes < 0).any():
        raise ValueError("class maps must hold non-negative integers (0: no class, c + 1: class c)")
    check_map_values(maps)
    if isinstance(targets, int) and not isinstance(targets, bool):
        targets = torch.full((len(maps),), targets)
    t = torch.as_tensor(targets) if not isinstance(targets, Tensor) else targets
    if t.shape != (len(maps),) or t.is_floating_point() or t.dtype == torch.bool or (t < 0).any():
        raise ValueError(f"targets must be an int or {len(maps)} non-negative class indices, got {targets!r}")
    s = maps.detach().double()
    classes = classes.to(s.device)
    target = classes == (t.to(s.device) + 1)[:, None, None]
    other = (classes > 0) & ~target
    dims = (1, 2)
    total = s.sum(dims)
    safe = total.clamp(min=torch.finfo(s.dtype).tiny)
    n_target, n_other = target.sum(dims), other.sum(dims)
    mu_target = (s * target).sum(dims) / n_target.clamp(min=1)
    mu_other = (s * other).sum(dims) / n_other.clamp(min=1)
    density = mu_target + mu_other
    nan = torch.tensor(float("nan"), dtype=s.dtype, device=s.device)
    out = {
        "energy_target": torch.where(total > 0, (s * target).sum(dims) / safe, 0.0),
        "energy_other": torch.where(total > 0, (s * other).sum(dims) / safe, 0.0),
        "discrimination": torch.where(density > 0, mu_target / density.clamp(min=1e-300), 0.5),
        "sp_target": pointing_hits(s, target).double(),
        "sp_other": pointing_hits(s, other).double(),
    }
    has_target, has_other = n_target > 0, n_other > 0
    for key in KEYS:
        out[key] = torch.where(has_target, out[key], nan)
        if key in ("energy_other", "discrimination", "sp_other"):
            out[key] = torch.where(has_other, out[key], nan)
    return {k: v.float() for k, v in out.items()}
