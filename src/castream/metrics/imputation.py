"""ROAD: RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods"), as pytorch-grad-cam 1.5 implements it.

At each percentile p, MoRF removes the pixels whose map value is at or above the map's p-th percentile
(the most relevant 100 − p %), LeRF those at or below the (100 − p)-th (the least relevant); removed
pixels are filled by *noisy linear imputation*: each is the weighted mean of its 8 neighbours (weights
1/6 for the 4 direct, 1/12 for the diagonal ones, renormalized at the border), a sparse linear system over
the removed pixels whose known neighbours are its boundary, plus Gaussian noise (``noise``, 0.01). The
score is the change of the target's score, imputed − clean, averaged over the percentiles (MoRF: lower
is better; LeRF: higher is better); the combined score is (LeRF − MoRF) / 2.

The system is assembled with array operations (no per-pixel Python), factorized once per image and
percentile with SuperLU in symmetric mode (the system is symmetric) and solved for every channel at once;
the factorizations of a batch run in threads. The imputed images are scored in the Scorer's batches.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import splu
from torch import Tensor, nn

from .._scorer import Scorer
from ..preprocess import Preprocess
from ._common import check_maps, evaluation, scorer_of

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_ORDERS = ("morf", "lerf", "combined")
# (row offset, column offset), weight: the neighbours of a pixel in the imputation (Rong et al.)
NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def impute(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Linear imputation (no noise) of the pixels where ``keep`` (H, W) is False in ``image`` (C, H, W),
    float64: each removed pixel the weighted mean of its valid neighbours, solved as one sparse system.
    With every pixel removed (a constant map: ROAD's thresholds remove ties together, as pytorch-grad-cam's
    do) nothing is known to impute from, and every pixel becomes 0 of the model's input, the mean colour
    of normalized inputs; with any pixel known, every removed region borders one, so the system is
    regular."""
    h, w = keep.shape
    flat_keep = keep.reshape(-1)
    missing = np.flatnonzero(~flat_keep)
    if missing.size == 0:
        return image.astype(np.float64)
    if missing.size == flat_keep.size:  # no known neighbour anywhere: 0, the normalized inputs' mean colour
        return np.zeros(image.shape)
    variable = np.full(flat_keep.size, -1)
    variable[missing] = np.arange(missing.size)
    rows0, cols0 = np.divmod(missing, w)
    values = image.reshape(image.shape[0], -1).astype(np.float64)
    rhs = np.zeros((missing.size, image.shape[0]))
    diagonal = np.zeros(missing.size)
    rows, cols, weights = [], [], []
    for (dy, dx), weight in NEIGHBOURS:
        r, c = rows0 + dy, cols0 + dx
        valid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        equation = np.flatnonzero(valid)
        neighbour = r[valid] * w + c[valid]
        diagonal[equation] -= weight
        known = flat_keep[neighbour]
        rhs[equation[known]] -= weight * values[:, neighbour[known]].T
        rows.append(equation[~known])
        cols.append(variable[neighbour[~known]])
        weights.append(np.full(int((~known).sum()), weight))
    index = np.arange(missing.size)
    system = coo_matrix(
        (
            np.concatenate([*weights, diagonal]),
            (np.concatenate([*rows, index]), np.concatenate([*cols, index])),
        ),
        shape=(missing.size, missing.size),
    ).tocsc()
    solution = splu(system, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).solve(rhs)
    out = values.copy()
    out[:, missing] = solution.T
    return out.reshape(image.shape)


def road_keep(maps: Tensor, percentile: float, order: str) -> Tensor:
    """The pixels ROAD keeps (B, H, W) at ``percentile``: MoRF keeps the map below its percentile, LeRF
    keeps ``1 − map`` below its (pytorch-grad-cam's RemoveMostRelevantFirst / RemoveLeastRelevantFirst)."""
    values = maps if order == "morf" else 1 - maps
    threshold = torch.quantile(values.flatten(1).double(), percentile / 100, dim=1)
    return values.double() < threshold[:, None, None]


def road(
    model: nn.Module | Scorer,
    images: Tensor,
    maps: Tensor,
    targets=None,
    *,
    preprocess: Preprocess | None = None,
    percentiles=ROAD_PERCENTILES,
    order: str = "morf",
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int | None = None,
    output=None,
    forward_kwargs: dict | None = None,
    scores: str = "softmax",
    logits: Tensor | None = None,
) -> Tensor:
    """Per-image ROAD score (B,) (module docstring): ``order`` ``"morf"`` (lower is better), ``"lerf"``
    (higher is better) or ``"combined"`` ((LeRF − MoRF) / 2), the mean over ``percentiles`` of the
    target score's change (``scores``: softmax probabilities by default, as ROAD's accuracy-based scores;
    "logit" as pytorch-grad-cam's ClassifierOutputTarget). The imputation works on the model's input
    tensor, as pytorch-grad-cam's; ``noise`` is the standard deviation of the noise added to the imputed
    values in that space, or in pixel units ([0, 1] images) when ``preprocess`` gives the statistics.
    ``seed``: the noise's generator (results do not depend on the global RNG)."""
    if order not in ROAD_ORDERS:
        raise ValueError(f"order must be one of {ROAD_ORDERS}, got {order!r}")
    chosen = [float(p) for p in percentiles]
    if not chosen or any(not 0 < p < 100 for p in chosen):
        raise ValueError(f"percentiles must be numbers in (0, 100), got {percentiles!r}")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    maps = check_maps(maps, images)
    scorer = scorer_of(
        model, output=output, forward_kwargs=forward_kwargs, scores=scores, batch_size=batch_size
    )
    orders = ("morf", "lerf") if order == "combined" else (order,)
    scale = 1.0 if preprocess is None else 1 / torch.as_tensor(preprocess.std, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with evaluation(scorer):
        t, logits = scorer.clean(images, targets, logits)
        clean = scorer.target_scores(logits, t)
        pixels = images.detach().double().cpu().numpy()
        jobs = [(o, p) for o in orders for p in chosen]
        keeps = {(o, p): road_keep(maps, p, o).cpu().numpy() for o, p in jobs}
        tasks = [(i, job) for job in jobs for i in range(len(images))]
        with ThreadPoolExecutor(max_workers=min(len(tasks), os.cpu_count() or 1)) as pool:
            imputed = list(pool.map(lambda task: impute(pixels[task[0]], keeps[task[1]][task[0]]), tasks))
        change = {}
        for j, job in enumerate(jobs):
            block = torch.from_numpy(np.stack(imputed[j * len(images) : (j + 1) * len(images)]))
            removed = torch.from_numpy(~keeps[job])[:, None]
            draw = torch.randn(block.shape, generator=generator, dtype=torch.float64)
            if preprocess is not None:
                draw = draw * scale[:, None, None]
            block = torch.where(removed, block + noise * draw, block)
            x = block.to(images.device, images.dtype)
            after = torch.cat(
                [
                    scorer.scores(chunk, tt)
                    for chunk, tt in zip(x.split(scorer.batch_size), t.split(scorer.batch_size))
                ]
            )
            change[job] = after - clean
    means = {o: torch.stack([change[(o, p)] for p in chosen]).mean(dim=0) for o in orders}
    return (means["lerf"] - means["morf"]) / 2 if order == "combined" else means[order]
