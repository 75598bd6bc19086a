"""castream: interpretable image recognition with PyTorch.

CA-Stream attention pooling for frozen CNNs, one API for saliency methods, and the metrics to evaluate
them under a documented protocol.
"""

from importlib import import_module

# Every public name loads on first use (PEP 562), so ``import castream`` (and the console script's start,
# where a Ctrl-C must give one line, not a traceback) does not import torch.
_NAMES = {
    "BackboneSpec": "backbones",
    "Scorer": "_scorer",
    "describe": "backbones",
    "IMAGENET_MEAN": "preprocess",
    "IMAGENET_STD": "preprocess",
    "Preprocess": "preprocess",
    "CAStream": "stream",
    "CrossAttention": "stream",
    "StreamConfig": "stream",
    "StreamModel": "stream",
    "attach_stream": "stream",
    "load_stream": "stream",
    "save_stream": "stream",
    "count_flops": "utils",
    "count_parameters": "utils",
}
_SUBPACKAGES = {
    "bench",
    "data",
    "demo",
    "evaluate",
    "guided",
    "maps",
    "metrics",
    "models",
    "saliency",
    "train",
    "viz",
}


def __getattr__(name: str):
    """Public names and subpackages (``castream.data``, ``castream.train``, ...) load on first use."""
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'castream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_SUBPACKAGES, "__version__"})


def _version() -> str:
    """The installed distribution's version, looked up on first use: importing importlib.metadata at
    start-up would widen the window in which a Ctrl-C gives a traceback instead of one line."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("castream")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+unknown"


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "CAStream",
    "CrossAttention",
    "Preprocess",
    "Scorer",
    "StreamConfig",
    "StreamModel",
    "__version__",
    "attach_stream",
    "count_flops",
    "count_parameters",
    "describe",
    "load_stream",
    "metrics",
    "saliency",
    "save_stream",
]
