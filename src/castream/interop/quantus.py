"""castream's saliency methods as a Quantus ``explain_func``.

    import quantus
    from castream.interop.quantus import explain
    quantus.MaxSensitivity()(model=model, x_batch=x, y_batch=y, explain_func=explain,
                             explain_func_kwargs={"method": "gradcam"}, device="cpu")

Quantus calls ``explain(model=..., inputs=..., targets=..., **explain_func_kwargs)`` with numpy arrays and
expects numpy attributions; ``explain`` builds the castream method ``method`` (any name of
``castream.saliency.get``, with its ``**options``) and returns its ``(B, H, W)`` maps in [0, 1].
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from .. import saliency


def explain(
    model: nn.Module, inputs, targets, *, method: str = "gradcam", device: str | None = None, **options
) -> np.ndarray:
    """Maps ``(B, H, W)`` (float32 numpy) of castream method ``method`` for Quantus."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"castream explains torch models; Quantus passed a {type(model).__name__}")
    reference = next(model.parameters(), None)
    device = device or (reference.device if reference is not None else "cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    array = np.asarray(inputs)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"inputs must be floating-point model inputs (normalized images), got {array.dtype}; convert "
            "uint8 pixels with your preprocessing first"
        )
    if array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        raise ValueError(
            f"inputs of shape {array.shape} look channels-last (B, H, W, C); castream and Quantus' torch "
            "models take (B, C, H, W): pass inputs.transpose(0, 3, 1, 2)"
        )
    images = torch.as_tensor(array, device=device, dtype=dtype)
    labels = None
    if targets is not None:
        classes = np.asarray(targets)
        if classes.dtype == bool or not np.issubdtype(classes.dtype, np.integer):
            integral = np.issubdtype(classes.dtype, np.floating) and np.all(np.mod(classes, 1) == 0)
            if not integral:
                raise TypeError(
                    f"targets must be integer class indices, got {classes.dtype} {classes.tolist()}"
                )
        labels = torch.as_tensor(classes.astype(np.int64), device=device).reshape(-1)
    with saliency.get(method)(model, **options) as explainer:
        maps = explainer(images, labels)
    return maps.detach().float().cpu().numpy()


class _Model(nn.Module):
    """The cell's model as Quantus calls it, ``model(x) -> logits``: the Scorer's forward (pooling, output
    selection); the wrapped model is a submodule, so a Quantus metric that randomizes layers sees them."""

    def __init__(self, scorer) -> None:
        super().__init__()
        self.model, self._scorer = scorer.model, scorer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.model)(x)

    def _logits(self, model: nn.Module):
        """The Scorer's forward on ``model`` (the wrapped one, or Quantus' randomized deep copy of it)."""
        from .._model import Logits

        return Logits(model, self._scorer.output, self._scorer.forward_kwargs)


# options of a Quantus metric's call (the others go to its constructor)
_CALL_OPTIONS = ("softmax", "channel_first")
_PER_IMAGE = {"return_aggregate": False}  # castream aggregates the per-image scores itself


def _signature(cls) -> inspect.Signature:
    """The keyword options of Quantus metric ``cls``: its constructor's, and the call's ``softmax``."""
    init = [
        p for p in list(inspect.signature(cls.__init__).parameters.values())[1:] if p.default is not p.empty
    ]
    call = inspect.signature(cls.__call__).parameters
    extra = [call[k] for k in _CALL_OPTIONS if k in call]
    return inspect.Signature(
        [
            inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default)
            for p in [*init, *extra]
        ]
    )


def batch_seed(seed: int, indices) -> int:
    """The seed of one batch's Quantus call: the run's seed and the batch's image indices, so a resumed or
    distributed run draws what a single uninterrupted one draws."""
    return int(np.random.SeedSequence([seed, *map(int, indices)]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """NumPy's and torch's global generators seeded for the block (Quantus draws from them), and restored
    after it, so the caller's random state is left as it was."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


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
    from ..evaluate.groups import Column, MetricGroup

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
