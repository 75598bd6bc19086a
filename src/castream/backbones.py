"""Backbone adapters: what castream needs to know about a classifier, found from a model *instance*.

For a supported family the adapter knows the ordered stage outputs ("taps") that a CA-Stream reads,
and the classifier head that pooled features enter. Tap widths ``d_l`` and strides come from one
forward pass on the meta device (no computation, the model is not modified), so a stream can be built
before any real forward.

Any other model is described explicitly by module names::

    describe(model, taps=["features.3", "features.6", "features.13", "features.18"],
             head="classifier", head_input="flat")

``head_input`` says how the pooled vector ``q`` (B, C) enters the head: ``"flat"`` as is (a Linear head
after GAP and flatten), ``"map"`` as a ``(B, C, 1, 1)`` map (a head that starts with its own pooling
or a LayerNorm2d, like ConvNeXt's).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torchvision
from torch import Tensor, nn

from ._hooks import forward_hooks
from .utils import count_parameters, meta_call

HEAD_INPUTS = ("flat", "map")

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
}

FAMILY_NAMES = {
    "torchvision.resnet": "torchvision ResNet / ResNeXt / Wide-ResNet",
    "torchvision.convnext": "torchvision ConvNeXt",
    "timm.resnet": "timm ResNet",
    "timm.convnext": "timm ConvNeXt",
}

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
    except Exception as err:  # a model that cannot run on the meta device
        raise ValueError(
            f"could not infer the shapes of {type(model).__name__} on the meta device for input "
            f"{tuple(input_size)}: {err}"
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


def _unsupported(model: nn.Module) -> ValueError:
    families = ", ".join(FAMILY_NAMES.values())
    return ValueError(
        f"castream does not know the stages of {type(model).__module__}.{type(model).__name__}. "
        f"Supported families: {families}. Describe any other model explicitly by module names, "
        f"e.g. attach_stream(model, {EXPLICIT_FORM})"
    )


def describe(
    model: nn.Module,
    *,
    taps: Sequence[str] | None = None,
    head: str | Sequence[str] | nn.Module | None = None,
    head_input: str | None = None,
    probe_size: int = 224,
) -> BackboneSpec:
    """Find the taps, head and shapes of ``model`` (a supported family, or explicit names)."""
    family = detect_family(model)
    if taps is None:
        if family is None:
            raise _unsupported(model)
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
    if isinstance(output, Tensor) and output.dim() == 2:
        num_classes = output.shape[1]
    else:
        linears = [
            m for name in head for m in model.get_submodule(name).modules() if isinstance(m, nn.Linear)
        ]
        if not linears:
            raise ValueError("cannot tell the number of classes: the model output is not (B, C) logits")
        num_classes = linears[-1].out_features
    return BackboneSpec(
        family=family or "custom",
        taps=tuple(taps),
        head=head,
        head_input=head_input,
        dims=tuple(int(s[1]) for s in shapes),
        strides=tuple(max(1, round(probe_size / s[2])) for s in shapes),
        num_classes=int(num_classes),
        in_channels=in_channels,
        num_parameters=count_parameters(model, trainable_only=False),
    )


def is_vit(model: nn.Module) -> bool:
    """A torchvision or timm Vision Transformer."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return True
    return type(model).__module__.startswith("timm.") and type(model).__name__ == "VisionTransformer"


def vit_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every transformer block of a torchvision or timm ViT, in order."""
    if isinstance(model, torchvision.models.VisionTransformer):
        return [(f"encoder.layers.{n}", m) for n, m in model.encoder.layers.named_children()]
    return [(f"blocks.{n}", m) for n, m in model.blocks.named_children()]


def prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens (class token, distillation/register tokens) in a ViT."""
    return int(getattr(model, "num_prefix_tokens", 1))


def default_layer(model: nn.Module) -> str:
    """The layer CAM methods explain by default: the last stage output of a CNN (thesis §2.5.1), or the
    first LayerNorm of the last block of a ViT (which needs ``reshape=True``)."""
    from .stream import StreamModel

    if isinstance(model, StreamModel):
        return f"backbone.{model.spec.taps[-1]}"
    family = detect_family(model)
    if family is not None:
        return LAYOUTS[family][0][-1]
    if is_vit(model):
        name, block = vit_blocks(model)[-1]
        return f"{name}.ln_1" if hasattr(block, "ln_1") else f"{name}.norm1"
    if isinstance(model, torchvision.models.VGG):
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        return f"features.{pools[-1] - 1}"  # the activation before the last max-pool
    if isinstance(model, torchvision.models.MobileNetV2):
        return f"features.{len(model.features) - 1}"
    raise ValueError(
        f"no default layer for {type(model).__name__}; pass layer= (a module name or the module itself)"
    )
