"""castream: interpretable image recognition with PyTorch.

CA-Stream attention pooling for frozen CNNs, one API for saliency methods, and the metrics to evaluate
them under a documented protocol.
"""

from importlib.metadata import PackageNotFoundError, version

from . import metrics, saliency
from .backbones import BackboneSpec, describe
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .stream import (
    CAStream,
    CrossAttention,
    StreamConfig,
    StreamModel,
    attach_stream,
    load_stream,
    save_stream,
)
from .utils import count_flops, count_parameters

_LAZY = {"bench", "data", "demo", "evaluate", "guided", "maps", "models", "train", "viz"}


def __getattr__(name: str):
    """Subpackages load on first use (``castream.data``, ``castream.train``, ...), keeping import light."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'castream' has no attribute {name!r}")


try:
    __version__ = version("castream")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "CAStream",
    "CrossAttention",
    "Preprocess",
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
