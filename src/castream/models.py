"""Building classifiers by name and loading local weights (no download unless weights are requested)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.resnet import BasicBlock

from .utils import atomic_write


def cifar_resnet18(num_classes: int = 100) -> nn.Module:
    """ResNet-18 for 32 x 32 inputs (thesis §4.3.1): torchvision's network with a 3x3 stride-1 first
    convolution and no max-pool, so stages run at 32, 16, 8 and 4 pixels."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def cifar_mobilenet_v2(num_classes: int = 100) -> nn.Module:
    """MobileNet-V2 for 32 x 32 inputs (thesis §4.3.1): torchvision's network with a stride-1 first
    convolution, so the last feature map is 2 x 2 instead of 1 x 1."""
    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    model.features[0][0].stride = (1, 1)
    return model


def resnet10_os16(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet with one BasicBlock per stage (ResNet-10) whose last stage keeps the resolution
    of the third (output stride 16): 4 x 4 last-stage maps at 64 px, for the CPU demo. A ResNet-18 at the
    same map size costs 2.3 times more per image."""
    model = torchvision.models.ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    block = model.layer4[0]
    block.conv1.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    return model


# castream's named variants of torchvision models (no pretrained weights)
VARIANTS = {
    "cifar_resnet18": cifar_resnet18,
    "cifar_mobilenet_v2": cifar_mobilenet_v2,
    "resnet10_os16": resnet10_os16,
}


def is_factory(name: str) -> bool:
    """``package.module:factory`` or ``path/to/file.py:factory``: a user's own model (not ``timm:NAME``)."""
    return ":" in name and not name.startswith("timm:")


def load_factory(spec: str) -> nn.Module:
    """Call a user's model factory: ``package.module:factory`` (importable) or ``path/to/file.py:factory``;
    it takes no arguments and returns an ``nn.Module`` (with its weights, if it loads any). Every failure
    is an error that names the spec and the step that failed."""
    import importlib
    import importlib.util

    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise ValueError(f"a model factory is MODULE:FACTORY or FILE.py:FACTORY, got {spec!r}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"model factory {spec}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"castream_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit, KeyboardInterrupt) as err:  # sys.exit() there must not end castream
            raise ValueError(f"model factory {spec}: running {path} failed ({_raised(err)})") from err
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(
                f"model factory {spec}: cannot import {target!r} ({err}); install it, put it on PYTHONPATH, "
                "or give a file as path/to/file.py:FACTORY"
            ) from None
        except (Exception, SystemExit, KeyboardInterrupt) as err:
            raise ValueError(f"model factory {spec}: importing {target} failed ({_raised(err)})") from err
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"model factory {spec}: {target} has no attribute {attr!r}")
    if not callable(factory):
        raise TypeError(f"model factory {spec}: {attr} is a {type(factory).__name__}, not a callable")
    try:
        model = factory()
    except (Exception, SystemExit, KeyboardInterrupt) as err:
        raise ValueError(f"model factory {spec}: {attr}() raised {_raised(err)}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model factory {spec}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _raised(err: BaseException) -> str:
    """What a user's factory code raised, in words (``sys.exit()`` named as such)."""
    if isinstance(err, SystemExit):
        return f"SystemExit (it called sys.exit({err.code!r}))"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def build_model(
    name: str, *, num_classes: int | None = None, weights: str | None = None, seed: int = 0
) -> nn.Module:
    """A torchvision model by name (``resnet50``), a timm one with the ``timm:`` prefix
    (``timm:convnext_tiny``), one of castream's variants (``VARIANTS``: ``cifar_resnet18``,
    ``cifar_mobilenet_v2``, ``resnet10_os16``), or a user's own from a factory (``package.module:factory``
    or ``path/to/file.py:factory``, :func:`load_factory`; as it builds it: a ``num_classes`` other than its
    own is an error, castream never replaces a head unasked).
    ``weights`` (e.g. ``"IMAGENET1K_V1"``, or ``"pretrained"`` for timm) is the only path that downloads;
    without it the model has random weights drawn from ``seed`` (the same model every time, so that a
    stream trained on it fits it again)."""
    if is_factory(name):
        if weights:
            raise ValueError(
                f"weights={weights!r} applies to torchvision and timm models; {name} loads its own"
            )
        model = load_factory(name)
        if num_classes is not None and output_classes(model) != num_classes:
            raise ValueError(
                f"model factory {name} returns a model with {output_classes(model)} outputs, not "
                f"{num_classes}; castream does not replace its head (train a classifier to fine-tune one)"
            )
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_named(name, num_classes, weights)


def output_classes(model: nn.Module) -> int:
    """How many classes ``model`` outputs: its description's, or a head's last Linear."""
    from .backbones import describe

    return describe(model, verify=False).num_classes


def _build_named(name: str, num_classes: int | None, weights: str | None) -> nn.Module:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name in VARIANTS:
        if weights:
            raise ValueError(f"{name} has no pretrained weights")
        return VARIANTS[name](**kwargs)
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError as err:
            raise ImportError("timm models need `pip install castream[timm]`") from err
        return timm.create_model(name[5:], pretrained=weights is not None, **kwargs)
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classification model {name!r} (prefix timm: for timm models)")
    if weights is not None:
        valid = [w.name for w in torchvision.models.get_model_weights(name)] + ["DEFAULT"]
        if weights not in valid:
            raise ValueError(f"unknown weights {weights!r} for {name}; valid: {valid}")
    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        if weights is None:
            raise
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise ValueError(
            f"the {weights} weights of {name} are not in the local cache ({hub}) and could not be downloaded "
            f"({err}); copy the file there from a machine with network access, or pass local weights "
            "with --checkpoint"
        ) from None


def replace_head(model: nn.Module, num_classes: int, *, seed: int = 0) -> nn.Module:
    """Give a classifier a new final linear layer for ``num_classes`` (fine-tuning), initialized from
    ``seed``; only ever called when asked (training a classifier on a dataset of other classes)."""
    from .backbones import describe

    names = [
        f"{head}.{name}" if name else head
        for head in describe(model).head
        for name, module in model.get_submodule(head).named_modules()
        if isinstance(module, nn.Linear)
    ]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear classifier to replace")
    old = model.get_submodule(names[-1])
    parent, _, attr = names[-1].rpartition(".")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    setattr(
        model.get_submodule(parent) if parent else model, attr, new.to(old.weight.device, old.weight.dtype)
    )
    return model


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """The model's state dict as safetensors, written atomically; the input statistics declared on the
    model (:meth:`Preprocess.declare`, as castream's training does) are recorded in its metadata, and
    :func:`load_weights` declares them again."""
    from .preprocess import Preprocess, recorded_metadata

    declared = getattr(model, "castream_preprocess", None)
    metadata = recorded_metadata(declared if isinstance(declared, Preprocess) else None)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata or None))


def read_state(path: str | os.PathLike) -> dict:
    """A state dict from a local file: safetensors, or a ``torch.save`` file (a state dict, or a castream
    training checkpoint with a ``"model"`` entry) read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None
    return state.get("model", state) if isinstance(state, dict) else state


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local checkpoint (see :func:`read_state`) into ``model``; a checkpoint of another
    architecture or class count is an error listing the missing, unexpected and mismatched keys."""
    state = read_state(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for what, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("keys of another shape, checkpoint vs model", mismatched),
            )
            if keys
        ]
        raise ValueError(
            f"checkpoint {path} does not fit {type(model).__name__} (another architecture or class count?): "
            + "; ".join(parts)
        )
    model.load_state_dict(state)
    from .preprocess import recorded_statistics

    recorded = recorded_statistics(path)
    if recorded is not None:
        recorded.declare(model)
    return model


def checkpoint_classes(name: str, path: str | os.PathLike) -> int:
    """Number of classes of a local checkpoint of model ``name``, read from its classifier's weight."""
    from .backbones import describe

    model = build_model(name)
    heads = [
        f"{h}.{n}.weight".replace("..", ".") if n else f"{h}.weight"
        for h in describe(model).head
        for n, m in model.get_submodule(h).named_modules()
        if isinstance(m, nn.Linear)
    ]
    state = read_state(path)
    if not heads or heads[-1] not in state:
        raise ValueError(f"cannot find the classifier weight {heads[-1:]} of {name} in {path}")
    return int(state[heads[-1]].shape[0])
