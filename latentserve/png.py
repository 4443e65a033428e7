"""Image files for the client side: N images in [0, 1] -> one 8-bit PNG or JPEG file (grey
for 1-channel images, RGB for 3-channel ones, any size): the bare image for one, a grid for
several.

Pillow is optional for a client (`pip install latentserve` has numpy, grpcio and protobuf
only), so it is imported when an image file is first written; without it,
:class:`PngUnavailable` says which extra brings it. Sending PNG/JPEG files to Encode needs no
Pillow on the client: the files travel as bytes and the server decodes them.
"""

from __future__ import annotations

import io
from types import ModuleType

import numpy as np
import numpy.typing as npt

PNG_EXTRA_HINT = 'pip install "latentserve[png]"'


class PngUnavailable(RuntimeError):
    """Writing a PNG was asked for, but Pillow is not installed."""


def _pillow_image() -> ModuleType:
    try:
        from PIL import Image
    except ImportError:
        raise PngUnavailable(
            f"writing PNG or JPEG files needs Pillow: {PNG_EXTRA_HINT} (or write .npy instead)"
        ) from None
    return Image


def require_pillow() -> None:
    """Raise PngUnavailable now, before a long call whose result could not be written."""
    _pillow_image()


def to_uint8(images: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """Float images in [0, 1] (any shape) -> uint8, clipped and rounded."""
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def _cells(images: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """N x C x H x W (C = 1 or 3) or N x H x W float -> N x C x H x W uint8."""
    return to_uint8(images if images.ndim == 4 else images[:, None])


def grid_png(
    images: npt.NDArray[np.float32],
    columns: int | None = None,
    padding: int = 2,
    image_format: str = "PNG",
) -> bytes:
    """N x C x H x W (C = 1 or 3) or N x H x W float32 -> one PNG (or JPEG) with the images
    in a grid."""
    n = int(images.shape[0])
    cells = _cells(images)
    channels, height, width = cells.shape[1:]
    cols = columns or max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, -(-n // cols))
    canvas = np.zeros(
        (channels, rows * (height + padding) + padding, cols * (width + padding) + padding),
        dtype=np.uint8,
    )
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = padding + r * (height + padding), padding + c * (width + padding)
        canvas[:, y : y + height, x : x + width] = cells[i]
    return _encode(canvas, image_format)


def image_file(images: npt.NDArray[np.float32], image_format: str = "PNG") -> bytes:
    """N images -> one PNG or JPEG file: the bare image when N is 1 (a file Encode takes back
    as it is), else a grid."""
    if images.shape[0] == 1:
        return _encode(_cells(images)[0], image_format)
    return grid_png(images, image_format=image_format)


def _encode(pixels: npt.NDArray[np.uint8], image_format: str) -> bytes:
    """C x H x W uint8 -> the file's bytes (grey for one channel, RGB for three)."""
    picture = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buffer = io.BytesIO()
    # JPEG's default quality 75 blurs a 28-pixel digit's strokes visibly; 95 keeps them.
    options = {"quality": 95} if image_format == "JPEG" else {}
    _pillow_image().fromarray(picture).save(buffer, format=image_format, **options)
    return buffer.getvalue()
