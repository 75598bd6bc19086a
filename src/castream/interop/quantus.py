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
