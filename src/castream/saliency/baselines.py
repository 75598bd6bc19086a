"""CAM, the original class activation map, and the baselines: Fake-CAM and a seeded random map."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from ..backbones import describe, resolve_module
from ..stream import StreamModel
from .base import SaliencyMethod, combine


class CAM(SaliencyMethod):
    """CAM (Zhou et al.), thesis (1.3): ``sum_k W_ck A^k`` with ``W`` the linear classifier that follows
    global average pooling of the last stage, ``h`` = identity.

    Defined only for GAP followed by one linear layer (e.g. ResNet); a StreamModel pools with its stream,
    so CAM raises there (use a gradient method, or ``rawattention`` for the stream's own map). For a model
    outside the supported families pass ``layer`` and ``classifier`` (the nn.Linear after GAP, or its name).
    """

    name = "cam"

    def __init__(
        self, model: nn.Module, layer=None, *, classifier: str | nn.Module | None = None, **options
    ) -> None:
        if isinstance(model, StreamModel):
            raise ValueError(
                "CAM uses the classifier weights after global average pooling, but a StreamModel pools with "
                "its CA-Stream; use gradcam (or another gradient method) or rawattention instead"
            )
        if classifier is None:
            spec = describe(model)
            if spec.head_input != "flat" or len(spec.head) != 1:
                raise ValueError(
                    f"CAM needs global average pooling followed by one linear classifier; the head of this "
                    f"{spec.family} model is {spec.head} — use gradcam instead"
                )
            classifier, layer = spec.head[0], spec.taps[-1] if layer is None else layer
        head = resolve_module(model, classifier, "classifier") if isinstance(classifier, str) else classifier
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"CAM needs a linear classifier after global average pooling, got {type(head).__name__}"
            )
        super().__init__(model, layer, **options)
        self.classifier = head

    def compute(self, images: Tensor, targets) -> Tensor:
        acts, t, _ = self.activations(images, targets)
        if acts[0].shape[1] != self.classifier.in_features:
            raise ValueError(
                f"layer {self.layers[0][0]!r} has {acts[0].shape[1]} channels but the classifier reads "
                f"{self.classifier.in_features}; CAM is defined for the last stage only"
            )
        return combine(self.classifier.weight[t], acts[0])


class FakeCAM(SaliencyMethod):
    """Fake-CAM (Poppi et al.): 0 at the top-left pixel, 1 elsewhere, at input resolution (thesis
    Table 2.1)."""

    name = "fakecam"
    uses_layer = False

    def compute(self, images: Tensor, targets) -> Tensor:
        maps = torch.ones(images.shape[0], *images.shape[-2:], device=images.device, dtype=images.dtype)
        maps[:, 0, 0] = 0
        return maps


class RandomMap(SaliencyMethod):
    """A seeded random map: the chance level of every metric. Uniform noise on a ``grid`` x ``grid`` lattice
    (default: one value per pixel), upsampled bilinearly like a CAM of that resolution (pass the explained
    layer's size for a baseline as smooth as the maps it is compared with). Each image's noise is drawn
    from ``seed`` and a checksum of the image's content, so an image gets the same map in any batch, in
    any order and under any pooling; the model is never run."""

    name = "random"
    uses_layer = False

    def __init__(self, model: nn.Module, layer=None, *, seed: int = 0, grid: int | None = None, **options):
        if layer is not None:
            raise ValueError("the random map uses no layer; got layer=" + repr(layer))
        for option, value in (("seed", seed), ("grid", grid)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{option} must be an integer, got {type(value).__name__} {value!r}")
        if seed < 0 or (grid is not None and grid < 1):
            raise ValueError(f"need seed >= 0 and grid >= 1, got seed={seed}, grid={grid}")
        super().__init__(model, **options)
        self.seed, self.grid = seed, grid

    def compute(self, images: Tensor, targets) -> Tensor:
        height, width = (self.grid, self.grid) if self.grid else images.shape[-2:]
        quantized = (images.detach().float() * 1024).round().to(torch.int32).cpu().numpy()
        start = zlib.crc32(str(self.seed).encode())  # torch's CPU generator keeps 32 bits of a seed
        maps = [
            torch.rand(height, width, generator=torch.Generator().manual_seed(zlib.crc32(q.tobytes(), start)))
            for q in quantized
        ]
        return torch.stack(maps).to(images.device, images.dtype)
