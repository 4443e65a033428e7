"""Image files <-> arrays with Pillow: decoding uploaded PNG/JPEG for Encode (with limits
against decompression bombs) into the model's C x H x W, and PNG encoding for Decode/Sample
responses (grey for a 1-channel model, RGB for a 3-channel one; the CLI's grids are in
latentserve.png). Arrays are float32 in [0, 1].

A file already in the model's form is taken as is. Converting it (scaling to the model's
size, or colour to grey) is a silent change of the input, so it happens only when the
request sets ``resize``; grey files are always accepted by an RGB model (repeating the grey
level loses nothing). Transparency is composited on white, as training's image loader does.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from latentserve.manifest import ImageSpec, describe_shape
from latentserve.png import to_uint8
from serving.core.errors import invalid_argument, resource_exhausted

Float32Array = npt.NDArray[np.float32]
ACCEPTED_FORMATS = ("PNG", "JPEG")
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "F"})
# A JPEG of a grey picture saved in colour differs between channels by rounding only.
GREY_TOLERANCE = 2


def decode_image(
    data: bytes,
    *,
    index: int,
    resize: bool,
    max_bytes: int,
    max_pixels: int,
    spec: ImageSpec,
    model: str = "",
    max_bytes_name: str = "the server's max_image_bytes",
) -> Float32Array:
    """One PNG/JPEG file -> C x H x W float32 in [0, 1], C x H x W as in `spec` (for a
    graph with dynamic sizes, the file's own size when allowed, else the nominal one).

    The size comes from the header (Image.open does not decode pixels), so an oversized
    image is refused before any memory is spent on it.
    """
    where = f"encoded_images.data[{index}]"
    if len(data) > max_bytes:
        raise resource_exhausted(
            f"{where}: {len(data)} bytes, more than {max_bytes_name} ({max_bytes})"
        )
    if not data:
        raise invalid_argument(f"{where}: empty; expected a PNG or JPEG file")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            width, height = im.size
            size = _target_size(spec, width, height, resize, where, model, max_pixels)
            picture = _to_channels(im, spec.channels, resize, where, model, spec)
            if picture.size != size:
                picture = picture.resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(picture, dtype=np.float32)
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
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return pixels / np.float32(255.0)


def _model_words(model: str, spec: ImageSpec) -> str:
    kind = "grey" if spec.channels == 1 else "RGB"
    sizes = (
        describe_shape(spec.shape)
        if spec.dynamic is None
        else (f"{spec.channels} x H x W ({spec.allowed_sizes()})")
    )
    who = f"model {model!r}" if model else "the model"
    return f"{who} takes {kind} {sizes} images (channels x height x width)"


def _target_size(
    spec: ImageSpec, width: int, height: int, resize: bool, where: str, model: str, most: int
) -> tuple[int, int]:
    """(width, height) the pixels must end up at; refuses a wrong size without `resize`."""
    if spec.accepts(height, width):
        return width, height
    if not resize:
        raise invalid_argument(
            f"{where}: image is {width} x {height} pixels (width x height); "
            f"{_model_words(model, spec)}, or set resize to scale it (latent-client encode --resize)"
        )
    if width * height > most:
        raise resource_exhausted(
            f"{where}: image is {width} x {height} = {width * height} pixels, "
            f"more than the server's max_image_pixels ({most})"
        )
    return spec.width, spec.height


def _to_channels(
    im: Image.Image, channels: int, resize: bool, where: str, model: str, spec: ImageSpec
) -> Image.Image:
    """The file's pixels as L (grey) or RGB, transparency composited on white."""
    grey = im.mode in GREY_MODES
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, rgba).convert("L" if grey else "RGB")
    else:
        picture = im.convert("L" if grey else "RGB")
    if channels == 3:
        return picture.convert("RGB")
    if picture.mode == "RGB" and not resize and not _looks_grey(picture):
        raise invalid_argument(
            f"{where}: image is in colour (RGB); {_model_words(model, spec)}: send grey "
            "images, or set resize to convert it and scale it to the model's size (latent-client encode --resize)"
        )
    return picture.convert("L")


def _looks_grey(picture: Image.Image) -> bool:
    rgb = np.asarray(picture, dtype=np.int16)
    return bool(
        np.abs(rgb[..., 0] - rgb[..., 1]).max() <= GREY_TOLERANCE
        and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= GREY_TOLERANCE
    )


def encode_pngs(images: Float32Array) -> list[bytes]:
    """N x C x H x W float32 (C = 1 or 3) -> N PNG files (grey or RGB)."""
    out = []
    for pixels in to_uint8(images):
        buffer = io.BytesIO()
        picture = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
        Image.fromarray(picture).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out
