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
    images = torch.as_tensor(np.asarray(inputs), device=device, dtype=dtype)
    labels = (
        None if targets is None else torch.as_tensor(np.asarray(targets), device=device).long().reshape(-1)
    )
    with saliency.get(method)(model, **options) as explainer:
        maps = explainer(images, labels)
    return maps.detach().float().cpu().numpy()
