"""Request validation: plain values and numpy arrays in, typed protocol-neutral requests out.

Every front end (the native gRPC servicer, the Open Inference Protocol servicer, an HTTP
handler) extracts arrays and scalars from its own wire format and hands them to a
:class:`RequestParser`, which checks them against the server's limits and the model
(batch size, response size, shapes, finiteness, pixel range, prior names, temperature,
count) and returns an :class:`EncodeRequest`, :class:`DecodeRequest` or
:class:`SampleRequest` that the model API can run as is. Failures raise a ServingError whose
message says what was wrong and what is allowed. :func:`check_output` refuses results that
came out NaN or infinite. Nothing here knows protobuf or gRPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from latentserve.image_spec import image_bytes, png_bytes_bound
from latentserve.manifest import describe_shape
from latentserve.priors import PRIOR_NAMES, PriorName
from latentserve.sampling import MAX_TEMPERATURE, new_seed
from latentserve.wording import counted
from serving.core.errors import invalid_argument, resource_exhausted
from serving.core.images import decode_image
from serving.core.model import Encoded, SampleChunk, ServedModel
from serving.core.repository import ModelRepository
from serving.process.settings import ServerSettings

Float32Array = npt.NDArray[np.float32]
ImageDtype = Literal["float32", "uint8"]

INPUT_RANGES = {
    "images": "pixels in [0, 1]",
    "latents": "latents of the size its prior produces (see GetModel)",
}
# Bytes of a response around its tensors (names, versions, seeds, field tags).
RESPONSE_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class EncodeRequest:
    model: ServedModel
    images: Float32Array  # N x C x H x W (the model's channels; a size it takes), in [0, 1]
    z_seed: int | None  # seed of a posterior sample z (VAE only); None: no sample

    @property
    def rows(self) -> int:
        return int(self.images.shape[0])

    async def run(self, deadline: float | None = None) -> Encoded:
        """Run it through the model's encoder batcher; outputs checked finite."""
        result = await self.model.encode(self.images, deadline, z_seed=self.z_seed)
        check_output(
            {"latents": result.latents, "log_var": result.log_var, "z": result.z}, "images"
        )
        return result


@dataclass(frozen=True)
class DecodeRequest:
    model: ServedModel
    latents: Float32Array  # N x latent shape, finite
    return_png: bool = False
    image_dtype: ImageDtype = "float32"  # how the answer's images travel

    @property
    def rows(self) -> int:
        return int(self.latents.shape[0])

    async def run(self, deadline: float | None = None) -> Float32Array:
        """Run it through the model's decoder batcher: images, checked finite."""
        images = await self.model.decode(self.latents, deadline)
        check_output({"images": images}, "latents")
        return images


@dataclass(frozen=True)
class SampleRequest:
    model: ServedModel
    count: int
    chunk_size: int  # rows per answer; count for a unary call
    prior: PriorName
    temperature: float
    seed: int
    return_latents: bool = False
    return_png: bool = False
    image_dtype: ImageDtype = "float32"

    def chunks(self, deadline: float | None = None) -> AsyncIterator[SampleChunk]:
        """Run it: the model's draws and decoded images, `chunk_size` rows at a time."""
        return self.model.sample_chunks(
            self.count, self.chunk_size, self.prior, self.temperature, self.seed, deadline
        )

    @property
    def item_bytes(self) -> int:
        """Upper bound on the response bytes one sampled image adds."""
        return _image_item_bytes(self.model, self.image_dtype, self.return_png) + (
            4 * self.model.latent_dim if self.return_latents else 0
        )


class RequestParser:
    """Validates requests against one server's limits (`settings`) and models (`registry`)."""

    def __init__(self, registry: ModelRepository, settings: ServerSettings) -> None:
        self._registry = registry
        self._settings = settings

    def model(self, name: str, version: int = 0) -> ServedModel:
        """The READY model called `name` (empty = the default) at `version` (0 = its newest
        served version), or the error to answer."""
        return self._registry.resolve(name, version)

    # -- Encode -----------------------------------------------------------------------------

    def encode(
        self,
        model: ServedModel,
        images: npt.NDArray[Any],
        *,
        sample_z: bool = False,
        seed: int | None = None,
    ) -> EncodeRequest:
        """`images`: N x C x H x W (N x H x W, or one H x W image, for a grey model) in the
        model's channels and a size it takes; float32 in [0, 1], or uint8 levels 0..255."""
        batch = self._image_batch(model, images)
        self._check_batch(batch.shape[0], "images")
        if images.dtype == np.uint8:
            return self._encode(model, batch.astype(np.float32) / np.float32(255.0), sample_z, seed)
        if images.dtype != np.float32:
            raise invalid_argument(f"images: dtype {images.dtype} is not allowed; send float32")
        check_pixels(batch, model.image_shape[0])
        return self._encode(model, batch, sample_z, seed)

    @staticmethod
    def _image_batch(model: ServedModel, images: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """`images` as N x C x H x W, or the error naming the shapes the model takes."""
        spec = model.manifest.image
        shape = tuple(images.shape)
        if len(shape) == 2 and spec.channels == 1 and spec.accepts(*shape):
            return images.reshape(1, 1, *shape)  # one grey H x W image
        if len(shape) == 3 and spec.channels == 1 and spec.accepts(*shape[1:]):
            return images.reshape(shape[0], 1, *shape[1:])
        if len(shape) == 4 and shape[1] == spec.channels and spec.accepts(*shape[2:]):
            return images
        raise invalid_argument(
            f"images: shape {list(shape)} is not allowed; model {model.name!r} takes "
            f"{image_shapes_allowed(model)} float32 (or uint8){_shape_hint(model, shape)}"
        )

    async def encode_files(
        self,
        model: ServedModel,
        files: Sequence[bytes],
        *,
        resize: bool = False,
        sample_z: bool = False,
        seed: int | None = None,
    ) -> EncodeRequest:
        """`files`: PNG or JPEG images of the model's size and channels unless `resize`
        (see serving.core.images); all of one size for a graph with dynamic sizes."""
        self._check_batch(len(files), "encoded_images")
        s = self._settings
        max_bytes, max_bytes_name = file_byte_limit(model, s.max_image_bytes)

        def decode_all() -> Float32Array:
            decoded = [
                decode_image(
                    data,
                    index=i,
                    resize=resize,
                    max_bytes=max_bytes,
                    max_pixels=s.max_image_pixels,
                    spec=model.manifest.image,
                    model=model.name,
                    max_bytes_name=max_bytes_name,
                )
                for i, data in enumerate(files)
            ]
            sizes = sorted({d.shape[1:] for d in decoded})
            if len(sizes) > 1:
                raise invalid_argument(
                    f"encoded_images: the files have different sizes ({sizes}); one request "
                    "takes images of one size: send one request per size"
                )
            return np.stack(decoded)

        # Pillow decoding (and resizing) would stall every other call on the event loop.
        images = await asyncio.to_thread(decode_all)
        return self._encode(model, images, sample_z, seed)

    def _encode(
        self, model: ServedModel, images: Float32Array, sample_z: bool, seed: int | None
    ) -> EncodeRequest:
        n = int(images.shape[0])
        # Each row answers latents, log_var and z, float32 each, of the image's latent shape.
        latent = model.manifest.latent_shape_for(*images.shape[2:])
        self._check_response_size(n, 3 * image_bytes(latent), "Encode")
        if not sample_z:
            return EncodeRequest(model, images, None)
        if not model.is_vae:
            raise invalid_argument(
                f"sample_z: model {model.name!r} is a plain autoencoder (kind ae) with no "
                "posterior to sample; sample_z is allowed for VAE models only"
            )
        return EncodeRequest(model, images, new_seed() if seed is None else seed)

    # -- Decode -----------------------------------------------------------------------------

    def decode(
        self,
        model: ServedModel,
        latents: Float32Array | None,
        *,
        return_png: bool = False,
        image_dtype: ImageDtype = "float32",
    ) -> DecodeRequest:
        """`latents`: N x latent shape float32 (N x D, or N x C x h x w), finite."""
        want = latent_shapes_allowed(model)
        if latents is None:
            raise invalid_argument(f"latents: missing; send {want} float32")
        if not _latent_shape_ok(model, tuple(latents.shape)):
            words = (
                f"latent_dim {model.latent_dim}"
                if not model.manifest.is_spatial
                else f"latent shape {describe_shape(model.latent_shape)}"
            )
            raise invalid_argument(
                f"latents: shape {list(latents.shape)} is not allowed; model {model.name!r} "
                f"takes {want} float32 ({words})"
            )
        self._check_batch(latents.shape[0], "latents")
        check_finite(latents, "latents")
        per_item = _image_item_bytes(model, image_dtype, return_png, tuple(latents.shape[1:]))
        self._check_response_size(int(latents.shape[0]), per_item, "Decode")
        return DecodeRequest(model, latents, return_png, image_dtype)

    # -- SampleRandom -----------------------------------------------------------------------

    def sample(
        self,
        model: ServedModel,
        *,
        count: int,
        prior: str | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        return_latents: bool = False,
        return_png: bool = False,
        image_dtype: ImageDtype = "float32",
        method: str = "SampleRandom",
        stream_method: str | None = "SampleRandomStream",
    ) -> SampleRequest:
        """`count` images drawn from `prior` (None: the model's default) in one answer.
        `method` names the call in messages; `stream_method`, if any, is suggested for
        counts over the unary limit."""
        limit = self._settings.max_samples_per_request
        hint = (
            f"; use {stream_method} for more"
            if stream_method and limit < self._settings.max_stream_samples
            else ""
        )
        request = self._sample(
            model, count, count, prior, temperature, seed, return_latents, return_png,
            image_dtype, limit=limit, method=method, hint=hint,
        )  # fmt: skip
        self._check_response_size(count, request.item_bytes, method)
        return request

    def sample_stream(
        self,
        model: ServedModel,
        *,
        count: int,
        chunk_size: int = 0,
        prior: str | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        return_latents: bool = False,
        return_png: bool = False,
        image_dtype: ImageDtype = "float32",
        method: str = "SampleRandomStream",
    ) -> SampleRequest:
        """`count` images answered `chunk_size` at a time (0: the server's chunk size).
        Larger chunk requests are clamped (documented) to the server's chunk size, and to
        what fits one message for this model's images: the server bounds message size."""
        request = self._sample(
            model, count, 1, prior, temperature, seed, return_latents, return_png,
            image_dtype, limit=self._settings.max_stream_samples, method=method, hint="",
        )  # fmt: skip
        largest = self._settings.stream_chunk_size
        fits = (self._settings.max_message_bytes - RESPONSE_OVERHEAD_BYTES) // request.item_bytes
        chunk = min(chunk_size or largest, largest, max(fits, 1))
        self._check_response_size(chunk, request.item_bytes, "chunk_size")
        return dataclasses.replace(request, chunk_size=chunk)

    def _sample(
        self,
        model: ServedModel,
        count: int,
        chunk_size: int,
        prior: str | None,
        temperature: float | None,
        seed: int | None,
        return_latents: bool,
        return_png: bool,
        image_dtype: ImageDtype,
        *,
        limit: int,
        method: str,
        hint: str,
    ) -> SampleRequest:
        if count < 1:
            raise invalid_argument("count: must be at least 1")
        if count > limit:
            raise invalid_argument(f"count: {count} is more than {method} allows ({limit}){hint}")
        return SampleRequest(
            model,
            count,
            chunk_size,
            model.default_prior if prior is None else prior_name(prior),
            1.0 if temperature is None else checked_temperature(temperature),
            new_seed() if seed is None else seed,
            return_latents,
            return_png,
            image_dtype,
        )

    # -- limits -----------------------------------------------------------------------------

    def _check_batch(self, n: int, what: str) -> None:
        if n == 0:
            raise invalid_argument(f"{what}: empty batch (N = 0); send at least one")
        limit = self._settings.max_samples_per_request
        if n > limit:
            raise resource_exhausted(
                f"{what}: {n} items, more than the server's max_samples_per_request ({limit}); "
                "split the request"
            )

    def _check_response_size(self, n: int, bytes_per_item: int, what: str) -> None:
        """Refuse up front what could not be sent back within max_message_bytes."""
        limit = self._settings.max_message_bytes
        if n * bytes_per_item + RESPONSE_OVERHEAD_BYTES > limit:
            raise resource_exhausted(
                f"{what}: the response for {n} items would be about {n * bytes_per_item} bytes, "
                f"more than the server's max_message_bytes ({limit}); split the request"
            )


def prior_name(name: str) -> PriorName:
    for known in PRIOR_NAMES:
        if name == known:
            return known
    raise invalid_argument(f"prior: unknown name {name!r}; use one of {', '.join(PRIOR_NAMES)}")


def checked_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (np.isfinite(t) and 0.0 < t <= MAX_TEMPERATURE):
        raise invalid_argument(
            f"temperature: {t} is out of range; allowed 0 < t <= {MAX_TEMPERATURE:g}"
        )
    return t


def check_finite(array: Float32Array, what: str) -> None:
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise invalid_argument(
            f"{what}: {counted(bad, 'value is', 'values are')} NaN or infinite; all must be finite"
        )


def check_pixels(images: Float32Array, channels: int = 1) -> None:
    """Pixel values outside [0, 1] (typically 0..255 bytes sent as floats) would encode to
    meaningless latents without any error, so they are refused with a hint."""
    lo, hi = float(images.min()), float(images.max())
    if lo >= 0.0 and hi <= 1.0:  # False for NaN as well
        return
    check_finite(images, "images")
    levels = "grey levels" if channels == 1 else "levels"
    hint = (
        f"; divide 8-bit {levels} by 255 (or send uint8)" if 1.0 < hi <= 255.0 and lo >= 0.0 else ""
    )
    raise invalid_argument(
        f"images: pixel values span [{lo:g}, {hi:g}]; allowed are float32 {levels} in [0, 1]{hint}"
    )


def file_byte_limit(model: ServedModel, max_image_bytes: int) -> tuple[int, str]:
    """The largest PNG/JPEG file accepted for `model`, and its name for messages: the
    server's max_image_bytes, raised for a model whose largest image, stored as an
    incompressible 8-bit PNG, needs more (the limit scales with the model)."""
    spec = model.manifest.image
    side = spec.dynamic.max if spec.dynamic is not None else 0
    shape = (spec.channels, max(spec.height, side), max(spec.width, side))
    needed = png_bytes_bound(shape)
    if needed <= max_image_bytes:
        return max_image_bytes, "the server's max_image_bytes"
    return needed, f"what one {describe_shape(shape)} PNG can need (above max_image_bytes)"


def image_shapes_allowed(model: ServedModel) -> str:
    """The image tensor shapes `model` takes, in words: "N x 28 x 28 or N x 1 x 28 x 28"."""
    spec = model.manifest.image
    c = spec.channels
    if spec.dynamic is not None:
        return f"N x {c} x H x W ({spec.allowed_sizes()})"
    full = f"N x {describe_shape(spec.shape)}"
    return f"N x {spec.height} x {spec.width} or {full}" if c == 1 else full


def latent_shapes_allowed(model: ServedModel) -> str:
    m = model.manifest
    if m.image.dynamic is not None:
        c, h, w = m.latent_shape
        return (
            f"N x {c} x h x w (h x w = {h} x {w} at the nominal image size, scaling with the "
            f"image: {m.image.allowed_sizes()})"
        )
    return f"N x {describe_shape(m.latent_shape)}"


def _latent_shape_ok(model: ServedModel, shape: tuple[int, ...]) -> bool:
    m = model.manifest
    if m.image.dynamic is None:
        return shape[1:] == m.latent_shape
    if len(shape) != 4 or shape[1] != m.latent_shape[0]:
        return False
    _, h, w = m.latent_shape
    height, width = shape[2] * m.image.height / h, shape[3] * m.image.width / w
    return height.is_integer() and width.is_integer() and m.image.accepts(int(height), int(width))


def _image_for_latent(model: ServedModel, latent: tuple[int, ...]) -> tuple[int, ...]:
    """The C x H x W image a latent of this (per-row) shape decodes to."""
    m = model.manifest
    if m.image.dynamic is None or latent == m.latent_shape:
        return m.image_shape
    _, h, w = m.latent_shape
    return (m.image.channels, latent[1] * m.image.height // h, latent[2] * m.image.width // w)


def _image_item_bytes(
    model: ServedModel, image_dtype: str, return_png: bool, latent: tuple[int, ...] = ()
) -> int:
    image = _image_for_latent(model, latent or model.latent_shape)
    itemsize = 1 if image_dtype == "uint8" else 4
    return image_bytes(image, itemsize) + (png_bytes_bound(image) if return_png else 0)


def _shape_hint(model: ServedModel, shape: tuple[int, ...]) -> str:
    c = model.manifest.image.channels
    if len(shape) == 4 and shape[1] != c and shape[3] == c:
        return "; channels come first (N x C x H x W), not last"
    if len(shape) == 4 and shape[1] != c:
        return f"; these images have {shape[1]} channels, the model {c}"
    return ""


def check_output(arrays: dict[str, Float32Array | None], inputs: str) -> None:
    """Finite inputs far outside the training range (e.g. pixels of 1e38) overflow in the
    graph; answer that as the input problem it is, never with NaN/Inf results.
    `inputs` is "images" or "latents"."""
    for name, array in arrays.items():
        if array is not None and not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise invalid_argument(
                f"{name}: {bad} output values came out NaN or infinite for these {inputs}; "
                f"the model expects {INPUT_RANGES[inputs]}"
            )
