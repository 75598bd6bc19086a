import numpy as np
import pytest
import torch

from castream import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from castream.maps import finalize_maps, normalize_maps


def test_normalize_round_trip_and_formula():
    pre = Preprocess()
    pixels = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    x = pre.normalize(pixels)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(x, (pixels - mean) / std)
    torch.testing.assert_close(pre.denormalize(x), pixels)


def test_mask_is_pixel_space_blend():
    pre = Preprocess()
    pixels = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    x = pre.normalize(pixels)
    maps = torch.rand(2, 8, 8, dtype=torch.float64)
    # denormalize, multiply, normalize again (PROTOCOL.md): masked-out pixels are black
    torch.testing.assert_close(pre.mask(x, maps), pre.normalize(pixels * maps[:, None]))
    torch.testing.assert_close(pre.mask(x, torch.ones(2, 8, 8, dtype=torch.float64)), x)
    torch.testing.assert_close(
        pre.denormalize(pre.mask(x, torch.zeros(2, 8, 8, dtype=torch.float64))), torch.zeros_like(pixels)
    )
    # another baseline: the mean colour, i.e. normalized zeros
    torch.testing.assert_close(pre.mask(x, maps, "mean"), x * maps[:, None])
    blur = pre.baseline(x, "blur", kernel_size=3, sigma=1.0)
    assert blur.shape == x.shape
    torch.testing.assert_close(pre.mask(x, maps, blur), blur + maps[:, None] * (x - blur))


def test_mask_broadcasts_leading_dims():
    pre = Preprocess()
    x = torch.randn(1, 3, 4, 4)
    maps = torch.rand(5, 4, 4)
    assert pre.mask(x, maps).shape == (5, 3, 4, 4)


def test_preprocess_errors():
    pre = Preprocess()
    with pytest.raises(ValueError, match="3-channel"):
        pre.normalize(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="upsample"):
        pre.mask(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 2))
    with pytest.raises(ValueError, match="unknown baseline"):
        pre.baseline(torch.rand(1, 3, 4, 4), "white")
    with pytest.raises(ValueError, match="positive"):
        Preprocess(std=(1, 0, 1))


def test_normalize_maps_constant_is_zero_and_range_is_unit():
    maps = torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).view(4, 4)])
    out = normalize_maps(maps)
    assert torch.equal(out[0], torch.zeros(4, 4))
    assert out[1].min() == 0 and out[1].max() == 1
    up = finalize_maps(maps, (8, 8), normalize=True)
    assert up.shape == (2, 8, 8) and not up.isnan().any()


def test_viz_never_guesses_the_normalization():
    """Without preprocess= a normalized image is an error (before: ImageNet statistics were assumed and a
    photo normalized otherwise came out washed out); a pixel image in [0, 1] is shown as it is."""
    from castream import viz

    pixels = torch.rand(3, 8, 8)
    assert np.allclose(viz.to_pixels(pixels), pixels.permute(1, 2, 0).numpy())
    normalized = Preprocess((0.5,) * 3, (0.5,) * 3).normalize(pixels)
    with pytest.raises(ValueError, match="pass preprocess="):
        viz.overlay(normalized, torch.rand(8, 8))
    shown = viz.to_pixels(normalized, Preprocess((0.5,) * 3, (0.5,) * 3))
    assert np.allclose(shown, pixels.permute(1, 2, 0).numpy(), atol=1e-6)
