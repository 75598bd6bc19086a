"""Robustness of explanations: max-sensitivity (Yeh et al.) and ADCC (Poppi et al.), thesis Table 2.3."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._model import check_images
from ..preprocess import Preprocess
from ..saliency.base import SaliencyMethod
from .recognition import recognition


def _explain(method: SaliencyMethod, images: Tensor, targets) -> tuple[Tensor, Tensor]:
    """Maps and the (resolved) targets they explain, so that perturbed copies explain the same class."""
    if not isinstance(method, SaliencyMethod):
        raise TypeError(f"expected a saliency method instance, got {type(method).__name__}")
    check_images(images)
    if targets is None:
        with method.session(), torch.no_grad():
            targets = method.logits(images).argmax(dim=1)
    return method(images, targets), torch.as_tensor(targets, device=images.device)


def max_sensitivity(
    method: SaliencyMethod,
    images: Tensor,
    targets=None,
    *,
    radius: float = 0.2,
    samples: int = 10,
    seed: int = 0,
) -> Tensor:
    """Max-sensitivity per image (B,): ``max_s ||Φ(x + δ_s) - Φ(x)||_F / ||Φ(x)||_F`` with ``δ_s`` uniform
    in ``[-radius, radius]`` per input element (model-input space) and ``samples`` draws (thesis Table 2.3:
    0.2 and 10, as Quantus' MaxSensitivity). The target class is fixed to the clean image's. A zero
    reference map divides by 1e-12 instead of 0. Lower is better."""
    if radius <= 0 or samples < 1:
        raise ValueError(f"need radius > 0 and samples >= 1, got {radius} and {samples}")
    reference, targets = _explain(method, images, targets)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    norm = reference.flatten(1).norm(dim=1).clamp(min=1e-12)
    worst = torch.zeros(len(images), device=images.device)
    for _ in range(samples):
        noise = (
            torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype) * 2 - 1
        )
        perturbed = method(images + radius * noise, targets)
        worst = torch.maximum(worst, (perturbed - reference).flatten(1).norm(dim=1).float() / norm)
    return worst


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Per-row Pearson correlation of (B, N) tensors; 1 where both rows are constant, 0 where one is."""
    a, b = a.float() - a.float().mean(1, keepdim=True), b.float() - b.float().mean(1, keepdim=True)
    sa, sb = a.norm(dim=1), b.norm(dim=1)
    both_constant = (sa == 0) & (sb == 0)
    r = (a * b).sum(1) / (sa * sb).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.where(both_constant, 1.0, torch.where((sa == 0) | (sb == 0), 0.0, r.clamp(-1, 1)))


def adcc(
    method: SaliencyMethod,
    model: nn.Module,
    images: Tensor,
    targets=None,
    *,
    preprocess: Preprocess | None = None,
) -> dict[str, Tensor]:
    """ADCC per image (Poppi et al.; thesis (1.12)-(1.14), whose (1.14) is garbled):

    - ``coherency``: Pearson correlation between the map of ``x`` and the map of ``x`` masked by its own map
      (pixel space), rescaled to [0, 1] as ``(r + 1) / 2`` as in the authors' code. A constant map against a
      constant map counts as r = 1, against a non-constant map as r = 0.
    - ``complexity``: mean absolute value of the map (L1 norm per pixel, (1.13)).
    - ``drop``: the AD contribution of the map (a fraction).
    - ``adcc = 3 / (1/coherency + 1/(1 - complexity) + 1/(1 - drop))``, the harmonic mean; 0 when any
      term is 0 (its limit). Higher is better.
    """
    preprocess = preprocess or Preprocess()
    maps, targets = _explain(method, images, targets)
    explained = method(preprocess.mask(images, maps), targets)
    coherency = (pearson(maps.flatten(1), explained.flatten(1)) + 1) / 2
    complexity = maps.abs().flatten(1).mean(1).float()
    drop = recognition(
        model,
        images,
        maps,
        targets,
        preprocess=preprocess,
        output=method.output,
        forward_kwargs=method.forward_kwargs,
    )["drop"]
    terms = torch.stack([coherency, 1 - complexity, 1 - drop])
    score = torch.where((terms > 0).all(0), 3 / (1 / terms.clamp(min=1e-12)).sum(0), 0.0)
    return {"coherency": coherency, "complexity": complexity, "drop": drop, "adcc": score}
