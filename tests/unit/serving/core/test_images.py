"""Image decoding limits, PNG encoding and grids."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from latentserve.png import grid_png
from serving.core.errors import ServingError
from serving.core.images import decode_image, encode_pngs

LIMITS = {"index": 0, "max_bytes": 100_000, "max_pixels": 200 * 200}


def encoded(array, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_png_round_trip_is_exact_in_8_bits():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    decoded = decode_image(encoded(pixels), resize=False, **LIMITS)
    np.testing.assert_array_equal(decoded, pixels.astype(np.float32) / 255)
    images = (pixels.astype(np.float32) / 255)[None, None]
    (png,) = encode_pngs(images)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)


def test_jpeg_and_rgb_become_grayscale():
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 1] = 200
    decoded = decode_image(encoded(rgb, "JPEG"), resize=False, **LIMITS)
    assert decoded.shape == (28, 28) and decoded.dtype == np.float32
    expected = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255
    np.testing.assert_allclose(decoded, expected, atol=0.05)  # JPEG is lossy


def test_size_rules():
    big = np.zeros((56, 56), np.uint8)
    with pytest.raises(ServingError) as info:
        decode_image(encoded(big), resize=False, **LIMITS)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert decode_image(encoded(big), resize=True, **LIMITS).shape == (28, 28)
    with pytest.raises(ServingError) as info:
        decode_image(encoded(np.zeros((201, 200), np.uint8)), resize=True, **LIMITS)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_byte_limit_checked_before_decoding():
    with pytest.raises(ServingError) as info:
        decode_image(b"\0" * 100_001, resize=True, **LIMITS)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grid_layout():
    images = np.ones((5, 1, 28, 28), np.float32)
    grid = Image.open(io.BytesIO(grid_png(images, columns=2, padding=1)))
    assert grid.size == (2 * 29 + 1, 3 * 29 + 1)
    pixels = np.asarray(grid)
    assert pixels[1:29, 1:29].min() == 255 and pixels[0].max() == 0
