"""CA-Stream: cross-attention pooling in parallel to a frozen CNN (paper eqs. (4)-(11), thesis §3.2-3.3).

A learnable query ``q_0`` travels along the stream; at each tap ``l`` it attends to the feature map
``F_l`` (p_l positions x d_l channels) and is projected to the next width::

    a     = softmax(F_l q_l / sqrt(d_l))           paper (4)   (raw attention, sums to 1)
    CA    = F_l^T a                                 paper (6)   (attention pooling)
    q_l+1 = W_l CA + b_l                            paper (10)

Block ``"proj"`` adds key/value projections (paper (11)): ``CA = (F W^V)^T softmax(F W^K q / sqrt(d))``.
The final query replaces global average pooling in front of the frozen classifier.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ._hooks import StopForward, forward_hooks, model_logits
from .backbones import LAYOUTS, BackboneSpec, describe, detect_family, resolve_module
from .maps import finalize_maps
from .utils import atomic_write, state_digest, uncompiled

BLOCKS = ("ca", "proj")
POOLINGS = ("ca", "gap")
CHECKPOINT_FORMAT = "castream-stream/1"


class CrossAttention(nn.Module):
    """One stream block: single-query cross attention (paper (4), (6); (11) for ``"proj"``), then W_l (10)."""

    def __init__(self, dim: int, out_dim: int, block: str = "ca") -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {BLOCKS}")
        self.dim = dim
        self.key = nn.Linear(dim, dim) if block == "proj" else None
        self.value = nn.Linear(dim, dim) if block == "proj" else None
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, query: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """``query`` (B, d), ``features`` (B, d, h, w) -> next query (B, d_next), attention (B, h*w)."""
        feats = features.flatten(2)  # (B, d, p): F_l^T
        q = query
        shift = None
        if self.key is not None:
            # F W^K q with W^K as a Linear: (F K^T + 1 b^T) q = F (K^T q) + (b . q); the constant shift is
            # softmax-invariant but kept so that the block is exactly eq. (11).
            shift = (query * self.key.bias).sum(-1, keepdim=True)
            q = query @ self.key.weight
        scores = torch.bmm(q.unsqueeze(1), feats).squeeze(1) / math.sqrt(self.dim)
        if shift is not None:
            scores = scores + shift
        attention = scores.softmax(dim=-1)
        pooled = torch.bmm(feats, attention.unsqueeze(2).to(feats.dtype)).squeeze(2)
        if self.value is not None:
            # (F W^V)^T a = W^V (F^T a) + b since the attention sums to 1.
            pooled = self.value(pooled)
        return self.proj(pooled), attention


class CAStream(nn.Module):
    """The stream: learnable query ``q_0`` (or one per class) and one block per tap."""

    def __init__(self, dims: Sequence[int], *, block: str = "ca", num_queries: int = 1) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        # q_0 ~ N(1, 1) (PROTOCOL.md); one row per class for the class-specific variant.
        self.query = nn.Parameter(torch.randn(num_queries, dims[0]) + 1.0)
        outs = [*dims[1:], dims[-1]]  # the last block maps d_L -> d_L, the classifier's input width
        self.blocks = nn.ModuleList(CrossAttention(d, o, block) for d, o in zip(dims, outs))

    def forward(self, features: Sequence[Tensor], query_index: Tensor | None = None) -> tuple[Tensor, list]:
        """Run the stream over ``features`` (one map per tap) -> final query (B, d_L), attentions."""
        batch = features[0].shape[0]
        q = self.query.expand(batch, -1) if query_index is None else self.query[query_index]
        attentions = []
        for block, feats in zip(self.blocks, features):
            q, attention = block(q, feats)
            attentions.append(attention)
        return q, attentions


@dataclass(frozen=True)
class StreamConfig:
    """Everything needed to rebuild a stream on a backbone; stored in checkpoints."""

    family: str
    arch: str
    taps: tuple[str, ...]
    head: tuple[str, ...]
    head_input: str
    dims: tuple[int, ...]
    num_classes: int
    backbone_parameters: int
    block: str = "ca"
    start: int = 0
    class_specific: bool = False
    pre_pool: str | None = None  # activation the model applies to the last tap before its pooling

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StreamConfig:
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        if not required.issubset(data):
            raise ValueError(f"stream config lacks {sorted(required - set(data))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


class StreamModel(nn.Module):
    """A frozen classifier (``backbone``, head included) with a trainable CA-Stream (``stream``).

    ``forward(x, pooling="ca")`` predicts through the stream; ``pooling="gap"`` calls the original model
    unchanged (bit-identical logits). The backbone stays in eval mode with ``requires_grad=False``
    whatever ``train()`` is called with, so BatchNorm statistics never change.
    """

    def __init__(
        self, backbone: nn.Module, spec: BackboneSpec, config: StreamConfig, stream: CAStream
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.stream = stream
        self.spec = spec
        self.config = config
        self.attention: list[Tensor] = []
        self._input_size: tuple[int, int] | None = None
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    @property
    def stream_taps(self) -> tuple[str, ...]:
        return self.spec.taps[self.config.start :]

    def train(self, mode: bool = True) -> StreamModel:
        super().train(mode)
        self.backbone.eval()
        return self

    def extra_repr(self) -> str:
        c = self.config
        return f"family={c.family}, block={c.block}, start={c.start}, class_specific={c.class_specific}"

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"expected a floating-point image tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.spec.in_channels:
            raise ValueError(f"expected {self.spec.in_channels} input channels, got {x.shape[1]}")
        if min(x.shape[-2:]) < self.spec.min_size:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is too small for {self.config.family}: its last tap has "
                f"stride {self.spec.min_size}, so each side must be at least {self.spec.min_size} pixels"
            )

    def _query_index(self, labels: Tensor | None, batch: int) -> Tensor | None:
        if labels is None:
            if self.training:
                raise ValueError("a class-specific stream needs labels in training mode: model(x, labels=y)")
            return None
        labels = torch.as_tensor(labels)
        if labels.shape != (batch,) or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be {batch} integer class indices, got shape {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= self.spec.num_classes:
            raise ValueError(f"labels must lie in [0, {self.spec.num_classes}), got {labels.tolist()}")
        return labels

    def _capture(self, x: Tensor, stop_early: bool) -> tuple[list[Tensor], Tensor | None]:
        """One backbone forward that records the stream's taps; it stops after the last tap when the
        original head's output is not needed."""
        names = self.stream_taps
        captured: dict[str, Tensor] = {}

        def record(name: str, last: bool):
            def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
                if name in captured:
                    raise RuntimeError(f"tap {name!r} ran twice in one forward")
                # the model may apply its pre-pool activation in place once the forward goes on
                captured[name] = output.clone() if last and self.spec.pre_pool and not stop_early else output
                if last and stop_early:
                    raise StopForward

            return hook

        pairs = [
            (resolve_module(self.backbone, n, "tap"), record(n, i == len(names) - 1))
            for i, n in enumerate(names)
        ]
        output = None
        with forward_hooks(pairs), contextlib.suppress(StopForward):
            output = self.backbone(x)
        missing = [n for n in names if n not in captured]
        if missing:
            raise RuntimeError(f"taps {missing} did not run in the backbone's forward")
        return [captured[n] for n in names], output

    @property
    def min_input_size(self) -> int:
        """The smallest input side (the last tap's stride): what ``backbones.min_input_size`` reads."""
        return self.spec.min_size

    @property
    def cam_layer(self) -> str:
        """The layer CAM methods explain by default (the backbone's last tap), for
        ``backbones.default_layer``."""
        return f"backbone.{self.spec.taps[-1]}"

    @property
    def pool_activations(self) -> dict[str, str]:
        """The activation applied to the last tap before pooling, for ``backbones.pool_activation``."""
        return {self.cam_layer: self.spec.pre_pool} if self.spec.pre_pool else {}

    def forward(self, x: Tensor, *, pooling: str = "ca", labels: Tensor | None = None) -> Tensor:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self._check_input(x)
        if pooling == "gap":
            self.attention = []
            return model_logits(self.backbone(x))  # a Hugging Face ModelOutput: its logits, as CA returns
        query_index = self._query_index(labels, x.shape[0]) if self.config.class_specific else None
        need_gap = self.config.class_specific and query_index is None
        features, gap_logits = self._capture(x, stop_early=not need_gap)
        if need_gap:
            query_index = model_logits(gap_logits).argmax(
                dim=1
            )  # inference: the class predicted by the frozen GAP path
        features[-1] = self.spec.pool_input(features[-1])  # what the model's global pooling reads
        pooled, attentions = self.stream(features, query_index)
        if not x.is_meta:
            self.attention = [a.detach().view(-1, *f.shape[-2:]) for a, f in zip(attentions, features)]
            self._input_size = tuple(x.shape[-2:])
        return self.spec.classify(self.backbone, pooled)

    def attention_map(self, tap: int | str = -1, size: tuple[int, int] | None = None) -> Tensor:
        """Raw attention of the last forward, upsampled to ``size`` (default: the input size) and
        min-max normalized to [0, 1]. ``tap`` indexes ``attention`` or is ``"mean"`` (mean over taps of
        the upsampled maps)."""
        if not self.attention:
            raise RuntimeError("no attention recorded: run a forward with pooling='ca' first")
        size = size or self._input_size
        if tap == "mean":
            maps = torch.stack([finalize_maps(a, size, normalize=False) for a in self.attention]).mean(0)
        elif isinstance(tap, int) and -len(self.attention) <= tap < len(self.attention):
            maps = finalize_maps(self.attention[tap], size, normalize=False)
        else:
            raise ValueError(f"tap must be an index into {len(self.attention)} taps or 'mean', got {tap!r}")
        return finalize_maps(maps, None, normalize=True)


def attach_stream(
    backbone: nn.Module,
    *,
    start: int = 0,
    block: str = "ca",
    class_specific: bool = False,
    taps: Sequence[str] | None = None,
    head: str | Sequence[str] | nn.Module | None = None,
    head_input: str | None = None,
    pre_pool: str | None = None,
    description: BackboneSpec | None = None,
    probe_size: int = 224,
) -> StreamModel:
    """Wrap ``backbone`` (a trained classifier) with a new CA-Stream in place of its global average pooling.

    The backbone is frozen in place (``requires_grad=False``, eval mode) and becomes ``model.backbone``.
    ``start=k`` is placement ``S_k-S_L`` (the first k taps are skipped); ``block`` is ``"ca"`` (paper (6))
    or ``"proj"`` (paper (11)); ``class_specific`` learns one query per class (paper Table 6).
    The backbone is described by its family's layout or the paper's rule (see backbones; print
    ``castream.describe(backbone)`` to see it); ``taps``/``head``/``head_input``/``pre_pool`` describe it
    explicitly, or ``description=`` passes one made by :func:`castream.describe`. Either way it is checked
    by one small forward (the head fed the mean of the last tap must give the model's logits).
    """
    if not isinstance(backbone, nn.Module):
        raise TypeError(
            "attach_stream needs the classifier as a torch.nn.Module, got "
            f"{type(backbone).__name__} {backbone!r} (build it first, e.g. castream.models.build_model(name))"
        )
    backbone = uncompiled(backbone)  # a torch.compile wrapper: the stream hooks the module it runs
    if description is not None:
        given = {"taps": taps, "head": head, "head_input": head_input, "pre_pool": pre_pool}
        if not isinstance(description, BackboneSpec) or any(v is not None for v in given.values()):
            raise TypeError(
                "description= takes a castream.describe(...) result and excludes taps/head/head_input/"
                f"pre_pool; got {type(description).__name__} and {[k for k, v in given.items() if v]}"
            )
        taps, head, head_input, pre_pool = (
            description.taps,
            description.head,
            description.head_input,
            description.pre_pool,
        )
    spec = describe(
        backbone, taps=taps, head=head, head_input=head_input, pre_pool=pre_pool, probe_size=probe_size
    )
    return _attach(backbone, spec, start=start, block=block, class_specific=class_specific)


def _attach(
    backbone: nn.Module, spec: BackboneSpec, *, start: int, block: str, class_specific: bool
) -> StreamModel:
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; expected one of {BLOCKS}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(spec.taps):
        raise ValueError(
            f"start must be an integer in [0, {len(spec.taps) - 1}] for {len(spec.taps)} taps, got {start!r}"
        )
    config = StreamConfig(
        family=spec.family,
        arch=spec.arch,
        taps=spec.taps,
        head=spec.head,
        head_input=spec.head_input,
        dims=spec.dims,
        num_classes=spec.num_classes,
        backbone_parameters=spec.num_parameters,
        block=block,
        start=start,
        class_specific=bool(class_specific),
        pre_pool=spec.pre_pool,
    )
    stream = CAStream(spec.dims[start:], block=block, num_queries=spec.num_classes if class_specific else 1)
    reference = next(backbone.parameters(), None)
    if reference is not None:
        stream = stream.to(device=reference.device, dtype=reference.dtype)
    return StreamModel(backbone, spec, config, stream)


def save_stream(model: StreamModel, path: str | os.PathLike) -> Path:
    """Save only the stream's parameters (safetensors) with the JSON config in the file's metadata.

    The write is atomic: an interrupted save leaves any previous file intact.
    """
    if not isinstance(model, StreamModel):
        raise TypeError(f"save_stream expects a StreamModel, got {type(model).__name__}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.stream.state_dict().items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_json(),
        "backbone": state_digest(model.backbone),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def check_backbone(recorded: str | None, backbone: nn.Module, what: str) -> None:
    """Refuse ``backbone`` when its :func:`state_digest` differs from the one ``what`` (a stream) recorded:
    a stream is evaluated and resumed on the frozen weights it was trained on only."""
    if recorded is None:  # a stream saved before digests were recorded
        return
    found = state_digest(backbone)
    if found != recorded:
        dtypes = sorted({str(v.dtype)[6:] for v in backbone.state_dict().values() if v.is_floating_point()})
        raise ValueError(
            f"{what} was trained on backbone weights {recorded[7:19]}, but this backbone's weights are "
            f"{found[7:19]} ({'/'.join(dtypes)}): other weights of the architecture, or the same ones in "
            "another dtype; use the classifier checkpoint the stream was trained on"
        )


def _metadata(path: Path) -> dict:
    """A stream checkpoint's safetensors metadata, checked for castream's format."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no stream checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors stream checkpoint: {err}") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a castream stream checkpoint (format {metadata.get('format')!r})")
    return metadata


def read_stream_config(path: str | os.PathLike) -> StreamConfig:
    """The config stored in a stream checkpoint (raises ValueError for anything else)."""
    path = Path(path)
    metadata = _metadata(path)
    if "config" not in metadata:
        raise ValueError(f"{path}: the stream checkpoint's metadata has no 'config' entry")
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the stream checkpoint's config is not JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{path}: the stream checkpoint's config is a {type(config).__name__}, not an object"
        )
    try:
        return StreamConfig.from_json(metadata["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid stream config ({err})") from None


def load_stream(backbone: nn.Module, path: str | os.PathLike) -> StreamModel:
    """Rebuild the stream saved at ``path`` on ``backbone``: the weights it was trained on (their digest
    is recorded with the stream; another architecture or other weights are an error naming both)."""
    config = read_stream_config(path)
    family = detect_family(backbone)
    if config.family in LAYOUTS and family != config.family:
        raise ValueError(
            f"stream checkpoint {path} was made for {config.arch}, but the backbone is a "
            f"{family or 'non-layout'} {type(backbone).__name__}"
        )
    spec = describe(
        backbone, taps=config.taps, head=config.head, head_input=config.head_input, pre_pool=config.pre_pool
    )
    found = {
        "dims": spec.dims,
        "num_classes": spec.num_classes,
        "backbone_parameters": spec.num_parameters,
    }
    differences = [
        f"{k}: checkpoint {getattr(config, k)} vs backbone {v}"
        for k, v in found.items()
        if getattr(config, k) != v
    ]
    if differences:
        raise ValueError(
            f"stream checkpoint {path} was made for {config.arch}, but the backbone is {spec.arch} "
            f"({'; '.join(differences)})"
        )
    check_backbone(_metadata(Path(path)).get("backbone"), backbone, f"stream checkpoint {path}")
    model = _attach(
        backbone, spec, start=config.start, block=config.block, class_specific=config.class_specific
    )
    try:
        state = load_file(str(path), device=str(next(model.stream.parameters()).device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from None
    model.stream.load_state_dict(state)
    return model
