"""CAM, the original class activation map, and the baselines: Fake-CAM and a seeded random map."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from .._hooks import forward_hooks
from ..backbones import default_layer, describe, is_vit, prefix_tokens, resolve_module
from ..stream import StreamModel
from ..utils import meta_call
from .base import SaliencyMethod


class CAM(SaliencyMethod):
    """CAM (Zhou et al.), thesis (1.3): ``sum_k W_ck A^k`` with ``W`` the linear classifier that follows
    global average pooling of the last stage, ``h`` = identity.

    Defined only for GAP followed by one linear layer (e.g. ResNet); a StreamModel pools with its stream,
    so CAM raises there (use a gradient method, or ``rawattention`` for the stream's own map). For a model
    outside the supported families pass ``layer`` and ``classifier`` (the nn.Linear after GAP, or its name).
    """

    name = "cam"
    cam_family = True

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
        if isinstance(head, nn.Sequential):  # Flatten -> Linear (Hugging Face), dropout around it
            linears = [m for m in head if isinstance(m, nn.Linear)]
            rest = [m for m in head if not isinstance(m, nn.Linear | nn.Flatten | nn.Identity | nn.Dropout)]
            head = linears[0] if len(linears) == 1 and not rest else head
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
        return self.weighted_sum(self.classifier.weight[t], acts[0])


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
    """A seeded random map: uniform noise on a lattice, upsampled bilinearly like a CAM of that resolution.

    ``grid``: ``"layer"`` (default) the resolution of the layer CAM methods explain by default (the
    description's last tap; a ViT's patch grid), so that the baseline is as smooth as the maps it is
    compared with; an int ``n`` for an n x n lattice; ``"pixel"`` for one value per pixel. Per-pixel noise
    is no chance level for deletion on photos: blacking out scattered pixels destroys a photo faster than
    any object-shaped map (an out-of-distribution effect), so it would make every method look worse than
    chance. Each image's noise is drawn from ``seed`` and a checksum of the image's content, so an image
    gets the same map in any batch, in any order and under any pooling; the model is never run (its
    layer's size is read on the meta device)."""

    name = "random"
    uses_layer = False
    GRIDS = ("layer", "pixel")

    def __init__(self, model: nn.Module, layer=None, *, seed: int = 0, grid: int | str = "layer", **options):
        if layer is not None:
            raise ValueError("the random map uses no layer; got layer=" + repr(layer))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
        if isinstance(grid, str) and grid not in self.GRIDS:
            raise ValueError(f"grid must be an int >= 1 or one of {self.GRIDS}, got {grid!r}")
        if not isinstance(grid, str) and (isinstance(grid, bool) or not isinstance(grid, int)):
            raise TypeError(
                f"grid must be an integer or one of {self.GRIDS}, got {type(grid).__name__} {grid!r}"
            )
        if seed < 0 or (isinstance(grid, int) and grid < 1):
            raise ValueError(f"need seed >= 0 and grid >= 1, got seed={seed}, grid={grid}")
        super().__init__(model, **options)
        self.seed, self.grid = seed, grid
        self._sizes: dict[tuple[int, ...], tuple[int, int]] = {}

    def lattice(self, images: Tensor) -> tuple[int, int]:
        """(h, w) of the noise for images of this shape."""
        if isinstance(self.grid, int):
            return self.grid, self.grid
        if self.grid == "pixel":
            return tuple(images.shape[-2:])
        key = tuple(images.shape[1:])
        if key not in self._sizes:
            self._sizes[key] = layer_grid(self.model, key, self.forward_kwargs)
        return self._sizes[key]

    def compute(self, images: Tensor, targets) -> Tensor:
        height, width = self.lattice(images)
        quantized = (images.detach().float() * 1024).round().to(torch.int32).cpu().numpy()
        start = zlib.crc32(str(self.seed).encode())  # torch's CPU generator keeps 32 bits of a seed
        maps = [
            torch.rand(height, width, generator=torch.Generator().manual_seed(zlib.crc32(q.tobytes(), start)))
            for q in quantized
        ]
        return torch.stack(maps).to(images.device, images.dtype)


def layer_grid(
    model: nn.Module, image_shape: tuple[int, ...], forward_kwargs: dict | None = None
) -> tuple[int, int]:
    """Spatial size of the layer CAM methods explain by default for inputs of ``image_shape`` (C, H, W):
    a CNN's (h, w), a ViT's patch grid; read on the meta device."""
    name = default_layer(model)
    shapes = []
    with forward_hooks([(model.get_submodule(name), lambda m, a, out: shapes.append(tuple(out.shape)))]):
        meta_call(model, (1, *image_shape), **(forward_kwargs or {}))
    shape = shapes[0] if shapes else ()
    if len(shape) == 4:
        return shape[2], shape[3]
    if len(shape) == 3 and is_vit(model):
        side = round((shape[1] - prefix_tokens(model)) ** 0.5)
        return side, side
    raise ValueError(
        f"the random map's grid='layer' needs the default layer {name!r} of {type(model).__name__} to be a "
        f"feature map, got shape {shape}; pass grid= (an int, or 'pixel')"
    )
