"""Dataset-level aggregation: per-image values -> mean and a seeded bootstrap 95% confidence interval.

Values are kept per image with their global image index, so a sharded (distributed or resumed) run
sorts them into the same order as a single run and gives identical results. NaN rows (e.g. images
without boxes for localization) are skipped and counted.

The bootstrap draws its resamples in chunks of at most ``CHUNK`` indices from one generator: the same
random stream as one ``(resamples, n)`` draw, in bounded memory at any n (a 1.28 M-image metric holds
64 MB of draws, not 20 GB). The per-image metrics of one run cell (plain means over the same images)
share one resampling: each resample draws images, and every metric is averaged over the same draw, as
the bootstrap of a table of per-image rows does. Its means are one matrix product, multiplicity counts
@ values (they equal the gathered means to ~1e-16), so a report at 50,000 images draws 12 times, not
157. BoxAcc and the fading rate are resampled as tensors (multiplicity counts times hit indicators,
and resampled means), not a Python call per resample; their intervals equal the per-resample calls'
bit for bit (the sums are of 0/1 values, hence exact), except the fading rate of non-binary
accuracies, whose means may differ in the last bit.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from .localization import DELTAS, box_accuracy_from_ious
from .robustness import fading_rate

Reducer = Callable[[Tensor], float]
CHUNK = 1 << 22  # bootstrap indices drawn at a time (32 MB of int64, and as much for the gathered values)


def draws(n: int, resamples: int, generator: torch.Generator) -> Iterator[Tensor]:
    """The bootstrap's ``(rows, n)`` index draws, chunk by chunk: together, exactly the rows of one
    ``torch.randint(n, (resamples, n), generator=generator)`` call."""
    rows = max(1, CHUNK // n)
    for start in range(0, resamples, rows):
        yield torch.randint(n, (min(rows, resamples - start), n), generator=generator)


def resample_counts(
    n: int, resamples: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> Iterator[Tensor]:
    """The bootstrap's :func:`draws`, chunk by chunk, as ``(rows, n)`` multiplicities: how often each
    image is drawn in each resample (a resample's sum of per-image values is ``counts @ values``)."""
    for d in draws(n, resamples, generator):
        yield torch.zeros(len(d), n, dtype=dtype).scatter_add_(
            1, d, torch.ones((), dtype=dtype).expand(d.shape)
        )


def resampled_means(values: Tensor, resamples: int, generator: torch.Generator) -> Tensor:
    """``(resamples,)`` means of bootstrap resamples of the rows of ``values`` (n,), or ``(resamples, m)``
    for the m columns of ``values`` (n, m), every column resampled with the same draws: one draw and one
    matrix product serve every metric of the same images."""
    n = len(values)
    return torch.cat(
        [counts @ values / n for counts in resample_counts(n, resamples, generator, values.dtype)]
    )


def _boxacc_resampled(ious: Tensor, resamples: int, generator: torch.Generator) -> Tensor:
    """:func:`box_accuracy_from_ious` of every resample: the fraction of images whose IoU reaches δ at
    each threshold is (multiplicity counts) @ (hit indicators) / n, exact in float32 as the sums are."""
    n = len(ious)
    hits = torch.cat([(ious >= d).float() for d in DELTAS], dim=1)  # (n, thresholds * deltas)
    out = []
    for counts in resample_counts(n, resamples, generator, torch.float32):
        best = (counts @ hits / n).unflatten(1, (len(DELTAS), -1)).amax(dim=2)  # (rows, deltas)
        total = best[:, 0]
        for column in range(1, len(DELTAS)):  # the per-resample call's float32 sum, in its order
            total = total + best[:, column]
        out.append(total / len(DELTAS))
    return torch.cat(out)


def _fading_resampled(rows: Tensor, resamples: int, generator: torch.Generator) -> Tensor:
    """:func:`fading_rate` of every resample of the (adversarial, clean) accuracy rows."""
    means = torch.cat([rows[d].mean(dim=1) for d in draws(len(rows), resamples, generator)])
    rate = 1 - means[:, 0] / means[:, 1]
    return torch.where(means[:, 1] > 0, rate, torch.nan).float()


_RESAMPLED = {box_accuracy_from_ious: _boxacc_resampled, fading_rate: _fading_resampled}


def _mean(values: Tensor) -> float:
    return float(values.mean())


class Aggregator:
    """``update(name, per_image_values)`` then ``compute() -> {name: (mean, low, high)}``.

    ``values`` are (B,) or (B, m) per-image tensors; ``indices`` (B,) are global image indices (default:
    consecutive in update order). The statistic is the mean, or ``reducers[name]`` applied to the stacked
    rows (by default ``"boxacc"`` expects :func:`threshold_ious` rows and ``"fading"`` (adversarial,
    clean) accuracy rows for :func:`fading_rate`). The interval is the percentile
    bootstrap over images with ``resamples`` draws from ``seed``.
    """

    def __init__(
        self,
        *,
        confidence: float = 0.95,
        resamples: int = 1000,
        seed: int = 0,
        reducers: dict[str, Reducer] | None = None,
    ) -> None:
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
        self.confidence, self.resamples, self.seed = confidence, resamples, seed
        self.reducers: dict[str, Reducer] = {
            "boxacc": box_accuracy_from_ious,
            "fading": fading_rate,
            **(reducers or {}),
        }
        self._values: dict[str, list[Tensor]] = {}
        self._indices: dict[str, list[Tensor]] = {}

    def update(self, name: str, values: Tensor, indices: Tensor | None = None) -> None:
        values = torch.as_tensor(values).detach().double().cpu()
        if values.dim() == 0 or values.dim() > 2:
            raise ValueError(
                f"values of {name!r} must be per-image (B,) or (B, m), got {tuple(values.shape)}"
            )
        if indices is None:
            start = sum(len(v) for v in self._values.get(name, []))
            indices = torch.arange(start, start + len(values))
        indices = torch.as_tensor(indices).long().cpu()
        if indices.shape != values.shape[:1]:
            raise ValueError(f"{len(values)} values of {name!r} but {len(indices)} indices")
        self._values.setdefault(name, []).append(values)
        self._indices.setdefault(name, []).append(indices)

    @property
    def names(self) -> list[str]:
        return list(self._values)

    def values(self, name: str) -> tuple[Tensor, Tensor]:
        """All values of ``name`` and their indices, sorted by image index."""
        values, indices = torch.cat(self._values[name]), torch.cat(self._indices[name])
        order = indices.argsort(stable=True)
        values, indices = values[order], indices[order]
        if len(indices) > 1 and (indices[1:] == indices[:-1]).any():
            raise ValueError(f"metric {name!r} received the same image index twice")
        return values, indices

    def merge(self) -> Aggregator:
        """Gather every process's values (torch.distributed, when initialized) into this aggregator."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            state = {n: (torch.cat(self._values[n]), torch.cat(self._indices[n])) for n in self.names}
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, state)
            self._values, self._indices = {}, {}
            for part in gathered:
                for n, (v, i) in part.items():
                    self.update(n, v, i)
        return self

    def _statistic(self, name: str, values: Tensor) -> float:
        return self.reducers.get(name, _mean)(values)

    def summary(self) -> dict[str, dict]:
        """Per metric: mean (or reducer), CI bounds, number of images used and skipped (NaN)."""
        out = {}
        generator = torch.Generator().manual_seed(self.seed)
        alpha = (1 - self.confidence) / 2
        kept = {}
        for name in self.names:
            values, indices = self.values(name)
            keep = ~values.isnan().reshape(len(values), -1).any(dim=1)
            kept[name] = (values[keep], indices[keep], int((~keep).sum()))
        # plain means of the same images share one resampling (drawn where the first of them comes)
        shared: dict[str, tuple] = {}
        for name, (used, indices, _) in kept.items():
            if name not in self.reducers and used.dim() == 1 and len(used):
                shared.setdefault(indices.numpy().tobytes(), []).append(name)
        groups = {name: members for members in shared.values() for name in members}
        resampled: dict[str, Tensor] = {}
        for name, (used, _, skipped) in kept.items():
            n = len(used)
            entry = {"n": n, "skipped": skipped}
            if n == 0:
                out[name] = {**entry, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
                continue
            point = self._statistic(name, used)
            reducer = self.reducers.get(name)
            if name in groups:
                if name not in resampled:
                    members = groups[name]
                    stacked = torch.stack([kept[m][0] for m in members], dim=1)
                    resampled.update(zip(members, resampled_means(stacked, self.resamples, generator).T))
                boot = resampled[name]
            elif reducer in _RESAMPLED:
                boot = _RESAMPLED[reducer](used, self.resamples, generator)
            else:  # a user's reducer: one call per resample
                boot = torch.tensor(
                    [self._statistic(name, used[d]) for c in draws(n, self.resamples, generator) for d in c]
                )
            low, high = torch.quantile(boot, torch.tensor([alpha, 1 - alpha], dtype=boot.dtype)).tolist()
            out[name] = {**entry, "mean": point, "low": low, "high": high}
        return out

    def compute(self) -> dict[str, tuple[float, float, float]]:
        return {k: (v["mean"], v["low"], v["high"]) for k, v in self.summary().items()}

    def record(self, **meta) -> dict:
        """A result record: metric values with CIs, image counts, and ``meta`` (protocol, method, pooling,
        model, seed, ...) plus the castream, torch and Python versions."""
        import castream

        summary = self.summary()
        return {
            **meta,
            "metrics": summary,
            "images": max((v["n"] + v["skipped"] for v in summary.values()), default=0),
            "confidence": self.confidence,
            "bootstrap": {"resamples": self.resamples, "seed": self.seed},
            "versions": {
                "castream": castream.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }


def _paired_differences(a: Tensor, b: Tensor, confidence: float, resamples: int) -> Tensor:
    """The per-image differences ``b - a`` (float64, NaN pairs dropped) after checking the arguments of a
    paired comparison."""
    a, b = torch.as_tensor(a).double().flatten().cpu(), torch.as_tensor(b).double().flatten().cpu()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same images: got {len(a)} and {len(b)} values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    return (b - a)[~(a.isnan() | b.isnan())]


def paired_bootstrap(
    a: Tensor, b: Tensor, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> dict:
    """Paired percentile bootstrap of ``mean(b) - mean(a)`` over images (PROTOCOL.md): ``a`` and ``b`` are
    per-image values (n,) of the same images in the same order (e.g. GAP and CA pooling), and every
    resample draws the same image indices for both, so the interval reflects the per-image differences.
    Pairs with a NaN on either side are dropped (``n`` counts the pairs used). ``significant`` is True
    when the ``confidence`` interval excludes 0."""
    diff = _paired_differences(a, b, confidence, resamples)
    if not torch.isfinite(diff).all():
        raise ValueError("paired values must be finite (NaN pairs aside); got an infinite difference")
    n = len(diff)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "low": nan, "high": nan, "significant": False}
    boot = resampled_means(diff, resamples, torch.Generator().manual_seed(seed))
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(boot, torch.tensor([alpha, 1 - alpha], dtype=boot.dtype)).tolist()
    return {"n": n, "mean": float(diff.mean()), "low": low, "high": high, "significant": not low <= 0 <= high}


def _studentized(diffs: Tensor, resamples: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, standard error, bootstrap t values (R, resamples)) of the rows of ``diffs`` (R, n), every row
    resampled with the same index draws. A resample with no spread (all its values equal, as when a sparse
    0/1 difference such as the accuracy's loses its few non-zero values) is studentized by the sample's
    standard error instead of its own zero."""
    n = diffs.shape[1]
    mean, se = diffs.mean(dim=1), diffs.std(dim=1) / n**0.5
    t = []
    for d in draws(n, resamples, generator):
        sample = diffs[:, d]  # (R, rows, n)
        m, s = sample.mean(dim=2), sample.std(dim=2) / n**0.5
        scale = torch.where(s > 0, s, se[:, None])
        t.append(torch.where(scale > 0, (m - mean[:, None]) / scale.clamp(min=1e-300), 0.0))
    return mean, se, torch.cat(t, dim=1)


def paired_test(
    a: Tensor, b: Tensor, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> dict:
    """Paired studentized (bootstrap-t) test of ``mean(b) - mean(a)`` over images: the claims' verdicts
    (``evaluate.claims``). It resamples the per-image differences as :func:`paired_bootstrap` does, but
    refers each resample's t statistic, not its mean, which keeps one-sided errors near nominal for the
    skewed and small samples where the percentile interval under-covers (n = 20-32).

    Returns ``n``, ``mean``, the ``confidence`` interval ``low``/``high`` and the one-sided p-values
    ``p_greater`` (evidence that the difference is > 0) and ``p_less`` (< 0), each ``(1 + #{t* beyond the
    observed t}) / (1 + resamples)``. Pairs with a NaN are dropped; all-equal differences have no spread:
    p = 1 both ways when they are 0, else the smallest p on their side (the interval is the point). An
    infinite difference is an error: it has no mean to test."""
    return paired_tests({None: (a, b)}, confidence=confidence, resamples=resamples, seed=seed)[None]


def paired_tests(
    pairs: dict, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> dict[object, dict]:
    """:func:`paired_test` of every ``key: (a, b)`` pair, the pairs of the same images (after their NaN
    pairs are dropped) tested at once: the same draws of ``seed`` as one call each, drawn once."""
    groups: dict[bytes, list] = {}
    diffs = {}
    for key, (a, b) in pairs.items():
        diffs[key] = _paired_differences(a, b, confidence, resamples)  # checks the arguments first
        a, b = torch.as_tensor(a).double().flatten().cpu(), torch.as_tensor(b).double().flatten().cpu()
        keep = ~(a.isnan() | b.isnan())
        if not torch.isfinite(diffs[key]).all():
            where = "" if key is None else f" ({key})"
            raise ValueError(
                f"paired values must be finite (NaN pairs aside); got an infinite difference{where}"
            )
        groups.setdefault(keep.numpy().tobytes(), []).append(key)
    out, nan = {}, float("nan")
    for keys in groups.values():
        n = len(diffs[keys[0]])
        if n < 2:
            for key in keys:
                mean = float(diffs[key].mean()) if n else nan
                out[key] = {"n": n, "mean": mean, "low": nan, "high": nan, "p_greater": 1.0, "p_less": 1.0}
            continue
        stacked = torch.stack([diffs[key] for key in keys])
        tested = studentized_tests(stacked, confidence=confidence, resamples=resamples, seed=seed)
        out.update(zip(keys, tested))
    return {key: out[key] for key in pairs}


def studentized_tests(
    diffs: Tensor, *, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> list:
    """:func:`paired_test` of every row of ``diffs`` (R, n) at once (the simulation of the verdict rule's
    error rates runs thousands of claims)."""
    mean, se, t = _studentized(diffs.double(), resamples, torch.Generator().manual_seed(seed))
    alpha = (1 - confidence) / 2
    spread = se > 0
    observed = torch.where(spread, mean / se.clamp(min=1e-300), mean.sign() * torch.inf)
    # large observed t favour a difference > 0; each resample's t is centred on the sample mean
    p_greater = (1 + (t >= observed[:, None]).sum(dim=1)) / (1 + resamples)
    p_less = (1 + (t <= observed[:, None]).sum(dim=1)) / (1 + resamples)
    quantiles = torch.quantile(t, torch.tensor([alpha, 1 - alpha], dtype=t.dtype), dim=1)
    low = torch.where(spread, mean - quantiles[1] * se, mean)
    high = torch.where(spread, mean - quantiles[0] * se, mean)
    zero = ~spread & (mean == 0)
    p_greater, p_less = p_greater.masked_fill(zero, 1.0), p_less.masked_fill(zero, 1.0)
    return [
        {
            "n": diffs.shape[1],
            "mean": float(m),
            "low": float(lo),
            "high": float(hi),
            "p_greater": float(g),
            "p_less": float(ls),
        }
        for m, lo, hi, g, ls in zip(mean, low, high, p_greater, p_less)
    ]
