"""Robustness of explanations: max-sensitivity (Yeh et al.) and ADCC (Poppi et al.), thesis Table 2.3;
SA-CAM's adversarial verification and fading rate (SA-CAM §4.6, Tables 4–5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._model import check_images
from .._scorer import Scorer
from ..preprocess import Preprocess, resolve_preprocess
from ..saliency.base import SaliencyMethod
from ._common import check_maps, evaluation, scorer_of
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
    model: nn.Module | Scorer,
    images: Tensor,
    targets=None,
    *,
    preprocess: Preprocess | None = None,
    scores: str = "softmax",
    logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """ADCC per image (Poppi et al.; thesis (1.12)-(1.14), whose (1.14) is garbled):

    - ``coherency``: Pearson correlation between the map of ``x`` and the map of ``x`` masked by its own map
      (pixel space), rescaled to [0, 1] as ``(r + 1) / 2`` as in the authors' code. A constant map against a
      constant map counts as r = 1, against a non-constant map as r = 0.
    - ``complexity``: mean absolute value of the map (L1 norm per pixel, (1.13)).
    - ``drop``: the AD contribution of the map (a fraction).
    - ``adcc = 3 / (1/coherency + 1/(1 - complexity) + 1/(1 - drop))``, the harmonic mean; 0 when any
      term is 0 (its limit). Higher is better.

    ``scores="sigmoid"``: the drop uses per-class sigmoid probabilities (multi-label models). ``model`` may
    be a :class:`castream.Scorer` (by default the drop calls the model as ``method`` does); ``logits``: the
    clean images' logits when the caller has them.
    """
    if not isinstance(model, Scorer):
        model = scorer_of(model, output=method.output, forward_kwargs=method.forward_kwargs, scores=scores)
    preprocess = resolve_preprocess(model.model, preprocess, "adcc")
    maps, targets = _explain(method, images, targets)
    explained = method(preprocess.mask(images, maps), targets)
    coherency = (pearson(maps.flatten(1), explained.flatten(1)) + 1) / 2
    complexity = maps.abs().flatten(1).mean(1).float()
    drop = recognition(model, images, maps, targets, preprocess=preprocess, logits=logits)["drop"]
    terms = torch.stack([coherency, 1 - complexity, 1 - drop])
    score = torch.where((terms > 0).all(0), 3 / (1 / terms.clamp(min=1e-12)).sum(0), 0.0)
    return {"coherency": coherency, "complexity": complexity, "drop": drop, "adcc": score}


def adversarial_verification(
    model: nn.Module | Scorer,
    images: Tensor,
    maps: Tensor,
    hosts: Tensor,
    targets=None,
    *,
    threshold: float = 0.5,
    placement: str = "in-place",
    seed: int = 0,
    normalize: bool = False,
    batch_size: int | None = None,
    output=None,
    forward_kwargs: dict | None = None,
    logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """SA-CAM §4.6 adversarial verification: the key area ``K = 1[map > threshold]`` of each image pasted
    into each of its ``J`` host images (the "adversarial environments"), and whether the classifier still
    predicts the target class. The paper leaves the threshold (0.5 of the min-max normalized map here)
    and the position open: ``placement="in-place"`` keeps the key area where it is (``K ⊙ x + (1 − K) ⊙
    host``); ``"random"`` moves it, its bounding box placed uniformly where it fits in the host (drawn
    from ``seed``), as the paper's "randomly embed it into multiple adversarial images" may mean.

    ``hosts``: ``(B, J, C, H, W)`` images in the same (model-input) space as ``images``, e.g. images of other
    classes. Returns per image ``"accuracy"`` (fraction of its J composites classified as the target),
    ``"cases"`` (B, J) 0/1 per host, ``"clean"`` 0/1 (the clean image classified as the target) and
    ``"area"`` (fraction of pixels in the key area). Aggregate the fading rate with :func:`fading_rate`.
    ``model`` may be a :class:`castream.Scorer`; ``logits``: the clean images' logits when the caller has
    them (no clean forward is made).
    """
    maps = check_maps(maps, images, normalize)
    scorer = scorer_of(model, output=output, forward_kwargs=forward_kwargs, batch_size=batch_size)
    if not isinstance(hosts, Tensor) or hosts.dim() != 5 or hosts.shape[0] != images.shape[0]:
        raise ValueError(
            f"hosts must be a (B, J, C, H, W) tensor with B = {images.shape[0]}, got "
            f"{tuple(hosts.shape) if isinstance(hosts, Tensor) else type(hosts).__name__}"
        )
    if hosts.shape[1] == 0 or hosts.shape[2:] != images.shape[1:]:
        raise ValueError(
            f"expected at least one host per image, each of shape {tuple(images.shape[1:])}; "
            f"got hosts of shape {tuple(hosts.shape)}"
        )
    if hosts.dtype != images.dtype or hosts.device != images.device:
        raise TypeError(
            f"hosts must be images like the images (model-input space, {images.dtype} on {images.device}); "
            f"got {hosts.dtype} on {hosts.device}"
            + (": normalize 0-255 photos as the images were" * (not hosts.is_floating_point()))
        )
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    cases = hosts.shape[1]
    key = (maps > threshold).to(images.dtype)[:, None, None]  # (B, 1, 1, H, W)
    with evaluation(scorer):
        t, logits = scorer.clean(images, targets, logits)
        if placement == "in-place":
            composites = (key * images[:, None] + (1 - key) * hosts).flatten(0, 1)
        else:
            composites = _embed(key[:, 0, 0] > 0, images, hosts, seed).flatten(0, 1)
        predicted = scorer.logits(composites).argmax(dim=1)
    hits = (predicted.view(-1, cases) == t[:, None]).float()
    return {
        "accuracy": hits.mean(dim=1),
        "cases": hits,
        "clean": (logits.argmax(dim=1) == t).float(),
        "area": key.flatten(1).mean(dim=1).float(),
        "target": t,
    }


PLACEMENTS = ("in-place", "random")


def _embed(key: Tensor, images: Tensor, hosts: Tensor, seed: int) -> Tensor:
    """(B, J, C, H, W) composites: each image's key area (its pixels inside their bounding box) pasted
    into each host with the box at a uniformly drawn position where it fits. An empty key area leaves the
    host as it is."""
    generator = torch.Generator().manual_seed(seed)
    out = hosts.clone()
    height, width = images.shape[-2:]
    for b in range(len(images)):
        rows, cols = key[b].nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        patch, mask = images[b, :, y0:y1, x0:x1], key[b, y0:y1, x0:x1]
        for j in range(hosts.shape[1]):
            top = int(torch.randint(height - (y1 - y0) + 1, (), generator=generator))
            left = int(torch.randint(width - (x1 - x0) + 1, (), generator=generator))
            region = out[b, j, :, top : top + y1 - y0, left : left + x1 - x0]
            region.copy_(torch.where(mask, patch, region))
    return out


def fading_rate(rows: Tensor) -> float:
    """SA-CAM Table 5's fading rate from per-image rows ``(adversarial accuracy, clean accuracy)``:
    ``1 − mean(adversarial) / mean(clean)``, the relative loss of accuracy in the adversarial environment
    (lower is better). The paper's Tables 4 and 5 fit this with a clean accuracy of 75.29% for every cell
    (all 9 cells to two decimals, e.g. 1 − 18.40/75.29 = 75.56%; 75.28 gives 7 of them). NaN when no clean
    image is classified correctly."""
    if not isinstance(rows, Tensor) or not rows.is_floating_point():
        got = f"a {rows.dtype} tensor" if isinstance(rows, Tensor) else type(rows).__name__
        raise TypeError(f"expected a floating-point tensor of (N, 2) accuracy rows, got {got}")
    if rows.dim() != 2 or rows.shape[1] != 2 or len(rows) == 0:
        raise ValueError(f"expected (N, 2) rows of (adversarial, clean) accuracy, got {tuple(rows.shape)}")
    if not torch.isfinite(rows).all() or rows.min() < 0 or rows.max() > 1:
        bad = rows[~(torch.isfinite(rows).all(1) & (rows >= 0).all(1) & (rows <= 1).all(1))]
        raise ValueError(f"accuracies are fractions in [0, 1]; got rows {bad[:3].tolist()} ({len(bad)} such)")
    clean = float(rows[:, 1].mean())
    return 1 - float(rows[:, 0].mean()) / clean if clean > 0 else float("nan")
