"""Any Captum attribution (``captum.attr``) as a castream saliency method.

``CaptumMethod(model, attribution="IntegratedGradients", attribute_kwargs={"n_steps": 32})`` behaves like
every castream method: ``method(images, targets)`` -> ``(B, H, W)`` maps in [0, 1], the model left as found,
targets validated; so its maps go through castream's metrics and runner. Layer attributions (Captum's
``LayerAttribution`` subclasses, e.g. ``LayerGradCam``) take castream's ``layer=`` (default: the model's
default layer). Captum's per-channel attributions are reduced to one map per image by ``reduce``.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..saliency.base import SaliencyMethod

# attributions (B, K, h, w) -> (B, h, w)
REDUCTIONS = {
    "abs-max": lambda a: a.abs().amax(dim=1),  # as castream's guided backprop
    "abs-sum": lambda a: a.abs().sum(dim=1),  # Captum's visualization ("absolute_value")
    "sum": lambda a: a.sum(dim=1),
    "positive-sum": lambda a: a.sum(dim=1).clamp(min=0),
}


def _captum_attr():
    try:
        import captum.attr
    except ImportError as err:
        raise ImportError("Captum interop needs captum: pip install 'castream[captum]'") from err
    return captum.attr


class CaptumMethod(SaliencyMethod):
    """A Captum attribution class (or its name in ``captum.attr``) as a castream saliency method.

    ``reduce``: how channels become one map, one of ``REDUCTIONS`` (default ``"abs-max"`` for input
    attributions, ``"sum"`` for layer attributions, whose channel is usually single, e.g. Grad-CAM's).
    ``attribute_kwargs`` and any other keyword go to Captum's ``attribute`` (``n_steps``, ``baselines``,
    ``relu_attributions``...), so ``--option captum:IntegratedGradients.n_steps=16`` works in the CLI.
    """

    name = "captum"
    attribution: ClassVar[str | type | None] = None

    def __init__(
        self,
        model: nn.Module,
        layer=None,
        *,
        attribution: str | type | None = None,
        reduce: str | None = None,
        attribute_kwargs: dict | None = None,
        output=None,
        reshape=None,
        forward_kwargs: dict | None = None,
        inner: str | type = "Saliency",
        **attribute_options,
    ) -> None:
        attr = _captum_attr()
        attribution = _attribution_class(attribution or type(self).attribution)
        # NoiseTunnel wraps another attribution (SmoothGrad = NoiseTunnel of Saliency): ``inner`` names it
        self.inner = _attribution_class(inner) if attribution.__name__ == "NoiseTunnel" else None
        if self.inner is not None and _takes(self.inner, "layer"):
            raise ValueError(
                f"NoiseTunnel here wraps input attributions; {self.inner.__name__} takes a layer"
            )
        # layer_based: attributions at a layer's resolution; uses_layer: a layer is needed (GuidedGradCam
        # takes one too, and attributes to the input)
        self.layer_based = issubclass(attribution, attr.LayerAttribution)
        self.uses_layer = _takes(attribution, "layer")
        if layer is not None and not self.uses_layer:
            raise ValueError(f"{attribution.__name__} attributes to the input; it takes no layer")
        reduce = reduce or ("sum" if self.layer_based else "abs-max")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {list(REDUCTIONS)}, got {reduce!r}")
        super().__init__(model, layer, output=output, reshape=reshape, forward_kwargs=forward_kwargs)
        self.attribution, self.reduce = attribution, reduce
        self.attribute_kwargs = {**(attribute_kwargs or {}), **attribute_options}

    def __repr__(self) -> str:
        return f"CaptumMethod({self.attribution.__name__}, {type(self.model).__name__})"

    def compute(self, images: Tensor, targets) -> Tensor:
        with torch.no_grad():
            t = self.targets(targets, self.logits(images))

        # attributions that hook the network's modules (GuidedBackprop, DeepLift, LRP...) take a module;
        # the others a function. Either computes castream's logits (forward_kwargs, output selection).
        inner = self.inner or self.attribution
        forward = _Logits(self) if _takes(inner, "model") else (lambda x, *extra: self.logits(x))
        algorithm = inner(forward, self.layers[0][1]) if self.uses_layer else inner(forward)
        if self.inner is not None:
            algorithm = self.attribution(algorithm)
        with torch.enable_grad():
            # a copy: some attributions (DeepLift) set requires_grad on the tensor they are given
            attributions = algorithm.attribute(images.detach().clone(), target=t, **self.attribute_kwargs)
        if self.layer_based:
            attributions = self._as_map(self.layers[0][0], attributions)
        return REDUCTIONS[self.reduce](attributions.detach())


def _attribution_class(attribution: str | type) -> type:
    """A captum.attr Attribution class from itself or its name."""
    attr = _captum_attr()
    if isinstance(attribution, str):
        if not isinstance(getattr(attr, attribution, None), type):
            raise ValueError(f"captum.attr has no attribution {attribution!r}")
        attribution = getattr(attr, attribution)
    if not isinstance(attribution, type) or not issubclass(attribution, attr.Attribution):
        raise TypeError(f"attribution must be a captum.attr Attribution class or name, got {attribution!r}")
    return attribution


def _takes(attribution: type, name: str) -> bool:
    """Whether a Captum attribution's constructor takes ``name`` ("model": a module, not a function;
    "layer")."""
    return name in inspect.signature(attribution.__init__).parameters


class _Logits(nn.Module):
    """A method's logits as a module holding the model, for Captum attributions that register hooks on
    the model's modules."""

    def __init__(self, method: CaptumMethod) -> None:
        super().__init__()
        self.model, self._logits = method.model, method.logits

    def forward(self, x: Tensor, *extra) -> Tensor:
        return self._logits(x)


def method_class(attribution: str) -> type[CaptumMethod]:
    """A CaptumMethod subclass bound to ``attribution`` (what ``saliency.get("captum:NAME")`` returns)."""
    attr = _captum_attr()
    cls = getattr(attr, attribution, None)
    if not isinstance(cls, type) or not issubclass(cls, attr.Attribution):
        raise ValueError(f"captum.attr has no attribution {attribution!r}")
    return type(
        f"Captum{attribution}",
        (CaptumMethod,),
        {
            "attribution": attribution,
            "name": f"captum:{attribution}",
            "uses_layer": _takes(cls, "layer"),
        },
    )
