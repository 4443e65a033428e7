"""Image files <-> arrays with Pillow: decoding uploaded PNG/JPEG for Encode (with limits
against decompression bombs) and PNG encoding for Decode/Sample responses (the CLI's grids
are in latentserve.png). Images are 8-bit grayscale on the wire; arrays are float32 in [0, 1].
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from latentserve.png import to_uint8
from serving.core.errors import invalid_argument, resource_exhausted

Float32Array = npt.NDArray[np.float32]
SIDE = 28
ACCEPTED_FORMATS = ("PNG", "JPEG")


def decode_image(
    data: bytes, *, index: int, resize: bool, max_bytes: int, max_pixels: int
) -> Float32Array:
    """One PNG/JPEG file -> 28 x 28 float32 in [0, 1] (grayscale).

    The size comes from the header (Image.open does not decode pixels), so an oversized
    image is refused before any memory is spent on it.
    """
    where = f"encoded_images.data[{index}]"
    if len(data) > max_bytes:
        raise resource_exhausted(
            f"{where}: {len(data)} bytes, more than the server's max_image_bytes ({max_bytes})"
        )
    if not data:
        raise invalid_argument(f"{where}: empty; expected a PNG or JPEG file")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            width, height = im.size
            if (width, height) != (SIDE, SIDE):
                if not resize:
                    raise invalid_argument(
                        f"{where}: image is {width} x {height} pixels; it must be {SIDE} x "
                        f"{SIDE}, or set resize to scale it (latent-client encode --resize)"
                    )
                if width * height > max_pixels:
                    raise resource_exhausted(
                        f"{where}: image is {width} x {height} = {width * height} pixels, "
                        f"more than the server's max_image_pixels ({max_pixels})"
                    )
            gray = im.convert("L")
            if gray.size != (SIDE, SIDE):
                gray = gray.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
            pixels = np.asarray(gray, dtype=np.float32)
    except Image.DecompressionBombError as e:
        # Pillow's own guard (far above ours) fires inside Image.open for absurd headers.
        raise resource_exhausted(
            f"{where}: {e}; the server's max_image_pixels is {max_pixels}"
        ) from None
    except UnidentifiedImageError:
        # Pillow's own message names its internal buffer object: say what the bytes are not.
        raise invalid_argument(
            f"{where}: not a decodable PNG or JPEG image (the bytes are neither format)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise invalid_argument(
            f"{where}: not a decodable PNG or JPEG image ({type(e).__name__}: {e})"
        ) from None
    return pixels / np.float32(255.0)


def encode_pngs(images: Float32Array) -> list[bytes]:
    """N x 1 x 28 x 28 float32 -> N grayscale PNG files."""
    out = []
    for pixels in to_uint8(images.reshape(images.shape[0], SIDE, SIDE)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out
