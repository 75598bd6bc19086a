"""The one mechanism every saliency method shares: model-state handling, hooks, targets, output selection,
upsampling and normalization. A method only implements :meth:`SaliencyMethod.compute`.

Conventions (PROTOCOL.md): maps are ``h(sum_k w_k A^k)`` at feature resolution, then bilinear upsampling to
the input size, then per-image min-max to [0, 1] (a constant map becomes all zeros). Targets are given
class indices or, when ``None``, the predicted class.

The caller's model is left exactly as found: during a call every module is put in eval mode and every
parameter has ``requires_grad=False`` (gradients are taken with respect to activations or inputs only, so
no ``.grad`` is ever accumulated); both are restored afterwards, also when the method raises. Hooks live
only for the duration of one forward pass.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._hooks import forward_hooks, frozen_eval
from .._model import Logits, OutputSelector, check_images, check_targets
from .._precision import at_least_float32, full_precision
from .._scorer import Scorer, target_score
from ..backbones import (
    PRE_POOL,
    channels_last_features,
    default_layer,
    min_input_size,
    module_name,
    pool_activation,
    prefix_tokens,
    resolve_module,
)
from ..maps import finalize_maps
from ..utils import uncompiled


class ChannelsLastReshape:
    """Channels-last features ``(B, H, W, C)`` (timm Swin's stages) -> ``(B, C, H, W)``; the default
    ``reshape`` of a model whose stages are channels-last (``backbones.channels_last_features``)."""

    def __call__(self, features: Tensor) -> Tensor:
        if features.dim() != 4:
            raise ValueError(f"reshape expects (B, H, W, C) features, got {tuple(features.shape)}")
        return features.permute(0, 3, 1, 2)

    def inverse(self, maps: Tensor, features: Tensor) -> Tensor:
        """Put ``(B', C, H, W)`` maps back into the layer's ``(B', H, W, C)`` form."""
        return maps.permute(0, 2, 3, 1)


class TokenReshape:
    """ViT token sequence ``(B, N, C)`` -> ``(B, C, h, w)``: drop the prefix (class) tokens, square grid."""

    def __init__(self, prefix: int = 1) -> None:
        self.prefix = prefix

    def __call__(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3:
            raise ValueError(f"reshape expects a (B, N, C) token sequence, got {tuple(tokens.shape)}")
        patches = tokens[:, self.prefix :]
        side = round(patches.shape[1] ** 0.5)
        if side * side != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    def inverse(self, maps: Tensor, tokens: Tensor) -> Tensor:
        """Put ``(B', C, h, w)`` features back into token form, prefix tokens taken from ``tokens``."""
        patches = maps.flatten(2).transpose(1, 2)
        prefix = tokens[:, : self.prefix].expand(patches.shape[0], -1, -1)
        return torch.cat([prefix, patches], dim=1)


def _reshape(model: nn.Module, reshape: bool | Callable[[Tensor], Tensor] | None):
    """``reshape=True``: a ViT's tokens (or a channels-last model's maps) to ``(B, C, h, w)``; ``None``:
    channels-last maps are permuted (their layers have no other layout), anything else is kept."""
    if channels_last_features(model) and reshape in (None, True):
        return ChannelsLastReshape()
    return TokenReshape(prefix_tokens(model)) if reshape is True else (reshape or None)


class SaliencyMethod:
    """Base class: ``method(images, targets=None, *, upsample=True, normalize=True) -> (B, H, W)``.

    Options every method accepts:
      ``output``: selects the logits when the model returns a tuple/dict (an index, a key or a callable).
      ``forward_kwargs``: extra keyword arguments of every forward (e.g. ``{"pooling": "gap"}``).
      ``progress``: a tqdm bar over the call's forwards (or iterations), for the methods that run many:
      Score-CAM, Ablation-CAM, SA-CAM, Opti-CAM and Extremal Perturbation; the others run one or two
      passes and show none.
    """

    name: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = True
    multi_layer: ClassVar[bool] = False
    masks_input: ClassVar[bool] = False  # forwards masked images: takes preprocess=

    def __init__(
        self,
        model: nn.Module | Scorer,
        layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
        *,
        output: OutputSelector = None,
        reshape: bool | Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: dict | None = None,
        progress: bool = False,
    ) -> None:
        if isinstance(model, Scorer):  # a Scorer fixes the output selection and the forward kwargs
            scorer = Scorer.of(model, output=output, forward_kwargs=forward_kwargs)
            model, output, forward_kwargs = scorer.model, scorer.output, scorer.forward_kwargs
        model = uncompiled(model)  # a torch.compile wrapper: hooks need the eager module (same parameters)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, got {progress!r}")
        self.progress = progress
        self._logits = Logits(model, output, forward_kwargs, min_input_size(model))  # before any hook
        self.model = model
        self.forward_kwargs = self._logits.forward_kwargs
        self.reshape = _reshape(model, reshape)
        self.layers: list[tuple[str, nn.Module]] = self._resolve_layers(layer) if self.uses_layer else []
        # the activation the forward applies to a layer before its global pooling (backbones.pool_activation)
        self._pooled_as = {name: act for name, _ in self.layers if (act := pool_activation(model, name))}

    def _bar(self, total: int, unit: str):
        """The call's progress bar over ``total`` units (a no-op bar unless ``progress=True``)."""
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=type(self).__name__, disable=not self.progress, leave=False)

    @property
    def output(self) -> OutputSelector:
        return self._logits.output

    # -- context manager: hooks exist only during a call, so there is nothing to release on exit ----
    def __enter__(self) -> SaliencyMethod:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:
        layers = ", ".join(n for n, _ in self.layers)
        return f"{type(self).__name__}({type(self.model).__name__}{', ' + layers if layers else ''})"

    def _resolve_layers(self, layer) -> list[tuple[str, nn.Module]]:
        if layer is None:
            layer = default_layer(self.model)
        layers = list(layer) if isinstance(layer, list | tuple) else [layer]
        if not layers or (len(layers) > 1 and not self.multi_layer):
            raise ValueError(f"{type(self).__name__} takes exactly one layer, got {len(layers)}")
        resolved = []
        for item in layers:
            if isinstance(item, nn.Module):
                resolved.append((module_name(self.model, item), item))
            elif isinstance(item, str):
                resolved.append((item, resolve_module(self.model, item, "layer")))
            else:
                raise TypeError(f"layer must be a module name or a module, got {type(item).__name__}")
        return resolved

    # -- public call ---------------------------------------------------------------------------------
    def __call__(
        self,
        images: Tensor,
        targets: int | Sequence[int] | Tensor | None = None,
        *,
        upsample: bool = True,
        normalize: bool = True,
    ) -> Tensor:
        images = check_images(images)
        with self.session():
            maps = self.compute(images.clone() if images.is_inference() else images, targets)
        size = tuple(images.shape[-2:]) if upsample else None
        out = finalize_maps(maps.to(images.dtype), size, normalize)
        self._warn_if_empty(maps, out)
        return out

    def _warn_if_empty(self, raw: Tensor, maps: Tensor) -> None:
        """An all-zero map says nothing about the image: warn, naming the method, the layer and why."""
        empty = (maps.flatten(1).amax(1) == 0).nonzero().flatten().tolist()
        if not empty:
            return
        flat = raw.detach().flatten(1)[empty].float()
        why = (
            "its values before normalization are all <= 0 (the formula's ReLU removed them)"
            if bool((flat.amax(1) <= 0).all())
            else "it is constant before normalization (no spatial variation)"
        )
        where = f" at layer {', '.join(n for n, _ in self.layers)}" if self.layers else ""
        warnings.warn(
            f"{type(self).__name__}{where}: the map of image(s) {empty} is all zero: {why}. Explain another "
            "layer (layer=), check the target, or the layer's activations (are they the ones the pooling "
            "reads?)",
            RuntimeWarning,
            stacklevel=3,
        )

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Autograd available (also inside the caller's ``inference_mode``) and the model frozen in eval
        mode; everything restored on exit."""
        with torch.inference_mode(False), frozen_eval(self.model):
            yield

    def compute(self, images: Tensor, targets) -> Tensor:
        """The method's formula: ``(B, h, w)`` maps after its activation ``h``, at native resolution."""
        raise NotImplementedError

    # -- shared helpers ------------------------------------------------------------------------------
    def _select(self, out: Any) -> Tensor:
        return self._logits.select(out)

    def logits(self, x: Tensor) -> Tensor:
        """Forward pass -> ``(B, num_classes)`` logits; NaN/Inf logits are an error, not NaN maps."""
        return self._logits(x)

    @staticmethod
    def targets(targets: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
        """Class indices ``(B,)``: given ones (validated) or the predicted class."""
        return check_targets(targets, logits)

    def _as_map(self, name: str, activation: Tensor) -> Tensor:
        maps = self.reshape(activation) if self.reshape is not None else activation
        if maps.dim() != 4:
            raise ValueError(
                f"layer {name!r} outputs shape {tuple(activation.shape)}, not a (B, C, h, w) feature map; "
                "pass reshape=True for a ViT token sequence (or a callable)"
            )
        if maps.shape[-2] * maps.shape[-1] == 1:
            raise ValueError(
                f"layer {name!r} has a 1 x 1 feature map for {tuple(maps.shape)} activations: a map of one "
                "position is constant, i.e. all zeros after normalization; explain an earlier layer or use "
                "larger images"
            )
        return maps

    def _hooks(self, store: dict, track_grad: bool, replace: dict | None = None) -> list:
        """Hooks that record each layer's output; with ``track_grad`` the forward continues from a copy
        that requires grad (so gradients w.r.t. it exist even in a frozen model and later in-place ops
        do not alter it). ``replace`` maps a layer name to a function of its output that is substituted."""

        def make(name: str):
            def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
                if not isinstance(output, Tensor):
                    raise ValueError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
                if name in store:
                    raise RuntimeError(f"layer {name!r} ran twice in one forward; choose another layer")
                if replace is not None and name in replace:  # substituted activations (Ablation-CAM)
                    store[name] = replace[name](output)
                    return store[name]
                if track_grad:
                    leaf = output if output.requires_grad else output.detach().requires_grad_(True)
                    store[name] = leaf
                    return leaf.clone()
                store[name] = output.clone()  # a later in-place op must not alter the stored activation
                return None

            return hook

        return [(module, make(name)) for name, module in self.layers]

    def _run(self, images: Tensor, track_grad: bool, replace: dict | None = None) -> tuple[dict, Tensor]:
        store: dict[str, Tensor] = {}
        with forward_hooks(self._hooks(store, track_grad, replace)):
            logits = self.logits(images)
        missing = [name for name, _ in self.layers if name not in store]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass")
        return store, logits

    def activations(self, images: Tensor, targets) -> tuple[list[Tensor], Tensor, Tensor]:
        """Feature maps ``A`` of the layers (B, K, h, w) without autograd, targets and logits."""
        with torch.no_grad():
            store, logits = self._run(images, track_grad=False)
        maps = [self._as_map(name, self._pooled(name, store[name])) for name, _ in self.layers]
        return maps, self.targets(targets, logits), logits

    def _pooled(self, name: str, activation: Tensor) -> Tensor:
        """A layer's activation ``A`` as the global pooling reads it, ``f(A)`` for the activation ``f`` the
        forward applies in between (``backbones.pool_activation``). Gradients stay ``d y / d A``, i.e.
        ``d y / d f(A) * f'(A)``: the activation is a function call, not a module that a hook could see."""
        act = self._pooled_as.get(name)
        return PRE_POOL[act](activation) if act is not None else activation

    def activations_and_gradients(self, images: Tensor, targets) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Feature maps ``A`` and ``g = d y_c / d A`` of each layer; one forward and one backward."""
        with torch.enable_grad():
            store, logits = self._run(images, track_grad=True)
            t = self.targets(targets, logits)
            leaves = [store[name] for name, _ in self.layers]
            grads = torch.autograd.grad(target_score(logits, t).sum(), leaves, allow_unused=True)
        acts, gs = [], []
        for (name, _), leaf, grad in zip(self.layers, leaves, grads):
            grad = torch.zeros_like(leaf) if grad is None else grad
            acts.append(self._as_map(name, self._pooled(name, leaf.detach())))
            gs.append(self._as_map(name, grad))
        return acts, gs, t


def combine(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k w_k A^k`` for weights (B, K) and activations (B, K, h, w) -> (B, h, w) (thesis (1.3)), in at
    least float32 also under autocast (a bf16 sum over K channels would quantize the map)."""
    activations = at_least_float32(activations)
    with full_precision():
        return torch.einsum("bk,bkhw->bhw", weights.to(activations.dtype), activations)


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den`` is 0 (never NaN or Inf)."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))
