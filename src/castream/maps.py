"""Saliency-map post-processing shared by every method and by the stream's attention helper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalize each map over its last two dims to [0, 1] (thesis (1.7)).

    A constant map has no range and becomes all zeros, never NaN. "Constant" includes a range within a
    few units in the last place of the map's magnitude: bilinear upsampling of an exactly constant map
    leaves such rounding noise, which min-max would otherwise blow up to the full [0, 1].
    """
    flat = maps.flatten(-2)
    low = flat.amin(-1, keepdim=True)
    high = flat.amax(-1, keepdim=True)
    span = high - low
    ulps = 8 * torch.finfo(maps.dtype).eps * torch.maximum(low.abs(), high.abs())
    has_range = span > ulps
    out = (flat - low) / torch.where(has_range, span, torch.ones_like(span))
    return torch.where(has_range, out, torch.zeros_like(out)).view_as(maps)


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``(B, h, w)`` maps to ``size`` (the input resolution)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def finalize_maps(maps: Tensor, size: tuple[int, int] | None, normalize: bool) -> Tensor:
    """The standard map pipeline of PROTOCOL.md: optional upsampling to ``size``, then optional min-max."""
    if size is not None:
        maps = upsample_maps(maps, size)
    return normalize_maps(maps) if normalize else maps
