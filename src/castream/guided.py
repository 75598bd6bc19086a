"""Guided backpropagation (Springenberg et al.) without touching the model object.

Inside ``with guided_relu():`` every ReLU-type activation called during a forward (``nn.ReLU``,
``F.relu``, ``torch.relu``, ``Tensor.relu``, their in-place forms, ``nn.ReLU6``/``F.relu6`` and
``F.hardtanh`` clipping at 0) is computed by :class:`GuidedReLU`: the same forward values, but a
backward that passes only *positive* gradients, and only where the input was in the activation's linear
range. It works through a ``torch.overrides.TorchFunctionMode`` that intercepts these calls, so no
module is swapped, no hook is registered, and functional calls inside library blocks (e.g. torchvision
ResNet's shared in-place ``relu``) are covered as well as modules.

``with switchable_relu():`` records the same activations with :class:`SwitchableReLU`, whose backward is
the standard one, or the guided one inside ``with guided_backward():``. One forward graph then gives
both the guided and the standard input gradient (the gradient regularizer of thesis ch. 4 uses it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ._scorer import target_score


class _ClampedActivation(torch.autograd.Function):
    """``clamp(x, low, high)`` that keeps the mask of its linear range for a custom backward."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float | None) -> Tensor:
        open_ = x > low if high is None else (x > low) & (x < high)
        ctx.save_for_backward(open_)
        return x.clamp(min=low, max=high)


class GuidedReLU(_ClampedActivation):
    """Backward ``ReLU(grad) * 1[low < x < high]``: positive gradients through the linear range only."""

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (open_,) = ctx.saved_tensors
        return grad.clamp(min=0) * open_, None, None


# A process-wide switch, not a context variable: CUDA backward passes run on autograd worker threads.
_GUIDED = [False]


@contextlib.contextmanager
def guided_backward() -> Iterator[None]:
    """Backward passes run inside this block treat every :class:`SwitchableReLU` as guided."""
    previous, _GUIDED[0] = _GUIDED[0], True
    try:
        yield
    finally:
        _GUIDED[0] = previous


class SwitchableReLU(_ClampedActivation):
    """Backward ``grad * 1[low < x < high]`` (the true gradient, twice differentiable), or the guided
    rule inside :func:`guided_backward`."""

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (open_,) = ctx.saved_tensors
        return (grad.clamp(min=0) if _GUIDED[0] else grad) * open_, None, None


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


class _ActivationMode(TorchFunctionMode):
    """Computes ReLU-type calls with ``function`` while active; ``calls`` counts them."""

    function: type[_ClampedActivation]

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
        out = self.function.apply(x, low, high)
        return x.copy_(out) if in_place else out


def require_activations(mode: _ActivationMode) -> None:
    """Guided backpropagation needs at least one ReLU-type activation in the forward."""
    if mode.calls == 0:
        raise ValueError(
            "the model has no ReLU-type activation (ReLU, ReLU6, hardtanh at 0): guided backpropagation "
            "is undefined for it"
        )


class guided_relu(_ActivationMode):
    """Context manager: ReLU-type activations backpropagate guided gradients."""

    function = GuidedReLU


class switchable_relu(_ActivationMode):
    """Context manager: ReLU-type activations backpropagate the standard gradient, or the guided one
    inside :func:`guided_backward`."""

    function = SwitchableReLU


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
        require_activations(mode)
        t = targets(logits) if callable(targets) else targets
        (grad,) = torch.autograd.grad(target_score(logits, t).sum(), x)
    return grad
