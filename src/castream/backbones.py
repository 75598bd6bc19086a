"""Backbone adapters: what castream needs to know about a classifier, found from a model *instance*.

A description names the ordered stage outputs ("taps") that a CA-Stream reads, the global average
pooling they lead to, and the head modules that pooled features enter. It is found in one of three ways:

1. **layout**: ResNet and ConvNeXt (torchvision and timm) keep the paper's taps (PROTOCOL.md);
2. **rule**: any other classifier is traced once (``_trace``: on the meta device, no computation; a
   real forward on a zero image when the forward is data-dependent). The paper defines taps as "points between
   blocks of f where critical operations take place, such as change of spatial resolution": the pooling
   point is the last *global* pooling (a ``(B, C, H, W)`` map reduced to ``(B, C)``), the last tap is the
   module whose output it pools (an activation applied functionally in between, as DenseNet's ``F.relu``,
   is kept as ``pre_pool``), and the other taps are, for every larger spatial resolution, the last module
   output at that resolution before it. The head is whatever runs after the pooling, at the top level of
   the model (the top-level module holding the pooling when it is inside one, fed a ``(B, C, 1, 1)`` map).
   Models with timm's ``feature_info`` take their taps from it (the pooled module is added last);
3. **explicit** module names, which always win::

    describe(model, taps=["features.3", "features.6", "features.13", "features.18"],
             head="classifier", head_input="flat")

``head_input`` says how the pooled vector ``q`` (B, C) enters the head: ``"flat"`` as is (a Linear head
after GAP and flatten), ``"map"`` as a ``(B, C, 1, 1)`` map (a head that starts with its own pooling
or a LayerNorm2d, like ConvNeXt's). A rule-made description is verified by one small real forward: the
head applied to the mean of the last tap must reproduce the model's logits, or it is an error.
Tap widths ``d_l`` and strides come from one forward on the meta device.
"""

from __future__ import annotations

import difflib
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn

from ._hooks import forward_hooks, frozen_eval, model_logits
from ._trace import Event, Trace, trace_forward, zeros_input
from .utils import count_parameters, meta_call, uncompiled

HEAD_INPUTS = ("flat", "map")
# activations a model may apply functionally between its last stage and the global pooling
PRE_POOL = {
    "relu": nn.functional.relu,
    "relu6": nn.functional.relu6,
    "silu": nn.functional.silu,
    "gelu": nn.functional.gelu,
    "hardswish": nn.functional.hardswish,
}
_PRE_POOL_CALLS = {"relu": "relu", "relu_": "relu", "relu6": "relu6", "silu": "silu", "gelu": "gelu"}
_PRE_POOL_CALLS.update(hardswish="hardswish", silu_="silu", hardswish_="hardswish")

# family -> (taps in forward order, head modules applied in sequence, how pooled features enter the head)
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    # stem output after max-pool, then the four residual stages (PROTOCOL.md).
    "torchvision.resnet": (("maxpool", "layer1", "layer2", "layer3", "layer4"), ("fc",), "flat"),
    # features = [stem, stage1, down1, stage2, down2, stage3, down3, stage4]; taps stem, down1, down2, stage4.
    # classifier = LayerNorm2d -> Flatten -> Linear, fed the pooled vector as a (B, C, 1, 1) map.
    "torchvision.convnext": (
        ("features.0", "features.2", "features.4", "features.7"),
        ("classifier",),
        "map",
    ),
    "timm.resnet": (("maxpool", "layer1", "layer2", "layer3", "layer4"), ("fc",), "flat"),
    # The same points in timm's layout; norm_pre is Identity unless the head normalizes first.
    "timm.convnext": (
        ("stem", "stages.1.downsample", "stages.2.downsample", "stages.3"),
        ("norm_pre", "head"),
        "map",
    ),
    # Hugging Face transformers: the embedder is the stem after max-pool; the classifier starts with Flatten
    "hf.resnet": (
        ("resnet.embedder", *(f"resnet.encoder.stages.{i}" for i in range(4))),
        ("classifier",),
        "flat",
    ),
    # the pooled vector goes through the model's final LayerNorm, then the classifier
    "hf.convnext": (
        (
            "convnext.embeddings",
            "convnext.encoder.stages.1.downsampling_layer.1",  # LayerNorm, then the strided convolution
            "convnext.encoder.stages.2.downsampling_layer.1",
            "convnext.encoder.stages.3",
        ),
        ("convnext.layernorm", "classifier"),
        "flat",
    ),
}

FAMILY_NAMES = {
    "torchvision.resnet": "torchvision ResNet / ResNeXt / Wide-ResNet",
    "torchvision.convnext": "torchvision ConvNeXt",
    "timm.resnet": "timm ResNet",
    "timm.convnext": "timm ConvNeXt",
    "hf.resnet": "Hugging Face ResNetForImageClassification",
    "hf.convnext": "Hugging Face ConvNextForImageClassification",
}
HF_FAMILIES = {"ResNetForImageClassification": "hf.resnet", "ConvNextForImageClassification": "hf.convnext"}

EXPLICIT_FORM = 'taps=["stage1", "stage2", "stage3", "stage4"], head="fc", head_input="flat"'


def detect_family(model: nn.Module) -> str | None:
    """The supported family of ``model``, or None."""
    if isinstance(model, torchvision.models.ResNet):
        return "torchvision.resnet"
    if isinstance(model, torchvision.models.ConvNeXt):
        return "torchvision.convnext"
    module, name = type(model).__module__, type(model).__name__
    if module.startswith("timm.") and name == "ResNet":
        return "timm.resnet"
    if module.startswith("timm.") and name == "ConvNeXt":
        return "timm.convnext"
    if module.startswith("transformers.") and name in HF_FAMILIES:
        return HF_FAMILIES[name]
    return None


def resolve_module(model: nn.Module, name: str, what: str = "module") -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists the nearest valid names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        near = difflib.get_close_matches(name, names, n=5, cutoff=0.4) or names[:5]
        raise ValueError(
            f"{type(model).__name__} has no {what} named {name!r}; nearest valid names: {near}"
        ) from None


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model``."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def input_channels(model: nn.Module) -> int:
    """Channels the model expects: those of its first convolution (3 when it has none)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            return module.in_channels
    return 3


def probe_shapes(model: nn.Module, names: Sequence[str], input_size: tuple[int, ...]) -> tuple[list, object]:
    """Output shapes of the named modules, and the model output, for an input of ``input_size``.

    Runs on the meta device; every named module must run exactly once in the forward.
    """
    shapes: dict[str, list] = {name: [] for name in names}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            shapes[name].append(tuple(output.shape) if isinstance(output, Tensor) else None)

        return hook

    pairs = [(resolve_module(model, name, "tap"), record(name)) for name in names]
    try:
        with forward_hooks(pairs):
            output = meta_call(model, input_size)
    except Exception as err:  # data-dependent control flow: one real forward on zeros instead
        for seen in shapes.values():
            seen.clear()
        try:
            output = _real_call(model, input_size, pairs)
        except Exception:
            raise ValueError(
                f"could not infer the shapes of {type(model).__name__} for input {tuple(input_size)}, "
                f"neither on the meta device ({err}) nor with a real forward"
            ) from err
    result = []
    for name in names:
        seen = shapes[name]
        if len(seen) != 1:
            raise ValueError(
                f"tap {name!r} ran {len(seen)} times in one forward; a tap must run exactly once"
            )
        if seen[0] is None or len(seen[0]) != 4:
            raise ValueError(f"tap {name!r} does not output a 4-D feature map (got shape {seen[0]})")
        result.append(seen[0])
    return result, output


def _real_call(model: nn.Module, input_size: tuple[int, ...], pairs: list) -> object:
    """One real forward on zeros (eval mode, no autograd, model restored) with ``pairs`` of hooks."""
    with frozen_eval(model), torch.no_grad(), forward_hooks(pairs):
        return model(zeros_input(model, input_size))


@dataclass(frozen=True)
class BackboneSpec:
    """Where a classifier's stages end and how pooled features enter its head (names, not modules)."""

    family: str
    taps: tuple[str, ...]
    head: tuple[str, ...]
    head_input: str
    dims: tuple[int, ...]
    strides: tuple[int, ...]
    num_classes: int
    in_channels: int
    num_parameters: int
    pre_pool: str | None = None  # activation applied (functionally) to the last tap before pooling
    how: str = "explicit"  # how the description was found (layout, rule, timm feature_info, explicit)

    def __str__(self) -> str:
        lines = [
            f"{self.family}: {self.num_parameters:,} parameters, {self.num_classes} classes ({self.how})"
        ]
        lines += [
            f"  tap {i}: {name:<32} width {d:>5}  stride {s}"
            for i, (name, d, s) in enumerate(zip(self.taps, self.dims, self.strides))
        ]
        if self.pre_pool:
            lines.append(f"  then {self.pre_pool} (applied by the model's forward, not a module)")
        lines.append(f"  global average pooling -> head {list(self.head)} (input: {self.head_input})")
        return "\n".join(lines)

    def pool_input(self, features: Tensor) -> Tensor:
        """The last tap's output as the model's global pooling sees it (``pre_pool`` applied)."""
        return PRE_POOL[self.pre_pool](features) if self.pre_pool else features

    @property
    def min_size(self) -> int:
        """Smallest input side: one cell of the last tap."""
        return self.strides[-1]

    @property
    def arch(self) -> str:
        return f"{self.family} ({self.num_parameters:,} parameters, tap widths {list(self.dims)})"

    def classify(self, model: nn.Module, pooled: Tensor) -> Tensor:
        """Feed pooled features ``(B, C)`` to the head exactly where GAP output went."""
        x = pooled if self.head_input == "flat" else pooled[:, :, None, None]
        for name in self.head:
            x = model.get_submodule(name)(x)
        return x

    def spatial_sizes(self, model: nn.Module, input_size: tuple[int, int]) -> list[tuple[int, int]]:
        """``(h_l, w_l)`` of every tap for an input of ``input_size = (H, W)``."""
        shapes, _ = probe_shapes(model, self.taps, (1, self.in_channels, *input_size))
        return [tuple(s[-2:]) for s in shapes]


def _unsupported(model: nn.Module, reason: str) -> ValueError:
    families = ", ".join(FAMILY_NAMES.values())
    return ValueError(
        f"castream cannot describe {type(model).__module__}.{type(model).__name__} automatically: {reason}. "
        f"Known layouts: {families}; any CNN that ends in global average pooling and a head is described "
        f"by rule. Describe this model explicitly by module names, e.g. attach_stream(model, {EXPLICIT_FORM})"
    )


@dataclass(frozen=True)
class _Rule:
    taps: tuple[str, ...]
    head: tuple[str, ...]
    head_input: str
    pre_pool: str | None
    how: str


def _is_global_pool(event: Event) -> bool:
    """A (B, C, H, W) map with H*W > 1 reduced to (B, C) or (B, C, 1, 1)."""
    shape = event.shape
    if shape is None or len(shape) not in (2, 4) or (len(shape) == 4 and shape[2:] != (1, 1)):
        return False
    return any(
        t.dim() == 4 and t.shape[2] * t.shape[3] > 1 and tuple(t.shape[:2]) == shape[:2] for t in event.inputs
    )


def _spatial(event: Event) -> int | None:
    shape = event.shape
    return shape[2] * shape[3] if shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1 else None


def _area_of(output: object) -> int | None:
    """H * W of a 4-D tensor output, else None."""
    return output.shape[2] * output.shape[3] if isinstance(output, Tensor) and output.dim() == 4 else None


def _area(t: Tensor) -> int:
    return t.shape[2] * t.shape[3] if t.dim() == 4 else 0


_PADDING = (
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)
# activation modules the stream can apply itself between the last tap and the pooling (pre_pool)
_PRE_POOL_MODULES = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.SiLU: "silu",
    nn.GELU: "gelu",
    nn.Hardswish: "hardswish",
}


def _runs(trace: Trace) -> Counter:
    """How many times each module (by identity) ran in the traced forward."""
    return Counter(id(e.module) for e in trace.modules())


def _shared(event: Event, runs: Counter) -> ValueError:
    return ValueError(
        f"the rule chose {event.name!r} ({type(event.module).__name__}) as a tap, but this module instance "
        f"runs {runs[id(event.module)]} times in one forward (it is shared), so a hook on it cannot tell the "
        "calls apart. Describe the model explicitly with a module that runs once, e.g. the module before "
        f"it, and pass pre_pool= for an activation between the last tap and the pooling: {EXPLICIT_FORM}"
    )


def _stage_taps(trace: Trace, last: Event) -> list[str]:
    """For every spatial resolution above the last tap's, the module output that enters the block which
    downsamples it: the earliest-starting (outermost) module that maps that resolution to the next smaller
    one, whose input is the output of a module that runs once (its outermost such producer).

    Resolutions are those of block boundaries: the outputs of padding modules (TF-"SAME" convolutions pad
    224 to 225 inside the block) are not resolutions of the network and would break the chain."""
    runs = _runs(trace)
    modules = [e for e in trace.modules() if e.index <= last.index]
    boundaries = [e for e in modules if not isinstance(e.module, _PADDING)]
    areas = sorted({a for e in boundaries if (a := _spatial(e))}, reverse=True)
    areas = [a for a in areas if a > _spatial(last)]
    following = dict(zip(areas, [*areas[1:], _spatial(last)]))
    taps = []
    for area in areas:
        blocks = [
            e
            for e in boundaries
            if _spatial(e) == following[area] and any(_area(t) == area for t in e.inputs)
        ]
        if not blocks:
            continue
        block = min(blocks, key=lambda e: (e.start, -e.index))
        source = next(t for t in block.inputs if _area(t) == area)
        producers = [e for e in modules if e.output is source and e.index < block.start]
        once = [e for e in producers if runs[id(e.module)] == 1]
        if once:
            taps.append(max(once, key=lambda e: e.index).name)
    return taps


def _last_tap(trace: Trace, pool: Event) -> tuple[Event, str | None]:
    """The module whose output the pooling reads, and the activation applied in between (or None). An
    activation module that runs more than once (one ``nn.ReLU6`` for the stem and the head) is read as
    that pre-pool activation, and the module before it is the tap."""
    runs = _runs(trace)
    pooled = next(t for t in pool.inputs if t.dim() == 4)
    producers = [e for e in trace.modules() if e.output is pooled and e.index < pool.index]
    if producers:
        tap = max(producers, key=lambda e: e.index)
        if runs[id(tap.module)] > 1:
            once = [e for e in producers if runs[id(e.module)] == 1]
            kind = _PRE_POOL_MODULES.get(type(tap.module))
            if once:
                tap = max(once, key=lambda e: e.index)
            elif kind is not None and tap.inputs:
                source = tap.inputs[0]
                before = [
                    e
                    for e in trace.modules()
                    if e.output is source and e.index < tap.start and runs[id(e.module)] == 1
                ]
                if not before:
                    raise _shared(tap, runs)
                return max(before, key=lambda e: e.index), kind
            else:
                raise _shared(tap, runs)
        between = [
            c
            for c in trace.calls()
            if tap.index < c.index < pool.start and c.inplace and c.inputs and c.inputs[0] is pooled
        ]
        names = {_PRE_POOL_CALLS.get(c.name) for c in between}
        if None in names or len(names) > 1:
            raise ValueError(
                f"the pooled map is modified in place by {[c.name for c in between]} after {tap.name!r}"
            )
        return tap, names.pop() if names else None
    calls = [c for c in trace.calls() if c.output is pooled]
    if calls and calls[-1].name in _PRE_POOL_CALLS and calls[-1].inputs:
        source = calls[-1].inputs[0]
        producers = [e for e in trace.modules() if e.output is source and e.index < calls[-1].index]
        if producers:
            return max(producers, key=lambda e: e.index), _PRE_POOL_CALLS[calls[-1].name]
    made_by = calls[-1].name if calls else "no module"
    raise ValueError(f"the globally pooled map is computed by {made_by}, not by a module's output")


def _head(model: nn.Module, trace: Trace, pool: Event, last: Event) -> tuple[tuple[str, ...], str]:
    """Top-level modules that run after the pooling (or hold it), and how the pooled vector enters. When
    the module holding the pooling also holds the last tap (timm EfficientViT's head convolves before it
    pools), the head is found one level down, among that module's children."""
    scope, prefix = model, ""
    while True:
        children = {id(m): prefix + n for n, m in scope.named_children()}
        top = [e for e in trace.modules() if children.get(id(e.module)) == e.name]
        holder = [e for e in top if e is not pool and e.start <= pool.start and pool.index <= e.index]
        if not (holder and last.name.startswith(holder[0].name + ".")):
            break
        scope, prefix = holder[0].module, holder[0].name + "."
    after = [e for e in top if e.start > (holder[0].index if holder else pool.index)]
    head = holder[:1] + after
    if not head:
        raise ValueError("no module runs after the global pooling")
    names = [e.name for e in head]
    if len(set(names)) != len(names):
        raise ValueError(f"head modules run more than once after the pooling: {names}")
    if trace.output is not head[-1].output:
        finals = [e.name for e in trace.modules() if e.shape == getattr(trace.output, "shape", None)]
        raise ValueError(
            f"the model's output is not the output of its last module {head[-1].name!r}; candidate heads: "
            f"{sorted(set(finals))}"
        )
    fed_a_map = bool(head[0].inputs) and head[0].inputs[0].dim() == 4
    head_input = "map" if holder or fed_a_map else "flat"
    return tuple(names), head_input


def _rule(model: nn.Module, probe_size: int) -> _Rule:
    size = (1, input_channels(model), probe_size, probe_size)
    try:
        trace = trace_forward(model, size)
    except Exception as err:
        raise _unsupported(
            model, f"its forward fails on a {size} input ({type(err).__name__}: {err})"
        ) from err
    output = trace.output
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise _unsupported(model, f"its output is {shape}, not (B, classes) logits")
    collapsed = [
        e.name
        for e in trace.modules()
        if isinstance(e.module, nn.Conv2d) and max(e.module.stride) > 1 and _area_of(e.output) == 1
    ]
    if collapsed:
        raise ValueError(
            f"the probe of {probe_size} x {probe_size} pixels is too small for {type(model).__name__}: "
            f"{collapsed[0]!r} already downsamples it to 1 x 1, so the rule cannot see the global pooling "
            "or the stages; pass a larger probe_size (e.g. 224)"
        )
    pools = [e for e in trace.events if _is_global_pool(e)]
    if not pools:
        raise _unsupported(model, "it has no global pooling of a (B, C, H, W) feature map")
    pool = max(pools, key=lambda e: e.index)
    try:
        last, pre_pool = _last_tap(trace, pool)
        head, head_input = _head(model, trace, pool, last)
    except ValueError as err:
        raise _unsupported(model, str(err)) from None
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(i, dict) and "module" in i for i in info):
        areas = {e.name: _spatial(e) for e in trace.modules()}
        taps = [i["module"] for i in info if (areas.get(i["module"]) or 0) > _spatial(last)]
        how = "timm feature_info, then the pooled module"
    else:
        taps = _stage_taps(trace, last)
        how = "rule: the input of each downsampling block, then the pooled module"
    how += "; traced " + (f"with a real forward ({trace.real})" if trace.real else "on the meta device")
    return _Rule((*taps, last.name), head, head_input, pre_pool, how)


def _verify(model: nn.Module, spec: BackboneSpec) -> None:
    """The head fed the mean of the last tap must reproduce the model's logits (one small real forward).
    Every description is checked so, whether it comes from a layout, the rule or explicit names: a wrong
    one (a missing activation before the pooling, a head that is not the whole head) would otherwise give
    a stream whose GAP path is not the model."""
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    size = max(32, 2 * spec.strides[-1])
    x = torch.randn(2, spec.in_channels, size, size, generator=torch.Generator().manual_seed(0)).to(
        device, dtype
    )
    captured = []
    module = model.get_submodule(spec.taps[-1])
    with frozen_eval(model), torch.no_grad():
        with forward_hooks([(module, lambda m, a, out: captured.append(out.clone()))]):
            output = model(x)
        output = model_logits(output)
        logits = output if isinstance(output, Tensor) else None
        try:
            pooled = spec.pool_input(captured[-1]).mean(dim=(2, 3))
            found = spec.classify(model, pooled)
        except Exception as err:  # the head does not take the pooled features at all
            raise _unsupported(
                model,
                f"the description ({spec.how}: last tap {spec.taps[-1]!r}, head {list(spec.head)}) fails "
                f"when its head is fed the pooled last tap ({type(err).__name__}: "
                f"{str(err).splitlines()[0]})",
            ) from None
    if logits is None or logits.dim() != 2:
        return  # a tuple/dict output: the logits cannot be told apart here; methods take output=
    if not torch.isfinite(logits).all():
        bad = [
            n
            for n, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_floating_point() and not torch.isfinite(t).all()
        ]
        where = (
            f"non-finite values in {bad[:5]}{' ...' if len(bad) > 5 else ''}"
            if bad
            else "its weights are finite"
        )
        raise ValueError(
            f"{type(model).__name__} gives NaN or infinite logits on a random input ({where}); check its "
            "weights (a diverged training run, a corrupt checkpoint) before explaining or evaluating it"
        )
    scale = logits.abs().max().item() + 1e-6
    if found.shape != logits.shape or not torch.allclose(found, logits, rtol=1e-3, atol=1e-4 * scale):
        difference = (
            f"max |difference| {(found - logits).abs().max().item():.4g} for logits up to {scale:.4g}"
            if found.shape == logits.shape
            else f"shape {tuple(found.shape)} instead of {tuple(logits.shape)}"
        )
        raise _unsupported(
            model,
            f"the description ({spec.how}: last tap {spec.taps[-1]!r}, pre_pool {spec.pre_pool!r}, head "
            f"{list(spec.head)}, head_input {spec.head_input!r}) does not reproduce the model's logits from "
            f"the mean of the last tap: {difference}. Does the forward apply an activation between that tap "
            "and the pooling (pass pre_pool=), or pool with something other than the mean",
        )


STRIDE_PROBE = 448  # 2^6 * 7: every power-of-two stride up to 64, and ViT-like 14, 28, 56, divide it


def _strides(model: nn.Module, taps: tuple[str, ...], channels: int, size: int, shapes: list) -> tuple:
    """Each tap's stride, measured as how much its map grows when the input grows by ``STRIDE_PROBE``
    pixels: exact whatever the padding and the probe size (``size / map size`` is not: a ResNet probed at
    56 px has a 2 x 2 last map, which reads as stride 28, not 32). A model that takes only one input size
    keeps ``size / map size``."""
    try:
        larger, _ = probe_shapes(model, taps, (1, channels, size + STRIDE_PROBE, size + STRIDE_PROBE))
    except ValueError:
        larger = None
    strides = []
    for shape, bigger in zip(shapes, larger or shapes):
        grown = bigger[2] - shape[2] if larger is not None else 0
        strides.append(max(1, round(STRIDE_PROBE / grown)) if grown > 0 else max(1, round(size / shape[2])))
    return tuple(strides)


def describe(
    model: nn.Module,
    *,
    taps: Sequence[str] | None = None,
    head: str | Sequence[str] | nn.Module | None = None,
    head_input: str | None = None,
    pre_pool: str | None = None,
    probe_size: int = 224,
    verify: bool = True,
) -> BackboneSpec:
    """Find the taps, head and shapes of ``model``: its family's layout, explicit names, or the rule of
    the module docstring. Every description is checked by one small real forward (the head fed the mean
    of the last tap must give the model's logits) unless ``verify=False``. ``print()`` the result to see
    it; :func:`castream.attach_stream` takes it as ``description=``. A ``torch.compile`` d model is
    described through the module it wraps (``utils.uncompiled``)."""
    model = uncompiled(model)
    family = detect_family(model)
    rule = None
    how = f"layout {family}" if family else "explicit"
    if taps is None and head is None and family is None:
        rule = _rule(model, probe_size)
        taps, head, head_input, pre_pool, how = rule.taps, rule.head, rule.head_input, rule.pre_pool, rule.how
    if taps is None:
        if family is None:
            raise ValueError(
                f"an explicit head needs explicit taps for {type(model).__name__}, e.g. {EXPLICIT_FORM}"
            )
        taps = LAYOUTS[family][0]
    elif isinstance(taps, str) or len(taps) == 0:
        raise ValueError(f"taps must be a non-empty list of module names, got {taps!r}")
    if head is None:
        if family is None:
            raise ValueError(
                f"explicit taps need an explicit head for {type(model).__name__}, e.g. {EXPLICIT_FORM}"
            )
        head = LAYOUTS[family][1]
        head_input = head_input or LAYOUTS[family][2]
    if pre_pool is not None and pre_pool not in PRE_POOL:
        raise ValueError(f"pre_pool must be None or one of {list(PRE_POOL)}, got {pre_pool!r}")
    if isinstance(head, nn.Module):
        head = (module_name(model, head),)
    elif isinstance(head, str):
        head = (head,)
    head = tuple(head)
    for name in head:
        resolve_module(model, name, "head module")
    head_input = head_input or "flat"
    if head_input not in HEAD_INPUTS:
        raise ValueError(f"head_input must be one of {HEAD_INPUTS}, got {head_input!r}")

    in_channels = input_channels(model)
    shapes, output = probe_shapes(model, tuple(taps), (1, in_channels, probe_size, probe_size))
    output = model_logits(output)
    if isinstance(output, Tensor) and output.dim() == 2:
        num_classes = output.shape[1]
    else:
        linears = [
            m for name in head for m in model.get_submodule(name).modules() if isinstance(m, nn.Linear)
        ]
        if not linears:
            raise ValueError("cannot tell the number of classes: the model output is not (B, C) logits")
        num_classes = linears[-1].out_features
    spec = BackboneSpec(
        family=family or ("auto" if rule else "custom"),
        taps=tuple(taps),
        head=head,
        head_input=head_input,
        dims=tuple(int(s[1]) for s in shapes),
        strides=_strides(model, tuple(taps), in_channels, probe_size, shapes),
        num_classes=int(num_classes),
        in_channels=in_channels,
        num_parameters=count_parameters(model, trainable_only=False),
        pre_pool=pre_pool,
        how=how,
    )
    reference = next(model.parameters(), None)
    if verify and not (reference is not None and reference.is_meta):  # meta tensors hold no values to check
        _verify(model, spec)
    return spec


def is_vit(model: nn.Module) -> bool:
    """A torchvision or timm Vision Transformer, or a Hugging Face ``ViTForImageClassification``."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return True
    module, name = type(model).__module__, type(model).__name__
    return (module.startswith("timm.") and name == "VisionTransformer") or is_hf_vit(model)


def is_hf_vit(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and type(model).__name__ in (
        "ViTForImageClassification",
        "DeiTForImageClassification",
    )


def vit_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every transformer block of a ViT, in order."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return [(f"encoder.layers.{n}", m) for n, m in model.encoder.layers.named_children()]
    if is_hf_vit(model):
        base = model.base_model_prefix  # "vit" or "deit"
        inner = getattr(model, base)
        # transformers 5 keeps the blocks in ``layers``, 4 in ``encoder.layer``
        path = "layers" if hasattr(inner, "layers") else "encoder.layer"
        return [(f"{base}.{path}.{n}", m) for n, m in inner.get_submodule(path).named_children()]
    return [(f"blocks.{n}", m) for n, m in model.blocks.named_children()]


def channels_last_features(model: nn.Module) -> bool:
    """A model whose stages output ``(B, H, W, C)`` maps (timm Swin: ``output_fmt == "NHWC"``)."""
    return getattr(model, "output_fmt", None) == "NHWC"


def prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens (class token, distillation/register tokens) in a ViT."""
    return int(getattr(model, "num_prefix_tokens", 1))


def default_layer(model: nn.Module) -> str:
    """The layer CAM methods explain by default: the last stage output of a CNN (thesis §2.5.1), the
    final norm of a channels-last model (timm Swin: the ``(B, H, W, C)`` map its head pools), or the
    first LayerNorm of the last block of a ViT (which needs ``reshape=True``)."""
    own = getattr(model, "cam_layer", None)  # a model that names its own (a StreamModel: its last tap)
    if isinstance(own, str):
        return own
    family = detect_family(model)
    if family is not None:
        return LAYOUTS[family][0][-1]
    if channels_last_features(model) and isinstance(getattr(model, "norm", None), nn.LayerNorm):
        return "norm"
    if is_vit(model):
        name, block = vit_blocks(model)[-1]
        first = next(n for n in ("ln_1", "norm1", "layernorm_before") if hasattr(block, n))
        return f"{name}.{first}"
    if isinstance(model, torchvision.models.VGG):
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        return f"features.{pools[-1] - 1}"  # the activation before the last max-pool
    if isinstance(model, torchvision.models.MobileNetV2):
        return f"features.{len(model.features) - 1}"
    try:
        return _ruled(model).taps[-1]  # the rule: the map the global pooling reads
    except ValueError as err:
        raise ValueError(
            f"no default layer for {type(model).__name__} ({err}); pass layer= (a module name or the "
            "module itself)"
        ) from None


_RULED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ruled(model: nn.Module) -> BackboneSpec:
    """``describe(model, verify=False)``, once per model (the rule traces the forward)."""
    if model not in _RULED:
        _RULED[model] = describe(model, verify=False)
    return _RULED[model]


def pool_activation(model: nn.Module, layer: str) -> str | None:
    """The activation the model's forward applies (functionally) to ``layer``'s output before its global
    pooling, when ``layer`` is the last tap of a rule-described model (EfficientNet-Lite's shared ReLU6
    after ``_bn1``), else None: CAM methods must see the map the pooling sees, not the negative values
    before it (93.6% of Lite0's ``_bn1`` outputs are below zero)."""
    own = getattr(model, "pool_activations", None)  # a StreamModel knows its backbone's
    if isinstance(own, dict):
        return own.get(layer)
    if detect_family(model) is not None or is_vit(model) or isinstance(model, torchvision.models.VGG):
        return None
    try:
        spec = _ruled(model)
    except Exception:  # a model castream cannot describe: no known activation
        return None
    return spec.pre_pool if spec.pre_pool and layer == spec.taps[-1] else None


_MIN_SIZES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def min_input_size(model: nn.Module) -> int:
    """The smallest input side a model accepts: its own ``min_input_size`` (a StreamModel's last stride),
    or the last stage's stride of a described family (1 when castream cannot describe the model).
    Computed once per model (a forward on the meta device)."""
    own = getattr(model, "min_input_size", None)
    if isinstance(own, int):
        return own
    if model not in _MIN_SIZES:
        try:  # known layouts only: the rule would run the caller's forward just for this check
            _MIN_SIZES[model] = describe(model, verify=False).min_size if detect_family(model) else 1
        except Exception:  # any failure of the meta forward: no known minimum
            _MIN_SIZES[model] = 1
    return _MIN_SIZES[model]
