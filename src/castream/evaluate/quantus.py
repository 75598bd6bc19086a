"""Quantus' metrics as castream metric groups (``--metrics quantus:NAME``): Quantus runs on the cell's maps,
castream aggregates its per-image scores (see :func:`metric_group`)."""

from __future__ import annotations

import numpy as np
import torch

from ..interop.quantus import _CALL_OPTIONS, _PER_IMAGE, _Model, _signature, batch_seed, seeded
from .groups import GROUPS, Column, MetricGroup, register_group


def metric_group(name: str):
    """Quantus' metric ``name`` (e.g. ``FaithfulnessCorrelation``) as a castream metric group of one
    per-image column, ``quantus_<name>``: Quantus runs on the cell's maps batch by batch (re-explaining with
    the cell's own method where the metric needs it, on the model Quantus passes), and its per-image scores
    go through castream's aggregation, intervals and report. A metric that does not return one score per
    image, or needs data the runner does not give (segmentation masks), is an error naming why."""
    try:
        import quantus
    except ImportError:
        raise ValueError(f"quantus:{name} needs Quantus: pip install 'castream[quantus]'") from None
    cls = getattr(quantus, name, None)
    if not (isinstance(cls, type) and issubclass(cls, quantus.Metric)):
        found = sorted(
            n
            for n in dir(quantus)
            if isinstance(getattr(quantus, n), type)
            and issubclass(getattr(quantus, n), quantus.Metric)
            and n[0].isupper()
        )
        raise ValueError(f"quantus has no metric {name!r}; its metrics: {found}")
    higher = getattr(getattr(cls, "score_direction", None), "name", "HIGHER") != "LOWER"
    key = "quantus_" + "".join(c for c in name.lower() if c.isalnum())

    def options_of(**options):  # the signature below: what check_options lets users set
        return options

    options_of.__signature__ = _signature(cls)

    def run(ctx) -> dict:
        options = dict(ctx.options)
        call = {k: options.pop(k) for k in _CALL_OPTIONS if k in options}
        metric = cls(**{"disable_warnings": True, "display_progressbar": False, **options, **_PER_IMAGE})
        model = _Model(ctx.scorer)
        model.training = False  # what Quantus checks; the wrapped model's own mode is left as it is

        def explain_func(model, inputs, targets, **_):
            module = model.model if isinstance(model, _Model) else model
            images = torch.as_tensor(np.asarray(inputs), device=ctx.images.device, dtype=ctx.images.dtype)
            labels = torch.as_tensor(np.asarray(targets).astype(np.int64), device=ctx.images.device)
            with torch.enable_grad():
                maps = ctx.rebuild(module)(images, labels.reshape(-1))
            return maps[:, None].detach().float().cpu().numpy()

        try:
            with seeded(batch_seed(ctx.seed, ctx.indices)):
                scores = metric(
                    model=model,
                    x_batch=ctx.images.detach().float().cpu().numpy(),
                    y_batch=ctx.targets.cpu().numpy(),
                    a_batch=ctx.maps[:, None].detach().float().cpu().numpy(),
                    explain_func=explain_func,
                    device=str(ctx.images.device),
                    **call,
                )
        except (AssertionError, ValueError, TypeError) as err:
            if "s_batch" in str(err) or "segmentation" in str(err).lower():
                raise ValueError(
                    f"quantus:{name} needs segmentation masks (s_batch), which the runner does not give"
                ) from None
            raise ValueError(f"quantus:{name} failed on a batch: {type(err).__name__}: {err}") from None
        values = np.asarray(scores, dtype=np.float64) if not isinstance(scores, dict) else None
        if values is None or values.shape != (len(ctx.images),):
            shape = "a dict" if values is None else f"shape {values.shape}"
            raise ValueError(
                f"quantus:{name} returned {shape} for {len(ctx.images)} images, not one score per image; "
                "castream aggregates per-image scores"
            )
        if not np.isfinite(values).all():
            bad = [ctx.indices[i] for i in np.flatnonzero(~np.isfinite(values))]
            raise ValueError(f"quantus:{name} gave non-finite scores for images {bad}")
        return {key: torch.from_numpy(values).float()}

    column = Column(
        key, f"Quantus {name}", percent=False, lower_is_better=not higher, compared=True, table="quantus"
    )
    return MetricGroup(f"quantus:{name}", (column,), run, options_of=options_of)


def register(name: str) -> None:
    """Register ``"quantus:NAME"`` as a metric group, once."""
    if name not in GROUPS:
        register_group(metric_group(name.split(":", 1)[1]))
