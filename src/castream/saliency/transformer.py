"""Transformer attribution of Chefer, Gur & Wolf (CVPR 2021, "Transformer Interpretability Beyond
Attention Visualization"; the thesis' "TIBAV") for torchvision and timm ViTs.

The method, as the authors' released code computes it (``ViT_explanation_generator.LRP`` with
``method="transformer_attribution"``, ``alpha=1``):

1. one forward and one backward give ``∇A^(b) = ∂y_t / ∂A^(b)`` for the softmax attention ``A^(b)`` of
   every block ``b``;
2. a layer-wise relevance propagation (LRP) pass starts from the one-hot vector of the target class at
   the logits and flows down to every block's attention, giving its relevance ``R^(b)`` (paper §3.1–3.2):
   linear layers use the αβ rule with α = 1, β = 0 (§3.1, "z+" on inputs and weights of both signs,
   no bias), GELU/softmax/LayerNorm/dropout pass relevance through, the two matrix products of attention
   split it between their operands (§3.2) and then halve it, residual additions split it between the
   two branches in proportion to their absolute sums (§3.2, per image here; the released code sums
   over the batch, which equals this at its batch size of one), copies add it back;
3. ``Ā^(b) = I + E_h[(∇A^(b) ⊙ R^(b))^+]`` (eq. 13), ``C = Ā^(1) · … · Ā^(B)`` (eq. 14), and the map is
   the class token's row of ``C`` over the patch tokens.

Every step is batched. The blocks' forward is re-run explicitly from their parameters to expose ``A``,
``q``, ``k``, ``v`` and every linear input; it is checked against the block's own output, so a block that
computes something else (gated attention, a GLU MLP, ...) is an error, never a silent wrong map.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torchvision
from torch import Tensor, nn

from .._hooks import forward_hooks
from .._precision import at_least_float32, full_precision
from .._scorer import target_score
from ..backbones import is_hf_vit, is_vit, vit_blocks
from .attention import FUSIONS, _AttentionMethod, qkv_projection, queries_keys_values, rollout_product


def lrp_divide(num: Tensor, den: Tensor) -> Tensor:
    """The authors' stabilized ``num / den``: ``den`` moved 1e-9 away from 0 (towards +, as their
    ``clamp(min=1e-9) + clamp(max=1e-9)`` does), and 0 where ``den`` is exactly 0."""
    shifted = den.clamp(min=1e-9) + den.clamp(max=1e-9)
    shifted = shifted + shifted.eq(0).to(den.dtype) * 1e-9
    return num / shifted * den.ne(0).to(den.dtype)


def linear_relevance(x: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """αβ rule with α = 1, β = 0 for ``x @ weight.T`` (paper §3.1): positive contributions
    ``x⁺w⁺ + x⁻w⁻`` share the output relevance, the bias takes none."""
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    px, nx = x.clamp(min=0), x.clamp(max=0)
    s = lrp_divide(relevance, nn.functional.linear(px, pw) + nn.functional.linear(nx, nw))
    return px * (s @ pw) + nx * (s @ nw)


def add_relevance(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance of the two operands of ``a + b`` (residual connection, paper §3.2): the z-rule split,
    rescaled so that each branch's total is its share ``|Σ R_a| / (|Σ R_a| + |Σ R_b|)`` of the image's
    total relevance."""
    s = lrp_divide(relevance, a + b)
    ra, rb = a * s, b * s
    sa, sb, total = (t.flatten(1).sum(1) for t in (ra, rb, relevance))
    norm = sa.abs() + sb.abs()
    shape = (-1,) + (1,) * (a.dim() - 1)
    ra = ra * lrp_divide(lrp_divide(sa.abs(), norm) * total, sa).view(shape)
    rb = rb * lrp_divide(lrp_divide(sb.abs(), norm) * total, sb).view(shape)
    return ra, rb


def matmul_relevance(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance of the operands of ``a @ b`` (paper §3.2), each halved as in the released code."""
    s = lrp_divide(relevance, a @ b)
    return a * (s @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ s) / 2


def copy_relevance(x: Tensor, *relevances: Tensor) -> Tensor:
    """Relevance of a tensor used twice (residual fork): the sum of its copies' relevances."""
    return x * lrp_divide(sum(relevances), x)


@dataclass
class _Trace:
    """One block's forward, re-run explicitly: every tensor the relevance pass needs."""

    x: Tensor  # block input
    normed: Tensor  # norm1(x): input of the q/k/v projection
    q: Tensor
    k: Tensor
    v: Tensor
    attention: Tensor  # softmax(q k^T / sqrt(d)), (B, heads, N, N); in the autograd graph
    context: Tensor  # input of the output projection, (B, N, D)
    branch1: Tensor  # attention branch as added to x
    y: Tensor  # x + branch1
    normed2: Tensor  # norm2(y): input of fc1
    hidden: Tensor  # input of fc2
    branch2: Tensor  # MLP branch as added to y


def _block_parts(block: nn.Module) -> dict:
    """The modules of a standard pre-norm ViT block, named alike for torchvision and timm."""
    if isinstance(block, torchvision.models.vision_transformer.EncoderBlock):
        mlp = block.mlp
        return {
            "norm1": block.ln_1,
            "pre_proj": nn.Identity(),
            "proj": block.self_attention.out_proj,
            "scale1": block.dropout,
            "norm2": block.ln_2,
            "fc1": mlp[0],
            "act": nn.Sequential(mlp[1], mlp[2]),
            "fc2": mlp[3],
            "scale2": mlp[4],
        }
    if hasattr(block, "layernorm_before") and hasattr(
        block.attention, "o_proj"
    ):  # Hugging Face, transformers 5
        return {
            "norm1": block.layernorm_before,
            "pre_proj": nn.Identity(),
            "proj": block.attention.o_proj,
            "scale1": block.dropout,
            "norm2": block.layernorm_after,
            "fc1": block.mlp.fc1,
            "act": block.mlp.activation_fn,
            "fc2": block.mlp.fc2,
            "scale2": block.dropout,
        }
    if not hasattr(block, "attn"):
        raise ValueError(
            f"transformer attribution supports torchvision, timm and transformers-5 ViT blocks, not "
            f"{type(block).__module__}.{type(block).__name__}"
        )
    attn, mlp = block.attn, block.mlp
    if getattr(attn, "gate", None) is not None or not all(hasattr(mlp, n) for n in ("fc1", "act", "fc2")):
        raise ValueError(
            f"transformer attribution supports the standard ViT block (q/k/v attention, fc1-act-fc2 MLP); "
            f"{type(block).__name__} has gated attention or a {type(mlp).__name__} MLP"
        )
    return {
        "norm1": block.norm1,
        "pre_proj": attn.norm,
        "proj": attn.proj,
        "scale1": nn.Sequential(attn.proj_drop, block.ls1, block.drop_path1),
        "norm2": block.norm2,
        "fc1": mlp.fc1,
        "act": nn.Sequential(mlp.act, mlp.drop1, mlp.norm),
        "fc2": mlp.fc2,
        "scale2": nn.Sequential(mlp.drop2, block.ls2, block.drop_path2),
    }


def _eps(output: Tensor) -> float:
    """Machine epsilon of the least precise dtype in a block's forward: its output's, or autocast's."""
    device = output.device.type
    eps = torch.finfo(output.dtype).eps
    if torch.is_autocast_enabled(device):
        eps = max(eps, torch.finfo(torch.get_autocast_dtype(device)).eps)
    return eps


def _explicit_block(block: nn.Module, x: Tensor) -> _Trace:
    parts = _block_parts(block)
    normed = parts["norm1"](x)
    q, k, v = queries_keys_values(block, normed)
    attention = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    context = parts["pre_proj"]((attention @ v).transpose(1, 2).flatten(2))
    branch1 = parts["scale1"](parts["proj"](context))
    y = x + branch1
    normed2 = parts["norm2"](y)
    hidden = parts["act"](parts["fc1"](normed2))
    branch2 = parts["scale2"](parts["fc2"](hidden))
    return _Trace(x, normed, q, k, v, attention, context, branch1, y, normed2, hidden, branch2)


def _block_relevance(block: nn.Module, t: _Trace, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """LRP through one block: relevance of its input, and that of its attention ``(B, heads, N, N)``."""
    parts = _block_parts(block)
    r_y, r_mlp = add_relevance(t.y, t.branch2, relevance)
    r_mlp = linear_relevance(
        t.normed2, parts["fc1"].weight, linear_relevance(t.hidden, parts["fc2"].weight, r_mlp)
    )
    r_y = copy_relevance(t.y, r_y, r_mlp)
    r_x, r_attn = add_relevance(t.x, t.branch1, r_y)
    r_context = linear_relevance(t.context, parts["proj"].weight, r_attn)
    r_attention, r_v = matmul_relevance(
        t.attention, t.v, r_context.unflatten(-1, (t.v.shape[1], -1)).transpose(1, 2)
    )
    r_q, r_k = matmul_relevance(t.q, t.k.transpose(-2, -1), r_attention)
    r_qkv = torch.stack([r_q, r_k.transpose(-2, -1), r_v]).permute(1, 3, 0, 2, 4).flatten(2)
    r_normed = linear_relevance(t.normed, qkv_projection(block)[0], r_qkv)
    return copy_relevance(t.x, r_x, r_normed), r_attention


def _head_linears(model: nn.Module) -> list[nn.Linear]:
    """The classifier's linear layers on the class token, input side first (tanh pre-logits pass
    relevance through)."""
    if isinstance(model, torchvision.models.VisionTransformer):
        layers = list(model.heads)
    elif is_hf_vit(model):  # the class token of the final LayerNorm's output, then the classifier
        layers = [model.classifier]
    else:
        if getattr(model, "global_pool", "token") != "token" or getattr(model, "attn_pool", None) is not None:
            raise ValueError(
                "transformer attribution needs class-token pooling (global_pool='token'), got "
                f"global_pool={getattr(model, 'global_pool', None)!r}"
            )
        layers = [model.fc_norm, model.head_drop, model.head]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    others = [
        m for m in layers if not isinstance(m, nn.Linear | nn.Tanh | nn.Identity | nn.Dropout | nn.LayerNorm)
    ]
    if not linears or others:
        raise ValueError(f"transformer attribution needs a linear head on the class token, got {layers}")
    return linears


class TransformerAttribution(_AttentionMethod):
    """Chefer et al. 2021 relevance ⊙ gradient attention rollout (module docstring), from block
    ``start_layer`` (default 0, the released ``generate_LRP``'s default; the authors' evaluation scripts,
    and so the paper's numbers, use 1) to the last; heads fused by ``head_fusion`` (the
    paper's mean by default). torchvision and timm ViT/DeiT with class-token pooling; the class token's
    row over the patch tokens is the map."""

    name = "transformerattribution"

    def __init__(self, model: nn.Module, layer=None, *, start_layer: int = 0, **options) -> None:
        super().__init__(model, layer, **options)
        if not is_vit(model):
            raise ValueError(
                f"transformer attribution needs a torchvision or timm ViT, got {type(model).__name__}"
            )
        blocks = len(vit_blocks(model))
        if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < blocks:
            raise ValueError(f"start_layer must be an int in [0, {blocks}), got {start_layer!r}")
        for _, block in vit_blocks(model):
            _block_parts(block)
        self.head = _head_linears(model)
        self.start_layer = start_layer

    def _forward(self, images: Tensor) -> tuple[list[_Trace], list[Tensor], Tensor]:
        """One forward with every block replaced by its explicit re-run; returns the traces, the inputs of
        the head's linear layers and the logits."""
        traces: list[_Trace] = []
        head_inputs: list[Tensor] = []

        def block_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            x = args[0] if args[0].requires_grad else args[0].detach().requires_grad_(True)
            trace = _explicit_block(module, x)
            out = trace.y + trace.branch2
            tolerance = max(1e-4, 10 * _eps(output)) * output.abs().max().item()
            if not torch.allclose(out, output, rtol=0, atol=tolerance):
                raise ValueError(
                    f"{type(module).__name__} does not compute the standard pre-norm ViT block "
                    "(x + attn(norm1(x)), then + mlp(norm2(.))); transformer attribution cannot trace it"
                )
            traces.append(trace)
            return out

        blocks = [(block, block_hook) for _, block in vit_blocks(self.model)]
        head = [(linear, lambda m, args: head_inputs.append(args[0])) for linear in self.head]
        with forward_hooks(blocks), forward_hooks(head, pre=True):
            logits = self.logits(images)
        return traces, head_inputs, logits

    def compute(self, images: Tensor, targets) -> Tensor:
        with torch.enable_grad():
            traces, head_inputs, logits = self._forward(images)
            t = self.targets(targets, logits)
            grads = torch.autograd.grad(target_score(logits, t).sum(), [tr.attention for tr in traces])
        # the relevance pass divides by small sums: in float32 on float32 copies also under autocast
        traces = [_Trace(*(at_least_float32(getattr(tr, f.name)) for f in fields(_Trace))) for tr in traces]
        head_inputs, grads = [at_least_float32(x) for x in head_inputs], [at_least_float32(g) for g in grads]
        with torch.no_grad(), full_precision():
            relevance = nn.functional.one_hot(t, logits.shape[1]).to(traces[0].x.dtype)
            for linear, x in zip(reversed(self.head), reversed(head_inputs)):
                relevance = linear_relevance(x, linear.weight, relevance)
            tokens = torch.zeros_like(traces[-1].x)
            tokens[:, 0] = relevance  # class-token pooling; the final LayerNorm passes relevance through
            relevance = tokens
            cams = []
            for (_, block), trace, grad in zip(
                reversed(vit_blocks(self.model)), reversed(traces), reversed(grads)
            ):
                relevance, r_attention = _block_relevance(block, trace, relevance)
                cams.append(FUSIONS[self.head_fusion]((grad * r_attention).clamp(min=0)))
            cams.reverse()
            eye = torch.eye(cams[0].shape[-1], device=images.device, dtype=cams[0].dtype)
            return self.cls_map(rollout_product([cam + eye for cam in cams[self.start_layer :]]))
