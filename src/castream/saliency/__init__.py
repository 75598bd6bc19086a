"""Saliency methods behind one API: ``method = get(name)(model, layer=None, **options)``, then
``maps = method(images, targets=None, *, upsample=True, normalize=True)`` -> ``(B, H, W)`` in [0, 1]."""

from __future__ import annotations

from .attention import RawAttention, Rollout
from .base import ChannelsLastReshape, SaliencyMethod, TokenReshape
from .baselines import CAM, FakeCAM, RandomMap
from .gradient import GradCAM, GradCAMPlusPlus, GradientMethod, GuidedBackprop, HiResCAM, LayerCAM, XGradCAM
from .opticam import OptiCAM
from .perturbation import ExtremalPerturbation
from .score import SACAM, AblationCAM, ScoreCAM
from .transformer import TransformerAttribution

_METHODS: dict[str, type[SaliencyMethod]] = {
    cls.name: cls
    for cls in (
        CAM,
        GradCAM,
        GradCAMPlusPlus,
        XGradCAM,
        HiResCAM,
        LayerCAM,
        ScoreCAM,
        AblationCAM,
        OptiCAM,
        ExtremalPerturbation,
        SACAM,
        FakeCAM,
        RandomMap,
        RawAttention,
        Rollout,
        TransformerAttribution,
        GuidedBackprop,
    )
}
_ALIASES = {
    "axiomcam": "xgradcam",
    "gradcampp": "gradcam++",
    "raw": "rawattention",
    "guided": "guidedbackprop",
    "ep": "extremalperturbation",
    "experturbation": "extremalperturbation",
    "tibav": "transformerattribution",
}


def available() -> list[str]:
    """Names accepted by :func:`get` (aliases: axiomcam, gradcampp, raw, guided, ep, experturbation,
    tibav)."""
    return list(_METHODS)


def get(name: str) -> type[SaliencyMethod]:
    """The method class registered under ``name`` (case and ``-``/``_`` insensitive), or
    ``"captum:NAME"`` for the Captum attribution ``captum.attr.NAME`` (castream.interop.captum).

    The lazy import of ``interop.captum`` here is the one place where a lower layer reaches the interop
    layer above it (``tests/test_architecture.py`` allows exactly this edge): every name the runner and
    the CLI take goes through ``get``, and Captum's classes are only known once captum is imported."""
    if name.lower().startswith("captum:"):
        from ..interop.captum import method_class

        return method_class(name.split(":", 1)[1])
    key = name.lower().replace("-", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        raise ValueError(f"unknown saliency method {name!r}; available: {available()}")
    return _METHODS[key]


__all__ = [
    "CAM",
    "SACAM",
    "AblationCAM",
    "ChannelsLastReshape",
    "ExtremalPerturbation",
    "FakeCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientMethod",
    "GuidedBackprop",
    "HiResCAM",
    "LayerCAM",
    "OptiCAM",
    "RandomMap",
    "RawAttention",
    "Rollout",
    "SaliencyMethod",
    "ScoreCAM",
    "TokenReshape",
    "TransformerAttribution",
    "XGradCAM",
    "available",
    "get",
]
