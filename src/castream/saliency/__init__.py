"""Saliency methods behind one API: ``method = get(name)(model, layer=None, **options)``, then
``maps = method(images, targets=None, *, upsample=True, normalize=True)`` -> ``(B, H, W)`` in [0, 1]."""

from __future__ import annotations

import inspect
import json

from .attention import RawAttention, Rollout
from .base import ChannelsLastReshape, SaliencyMethod, TokenReshape
from .baselines import CAM, FakeCAM, RandomMap
from .gradient import (
    FEM,
    KPCACAM,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GradientMethod,
    GuidedBackprop,
    HiResCAM,
    LayerCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from .opticam import OptiCAM
from .perturbation import ExtremalPerturbation
from .score import ISCAM, SACAM, SSCAM, AblationCAM, ScoreCAM
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
        GradCAMElementWise,
        EigenCAM,
        EigenGradCAM,
        KPCACAM,
        FEM,
        ShapleyCAM,
        FinerCAM,
        FullGrad,
        SmoothGradCAMPlusPlus,
        ScoreCAM,
        SSCAM,
        ISCAM,
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


def parse_value(text: str):
    """An option value typed as text: JSON when it parses (numbers, true/false/null, lists), Python's
    True/False/None, anything else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"True": True, "False": False, "None": None}.get(text, text)


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets (a list value keeps its commas)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def split_spec(name: str) -> tuple[str, dict]:
    """``"NAME[key=value,...]"`` -> ``("NAME", {key: value})``: a labelled variant of a method (values as
    :func:`parse_value`); a plain name has no options. Bad syntax or a repeated key is a ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"a saliency method is named by a string, got {type(name).__name__}")
    base, bracket, rest = name.partition("[")
    if not bracket:
        return name, {}
    if not rest.endswith("]") or not base or rest == "]":
        raise ValueError(
            f"a method variant is written NAME[key=value,...], e.g. opticam[objective=diff]; got {name!r}"
        )
    options: dict = {}
    for item in _split_top(rest[:-1]):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier() or not value.strip():
            raise ValueError(f"{name!r}: each option of a variant is key=value, got {item!r}")
        if key in options:
            raise ValueError(f"{name!r} sets {key!r} twice")
        options[key] = parse_value(value.strip())
    return base, options


def method_defaults(cls: type) -> dict:
    """The keyword options of method class ``cls`` and their defaults, over its ``__init__`` chain."""
    found: dict = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]
        for p in parameters:
            if p.default is not inspect.Parameter.empty and p.name not in ("model", "layer"):
                found.setdefault(p.name, p.default)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return found


def spec(name: str) -> tuple[type[SaliencyMethod], dict]:
    """(method class, inline options) of a method name or variant (``"opticam[objective=diff]"``); an
    option the class does not take is a ValueError naming the ones it does."""
    base, options = split_spec(name)
    cls = get(base)
    known = method_defaults(cls)
    unknown = sorted(set(options) - set(known) - {"layer"})
    if unknown and not base.lower().startswith("captum:"):
        raise ValueError(f"{name!r}: {cls.__name__} has no option {unknown}; its options: {sorted(known)}")
    return cls, options


def canonical(name: str) -> str:
    """One spelling per method variant (registry name, options sorted), to tell two names apart."""
    base, options = split_spec(name)
    key = base if base.lower().startswith("captum:") else get(base).name
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items()))
    return f"{key}[{inner}]" if options else key


__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "SACAM",
    "SSCAM",
    "AblationCAM",
    "ChannelsLastReshape",
    "EigenCAM",
    "EigenGradCAM",
    "ExtremalPerturbation",
    "FakeCAM",
    "FinerCAM",
    "GradCAM",
    "GradCAMElementWise",
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
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",
    "TokenReshape",
    "TransformerAttribution",
    "XGradCAM",
    "available",
    "canonical",
    "get",
    "method_defaults",
    "parse_value",
    "spec",
    "split_spec",
]
