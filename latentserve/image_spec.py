"""What images and latents cost on the wire, and how pixels map to a graph's value range.

Shapes come from each model's spec (latentserve.manifest: ``image_shape``, ``latent_shape``);
nothing here knows one. Images travel as values in [0, 1] (float32, or uint8 levels 0..255
when a client asks), whatever range the graphs take: the server maps them to and from the
model's ``image.value_range`` at the edge of the runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]


def image_bytes(shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes of one C x H x W image on the wire (float32: 4 per value; uint8: 1)."""
    return itemsize * math.prod(shape)


def png_bytes_bound(shape: Sequence[int]) -> int:
    """An upper bound on one 8-bit PNG of a C x H x W image: incompressible pixels, a filter
    byte per row, deflate's stored-block headers (5 bytes per 16 KiB) and the chunks."""
    c, h, w = shape
    raw = h * (c * w + 1)
    return raw + 5 * (raw // 16384 + 1) + 1024


def to_graph_range(images: Float32Array, value_range: tuple[float, float]) -> Float32Array:
    """[0, 1] -> [lo, hi]; the identity (no copy) for a graph that takes [0, 1]."""
    lo, hi = value_range
    if (lo, hi) == (0.0, 1.0):
        return images
    return (images * np.float32(hi - lo) + np.float32(lo)).astype(np.float32, copy=False)


def from_graph_range(images: Float32Array, value_range: tuple[float, float]) -> Float32Array:
    """[lo, hi] -> [0, 1], the inverse of :func:`to_graph_range` (values are not clipped)."""
    lo, hi = value_range
    if (lo, hi) == (0.0, 1.0):
        return images
    return ((images - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32, copy=False)
