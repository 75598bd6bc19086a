"""Class-agnostic attention maps: the CA-Stream's raw attention, ViT raw attention and attention rollout."""

from __future__ import annotations

import inspect
import math
from functools import partial

import torch
import torchvision
from torch import Tensor, nn

from .._hooks import forward_hooks
from ..backbones import is_vit, prefix_tokens, vit_blocks
from ..maps import finalize_maps
from ..stream import StreamModel
from .base import SaliencyMethod


def qkv_projection(block: nn.Module) -> tuple[Tensor, Tensor | None, int]:
    """Weight ``(3D, D)``, bias and head count of the fused q/k/v projection of a torchvision or timm
    ViT block; both lay its output out as ``(3, heads, head_dim)``."""
    if isinstance(block, torchvision.models.vision_transformer.EncoderBlock):
        mha = block.self_attention
        return mha.in_proj_weight, mha.in_proj_bias, mha.num_heads
    if hasattr(block, "layernorm_before"):  # Hugging Face: separate q/k/v (transformers 5; 4's are nested)
        attention = block.attention if hasattr(block.attention, "q_proj") else block.attention.attention
        linears = (
            [attention.q_proj, attention.k_proj, attention.v_proj]
            if hasattr(attention, "q_proj")
            else [attention.query, attention.key, attention.value]
        )
        bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
        heads = getattr(attention, "num_attention_heads", None) or attention.config.num_attention_heads
        return torch.cat([m.weight for m in linears]), bias, heads
    return block.attn.qkv.weight, block.attn.qkv.bias, block.attn.num_heads


def queries_keys_values(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` ``(B, heads, N, head_dim)`` of a torchvision or timm ViT block from its attention
    input (timm's ``q_norm``/``k_norm`` applied; no scaling)."""
    weight, bias, heads = qkv_projection(block)
    q, k, v = nn.functional.linear(x, weight, bias).unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
    if hasattr(block, "attn"):
        q, k = block.attn.q_norm(q), block.attn.k_norm(k)
    return q, k, v


def _additive(mask: Tensor | None, allowed_when_true: bool, like: Tensor) -> Tensor | float:
    """A boolean or additive attention mask as the additive bias of the scores (0 where no mask)."""
    if mask is None:
        return 0.0
    if mask.dtype == torch.bool:
        keep = mask if allowed_when_true else ~mask
        return torch.zeros((), dtype=like.dtype, device=like.device).masked_fill(~keep, float("-inf"))
    return mask.to(like.dtype)


def _head_attention(block: nn.Module, x: Tensor, call: dict | None = None) -> Tensor:
    """Softmax attention ``(B, heads, N, N)`` of a torchvision, timm or Hugging Face ViT block, from its
    attention input ``x``, with the mask its attention module was called with (``call``: the call's
    arguments by name): timm's ``attn_mask`` (scaled_dot_product_attention's: True attends, a float mask is
    added) and ``is_causal``; torchvision's ``attn_mask`` and ``key_padding_mask`` (True is masked out);
    Hugging Face's ``attention_mask`` (added) or, in transformers 4, ``head_mask`` (multiplies)."""
    call = call or {}
    q, k, _ = queries_keys_values(block, x)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    torchvision_block = isinstance(block, torchvision.models.vision_transformer.EncoderBlock)
    mask = call.get("attn_mask", call.get("attention_mask"))
    scores = scores + _additive(mask, not torchvision_block, scores)
    if call.get("key_padding_mask") is not None:
        scores = scores + _additive(call["key_padding_mask"][:, None, None, :], False, scores)
    if call.get("is_causal"):
        n = scores.shape[-1]
        causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    attention = torch.softmax(scores, dim=-1)
    return attention if call.get("head_mask") is None else attention * call["head_mask"]


def _named_call(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A module call's arguments by name (positional ones too)."""
    return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)


def _attention_input_module(block: nn.Module) -> nn.Module:
    """The module whose first input is the block's normalized tokens, the attention's input."""
    for name in ("self_attention", "attn", "attention"):  # torchvision, timm, Hugging Face
        if hasattr(block, name):
            return getattr(block, name)
    raise ValueError(f"{type(block).__name__} is not a ViT block castream knows (no attention module)")


def rollout_product(matrices: list[Tensor]) -> Tensor:
    """``M_L ⋯ M_2 M_1`` of per-block ``(B, N, N)`` token-mixing matrices, first block rightmost
    (attention rollout; Chefer et al. 2021 eq. 14)."""
    product = matrices[0]
    for matrix in matrices[1:]:
        product = matrix @ product
    return product


FUSIONS = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}


class _AttentionMethod(SaliencyMethod):
    uses_layer = False

    def __init__(self, model: nn.Module, layer=None, *, head_fusion: str = "mean", **options) -> None:
        if layer is not None:
            raise ValueError(f"{type(self).__name__} takes no layer")
        if head_fusion not in FUSIONS:
            raise ValueError(f"head_fusion must be one of {tuple(FUSIONS)}, got {head_fusion!r}")
        super().__init__(model, **options)
        self.head_fusion = head_fusion

    def vit_attention(self, images: Tensor, which: list[int]) -> tuple[list[Tensor], Tensor]:
        """Head-fused attention ``(B, N, N)`` of the chosen ViT blocks, and the logits; one forward."""
        blocks = vit_blocks(self.model)
        inputs: dict[int, tuple[Tensor, dict]] = {}

        def record(i: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[i] = (args[0], _named_call(module, args, kwargs))

        pairs = [(_attention_input_module(blocks[i][1]), partial(record, i)) for i in which]
        with torch.no_grad(), forward_hooks(pairs, pre=True, with_kwargs=True):
            logits = self.logits(images)
            maps = [FUSIONS[self.head_fusion](_head_attention(blocks[i][1], *inputs[i])) for i in which]
        return maps, logits

    def cls_map(self, attention: Tensor) -> Tensor:
        """Row of the class token over the patch tokens, as a square (B, h, w) map."""
        prefix = prefix_tokens(self.model)
        row = attention[:, 0, prefix:]
        side = round(row.shape[1] ** 0.5)
        return row.reshape(-1, side, side)


class RawAttention(_AttentionMethod):
    """Class-agnostic raw attention.

    StreamModel: the CA-Stream softmax weights of tap ``tap`` (default the last; an index or ``"mean"``,
    the mean of all taps at the finest tap's resolution). For a class-specific stream the query is, as
    the paper says for inference, that of the class predicted by the frozen GAP path (``query=
    "predicted"``, the default); ``query="target"`` uses the query of the explained target class instead.
    ViT (torchvision or timm): the class-token attention of block ``tap`` (default
    the last) over the patch tokens, heads fused by ``head_fusion``.
    """

    name = "rawattention"

    QUERIES = ("predicted", "target")

    def __init__(
        self, model: nn.Module, layer=None, *, tap: int | str = -1, query: str = "predicted", **options
    ) -> None:
        if query not in self.QUERIES:
            raise ValueError(f"query must be one of {self.QUERIES}, got {query!r}")
        super().__init__(model, layer, **options)
        self.query = query
        if not isinstance(model, StreamModel) and not is_vit(model):
            raise ValueError(f"raw attention needs a StreamModel or a ViT, got {type(model).__name__}")
        if self.forward_kwargs.get("pooling", "ca") != "ca":
            raise ValueError("raw attention of a StreamModel needs pooling='ca'")
        self.tap = tap

    def compute(self, images: Tensor, targets) -> Tensor:
        if is_vit(self.model):
            index = self.tap if isinstance(self.tap, int) else -1
            (attention,), _ = self.vit_attention(images, [range(len(vit_blocks(self.model)))[index]])
            return self.cls_map(attention)
        extra = {}
        if self.model.config.class_specific and self.query == "target":
            with torch.no_grad():
                extra["labels"] = self.targets(targets, self.logits(images))
        with torch.no_grad():
            self._logits(images, **extra)  # the checked call; the stream keeps the attention it computed
        attention = self.model.attention
        if self.tap == "mean":
            size = max((a.shape[-2:] for a in attention), key=lambda s: s[0] * s[1])
            return torch.stack([finalize_maps(a, tuple(size), normalize=False) for a in attention]).mean(0)
        if not isinstance(self.tap, int) or not -len(attention) <= self.tap < len(attention):
            raise ValueError(f"tap must index one of {len(attention)} taps or be 'mean', got {self.tap!r}")
        return attention[self.tap]


class Rollout(_AttentionMethod):
    """Attention rollout (Abnar & Zuidema) for torchvision/timm ViTs: the product over blocks of
    ``0.5 A + 0.5 I`` (heads fused by ``head_fusion``), class-token row over the patch tokens."""

    name = "rollout"

    def __init__(self, model: nn.Module, layer=None, **options) -> None:
        super().__init__(model, layer, **options)
        if not is_vit(model):
            raise ValueError(f"attention rollout needs a ViT, got {type(model).__name__}")

    def compute(self, images: Tensor, targets) -> Tensor:
        attentions, _ = self.vit_attention(images, list(range(len(vit_blocks(self.model)))))
        eye = torch.eye(attentions[0].shape[-1], device=images.device, dtype=attentions[0].dtype)
        return self.cls_map(rollout_product([0.5 * a + 0.5 * eye for a in attentions]))
