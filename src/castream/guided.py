"""Guided backpropagation (Springenberg et al.) without touching the model object.

Inside ``with guided_relu():`` every ReLU-type activation called during a forward (``nn.ReLU``,
``F.relu``, ``torch.relu``, ``Tensor.relu``, their in-place forms, ``nn.ReLU6``/``F.relu6`` and
``F.hardtanh`` clipping at 0) is computed by :class:`GuidedReLU`: the same forward values, but a
backward that passes only *positive* gradients, and only where the input was in the activation's linear
range. It works through a ``torch.overrides.TorchFunctionMode`` that intercepts these calls, so no
module is swapped, no hook is registered, and functional calls inside library blocks (e.g. torchvision
ResNet's shared in-place ``relu``) are covered as well as modules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


class GuidedReLU(torch.autograd.Function):
    """``clamp(x, low, high)`` whose backward is ``ReLU(grad) * 1[low < x < high]``."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float | None) -> Tensor:
        open_ = x > low if high is None else (x > low) & (x < high)
        ctx.save_for_backward(open_)
        return x.clamp(min=low, max=high)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (open_,) = ctx.saved_tensors
        return grad.clamp(min=0) * open_, None, None


_RELU = {F.relu, torch.relu, Tensor.relu}
_RELU_INPLACE = {F.relu_, torch.relu_, Tensor.relu_}
_RELU6 = {F.relu6}
_HARDTANH = {F.hardtanh, F.hardtanh_}


def _bounds(func, args: tuple, kwargs: dict) -> tuple[float, float | None, bool] | None:
    """(low, high, in_place) of a ReLU-type call, or None for any other call."""
    if func in _RELU:
        return 0.0, None, bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
    if func in _RELU_INPLACE:
        return 0.0, None, True
    if func in _RELU6:
        return 0.0, 6.0, bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
    if func in _HARDTANH:
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        in_place = func is F.hardtanh_ or bool(kwargs.get("inplace", args[3] if len(args) > 3 else False))
        return (float(low), float(high), in_place) if low == 0 else None
    return None


class guided_relu(TorchFunctionMode):
    """Context manager: ReLU-type activations backpropagate guided gradients. ``calls`` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bounds = _bounds(func, args, kwargs)
        if bounds is None or not torch.is_grad_enabled() or not args[0].requires_grad:
            self.calls += bounds is not None
            return func(*args, **kwargs)
        self.calls += 1
        low, high, in_place = bounds
        x = args[0]
        out = GuidedReLU.apply(x, low, high)
        return x.copy_(out) if in_place else out


def guided_gradient(
    forward: Callable[[Tensor], Tensor], images: Tensor, targets: Tensor | Callable[[Tensor], Tensor]
) -> Tensor:
    """Guided input gradient ``d_G y_c / d x`` (B, C, H, W) of the target logits of ``forward(x)``.

    ``targets`` is a (B,) tensor of class indices, or a function of the logits giving them (so one forward
    serves both prediction and gradient). Raises ValueError when the forward runs no ReLU-type
    activation: guided backpropagation is undefined there.
    """
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        with guided_relu() as mode:
            logits = forward(x)
        if mode.calls == 0:
            raise ValueError(
                "the model has no ReLU-type activation (ReLU, ReLU6, hardtanh at 0): guided "
                "backpropagation is undefined for it"
            )
        t = targets(logits) if callable(targets) else targets
        (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x)
    return grad
