"""Image decoding limits, PNG encoding and grids."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from latentserve.manifest import DynamicSize, ImageSpec
from latentserve.png import grid_png
from serving.core.errors import ServingError
from serving.core.images import decode_image, encode_pngs

GREY = ImageSpec()  # 1 x 28 x 28, as MNIST
RGB = ImageSpec(channels=3, height=32, width=32)
LIMITS = {"index": 0, "max_bytes": 100_000, "max_pixels": 200 * 200, "spec": GREY}


def encoded(array, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_png_round_trip_is_exact_in_8_bits():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    decoded = decode_image(encoded(pixels), resize=False, **LIMITS)
    np.testing.assert_array_equal(decoded[0], pixels.astype(np.float32) / 255)
    images = (pixels.astype(np.float32) / 255)[None, None]
    (png,) = encode_pngs(images)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)


def test_colour_becomes_grayscale_only_with_resize():
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 1] = 200
    with pytest.raises(ServingError) as info:
        decode_image(encoded(rgb, "JPEG"), resize=False, model="m", **LIMITS)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    message = info.value.message
    assert "model 'm' takes grey 1 x 28 x 28 images" in message and "resize" in message
    decoded = decode_image(encoded(rgb, "JPEG"), resize=True, **LIMITS)
    assert decoded.shape == (1, 28, 28) and decoded.dtype == np.float32
    expected = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255
    np.testing.assert_allclose(decoded[0], expected, atol=0.05)  # JPEG is lossy
    # A colour file whose channels are equal is grey, whatever its mode says.
    grey_in_rgb = np.repeat(np.arange(28, dtype=np.uint8)[None, :, None], 28, 0).repeat(3, 2)
    assert decode_image(encoded(grey_in_rgb), resize=False, **LIMITS).shape == (1, 28, 28)


def test_rgb_model_takes_rgb_exactly_grey_repeated_and_alpha_on_white():
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    limits = {**LIMITS, "spec": RGB}
    decoded = decode_image(encoded(pixels), resize=False, **limits)
    np.testing.assert_array_equal(decoded, pixels.transpose(2, 0, 1) / np.float32(255))
    grey = decode_image(encoded(pixels[..., 0]), resize=False, **limits)
    np.testing.assert_array_equal(grey, np.repeat(pixels[None, ..., 0], 3, 0) / np.float32(255))
    clear = np.zeros((32, 32, 4), np.uint8)  # fully transparent black
    np.testing.assert_array_equal(decode_image(encoded(clear), resize=False, **limits), 1.0)
    (png,) = encode_pngs(decoded[None])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)


def test_dynamic_sizes_keep_allowed_sizes_and_resize_others_to_the_nominal_one():
    spec = ImageSpec(
        channels=1, height=16, width=16, dynamic=DynamicSize(multiple=8, min=8, max=64)
    )
    limits = {**LIMITS, "spec": spec}
    assert decode_image(encoded(np.zeros((24, 40), np.uint8)), resize=False, **limits).shape == (
        1,
        24,
        40,
    )
    with pytest.raises(ServingError) as info:
        decode_image(encoded(np.zeros((20, 40), np.uint8)), resize=False, **limits)
    assert "multiples of 8 within [8, 64]" in info.value.message
    assert decode_image(encoded(np.zeros((20, 40), np.uint8)), resize=True, **limits).shape == (
        1,
        16,
        16,
    )


def test_size_rules():
    big = np.zeros((56, 56), np.uint8)
    with pytest.raises(ServingError) as info:
        decode_image(encoded(big), resize=False, **LIMITS)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 x 28 x 28" in info.value.message
    assert decode_image(encoded(big), resize=True, **LIMITS).shape == (1, 28, 28)
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


def test_grid_of_rgb_non_square_images():
    images = np.zeros((3, 3, 20, 36), np.float32)
    images[:, 0] = 1.0  # red
    grid = Image.open(io.BytesIO(grid_png(images, columns=3, padding=1)))
    assert grid.mode == "RGB" and grid.size == (3 * 37 + 1, 21 + 1)
    assert tuple(np.asarray(grid)[1, 1]) == (255, 0, 0)


def test_byte_limit_names_what_was_exceeded():
    with pytest.raises(ServingError) as info:
        decode_image(b"\0" * 5000, resize=True, **{**LIMITS, "max_bytes": 4096})
    assert "max_image_bytes (4096)" in info.value.message
