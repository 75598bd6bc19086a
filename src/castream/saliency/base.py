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
from ..maps import eigen_projection, finalize_maps, normalize_maps
from ..targets import Scores, as_scores, is_callable_targets
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
      ``aug_smooth``: the mean of the maps of 6 augmented inputs, horizontal flip x intensity factors 0.9,
      1, 1.1, each flipped back (pytorch-grad-cam's test-time augmentation); the class explained is the
      one of the original images (pytorch-grad-cam re-predicts it per augmentation when no target is
      given); the mean is min-max normalized like every map.
      ``eigen_smooth`` (CAM methods, whose map sums per-channel terms ``C_k`` of a layer): the first
      principal component of the ``C_k`` over the positions instead of their sum (pytorch-grad-cam's
      option; :func:`castream.maps.eigen_projection`).
      ``fusion`` (several layers, ``layer=[...]``): ``"input"``, pytorch-grad-cam's: each layer's map
      min-max normalized and resized to the output size, then their mean; ``"finest"``, castream's Layer-CAM
      convention (thesis §1.3.2): resized to the finest layer's resolution instead, then averaged.
    """

    name: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = True
    multi_layer: ClassVar[bool] = False
    masks_input: ClassVar[bool] = False  # forwards masked images: takes preprocess=
    callable_targets: ClassVar[bool] = False  # takes callables of the output as targets (castream.targets)
    cam_family: ClassVar[bool] = False  # the map sums per-channel terms of a layer: eigen_smooth applies
    default_fusion: ClassVar[str] = "input"
    FUSIONS: ClassVar[tuple[str, ...]] = ("input", "finest")
    AUGMENTATIONS: ClassVar[tuple[tuple[bool, float], ...]] = tuple(
        (flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)
    )

    def __init__(
        self,
        model: nn.Module | Scorer,
        layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
        *,
        output: OutputSelector = None,
        reshape: bool | Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: dict | None = None,
        progress: bool = False,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        fusion: str | None = None,
    ) -> None:
        for option, value in (("aug_smooth", aug_smooth), ("eigen_smooth", eigen_smooth)):
            if not isinstance(value, bool):
                raise TypeError(f"{option} must be True or False, got {value!r}")
        if eigen_smooth and not self.cam_family:
            raise ValueError(
                f"{type(self).__name__} has no per-channel sum for eigen_smooth to replace; it applies to "
                "the CAM methods (a weighted sum of a layer's channels)"
            )
        fusion = self.default_fusion if fusion is None else fusion
        if fusion not in self.FUSIONS:
            raise ValueError(f"fusion must be one of {self.FUSIONS}, got {fusion!r}")
        self.aug_smooth, self.eigen_smooth, self.fusion = aug_smooth, eigen_smooth, fusion
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
        size = tuple(images.shape[-2:]) if upsample else None
        with self.session():
            images = images.clone() if images.is_inference() else images
            maps = (
                self._augmented(images, targets, size)
                if self.aug_smooth
                else self._maps(images, targets, size)
            )
        out = finalize_maps(maps.to(images.dtype), size, normalize)
        self._warn_if_empty(maps, out)
        return out

    def _maps(self, images: Tensor, targets, size: tuple[int, int] | None) -> Tensor:
        """:meth:`compute`'s map, several layers' maps fused (``fusion``, see the class docstring)."""
        maps = self.compute(images, targets)
        if isinstance(maps, Tensor):
            return maps
        if len(maps) == 1:
            return maps[0]
        finest = tuple(max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1]))
        if self.fusion == "input":  # pytorch-grad-cam: min-max at each layer's resolution, then resized
            target = size or finest
            return torch.stack(
                [finalize_maps(normalize_maps(m), target, normalize=False) for m in maps]
            ).mean(0)
        return torch.stack([finalize_maps(m, finest, normalize=True) for m in maps]).mean(dim=0)

    def _augmented(self, images: Tensor, targets, size: tuple[int, int] | None) -> Tensor:
        """``aug_smooth``: the mean normalized map over :data:`AUGMENTATIONS`, each flipped back."""
        if targets is None:
            with torch.no_grad():
                targets = self.logits(images).argmax(dim=1)
        elif is_callable_targets(targets):
            raise ValueError(
                "aug_smooth flips the images, which callable targets (an output mask) do not follow"
            )
        total = None
        for flip, factor in self.AUGMENTATIONS:
            x = images * factor
            m = finalize_maps(self._maps(x.flip(-1) if flip else x, targets, size), size, normalize=True)
            m = m.flip(-1) if flip else m
            total = m if total is None else total + m
        return total / len(self.AUGMENTATIONS)

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

    def compute(self, images: Tensor, targets) -> Tensor | list[Tensor]:
        """The method's formula: ``(B, h, w)`` maps after its activation ``h``, at native resolution (or
        one per layer, fused by :meth:`_maps`)."""
        raise NotImplementedError

    def objective(self, logits: Tensor, targets) -> Tensor:
        """The per-image score ``y`` the gradient methods differentiate: the target logit, or the callable
        targets' scores (FinerCAM's differs)."""
        if isinstance(targets, Scores):
            return targets(logits)
        return target_score(logits, targets)

    def channel_sum(self, terms: Tensor) -> Tensor:
        """``sum_k C_k`` of per-channel terms (B, K, h, w), or their first principal component with
        ``eigen_smooth``."""
        if self.eigen_smooth:
            return eigen_projection(terms)
        return at_least_float32(terms).sum(dim=1)

    def weighted_sum(self, weights: Tensor, activations: Tensor) -> Tensor:
        """``sum_k w_k A^k`` (thesis (1.3), :func:`combine`), or with ``eigen_smooth`` the first principal
        component of the ``w_k A^k``."""
        if self.eigen_smooth:
            return eigen_projection(weights[:, :, None, None].to(activations.dtype) * activations)
        return combine(weights, activations)

    # -- shared helpers ------------------------------------------------------------------------------
    def _select(self, out: Any) -> Tensor:
        return self._logits.select(out)

    def logits(self, x: Tensor, any_shape: bool = False) -> Tensor:
        """Forward pass -> ``(B, num_classes)`` logits (any shape with ``any_shape``, for callable targets);
        NaN/Inf logits are an error, not NaN maps."""
        return self._logits(x, any_shape=any_shape)

    def targets(self, targets, logits: Tensor):
        """Class indices ``(B,)``: given ones (validated) or the predicted class; or, for the methods that
        take them (``callable_targets``), callables of each image's output (:mod:`castream.targets`)."""
        if is_callable_targets(targets):
            if not self.callable_targets:
                raise TypeError(
                    f"{type(self).__name__} takes class indices as targets; callables of the output "
                    "(castream.targets) work with the gradient methods (Grad-CAM and its family)"
                )
            return as_scores(targets, len(logits))
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

    def _run(
        self, images: Tensor, track_grad: bool, replace: dict | None = None, any_shape: bool = False
    ) -> tuple[dict, Tensor]:
        store: dict[str, Tensor] = {}
        with forward_hooks(self._hooks(store, track_grad, replace)):
            logits = self.logits(images, any_shape)
        missing = [name for name, _ in self.layers if name not in store]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass")
        return store, logits

    def activations(self, images: Tensor, targets) -> tuple[list[Tensor], Tensor, Tensor]:
        """Feature maps ``A`` of the layers (B, K, h, w) without autograd, targets and logits."""
        with torch.no_grad():
            store, logits = self._run(images, track_grad=False, any_shape=is_callable_targets(targets))
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
        acts, grads, _, t = self._backward(images, targets, second_order=False)
        return acts, grads, t

    def _hvp(self, name: str, leaf: Tensor, grad: Tensor) -> Tensor:
        """``(d g / d A) A`` of one layer as a map (0 where ``g`` does not depend on ``A``)."""
        h = (
            torch.autograd.grad(grad, leaf, leaf.detach(), allow_unused=True)[0]
            if grad.requires_grad
            else None
        )
        return self._as_map(name, torch.zeros_like(leaf) if h is None else h.detach())

    def _backward(self, images: Tensor, targets, second_order: bool) -> tuple:
        """(A, g, Hessian-vector products ``(d g / d A) A`` or None, targets) of each layer: the
        :meth:`objective` differentiated once, or twice with ``second_order`` (ShapleyCAM)."""
        with torch.enable_grad():
            store, logits = self._run(images, track_grad=True, any_shape=is_callable_targets(targets))
            t = self.targets(targets, logits)
            leaves = [store[name] for name, _ in self.layers]
            grads = torch.autograd.grad(
                self.objective(logits, t).sum(), leaves, allow_unused=True, create_graph=second_order
            )
            grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
            hvps = None
            if second_order:  # zero where the gradient does not depend on A (a linear head after it)
                hvps = [self._hvp(name, leaf, g) for (name, _), leaf, g in zip(self.layers, leaves, grads)]
        acts = [self._as_map(n, self._pooled(n, leaf.detach())) for (n, _), leaf in zip(self.layers, leaves)]
        gs = [self._as_map(n, g.detach()) for (n, _), g in zip(self.layers, grads)]
        return acts, gs, hvps, t


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


def check_noise(num_samples: int, std: float) -> tuple[int, float]:
    """The sample count (an int >= 1) and noise standard deviation (a number >= 0) of a smoothed method."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if isinstance(std, bool) or not isinstance(std, int | float) or not std >= 0:
        raise ValueError(f"std must be a number >= 0, got {std!r}")
    return num_samples, float(std)
