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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from latentserve.image_spec import IMAGE_BYTES, IMAGE_SHAPE, PNG_BYTES_BOUND
from latentserve.priors import PRIOR_NAMES, PriorName
from latentserve.sampling import MAX_TEMPERATURE, new_seed
from serving.core.errors import invalid_argument, resource_exhausted
from serving.core.images import decode_image
from serving.core.model import SampleChunk, ServedModel
from serving.core.repository import ModelRepository
from serving.process.settings import ServerSettings

Float32Array = npt.NDArray[np.float32]

INPUT_RANGES = {
    "images": "pixels in [0, 1]",
    "latents": "latents of the size its prior produces (see GetModel)",
}
# Bytes of a response around its tensors (names, versions, seeds, field tags).
RESPONSE_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class EncodeRequest:
    model: ServedModel
    images: Float32Array  # N x 1 x 28 x 28, pixels in [0, 1]
    z_seed: int | None  # seed of a posterior sample z (VAE only); None: no sample

    @property
    def rows(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class DecodeRequest:
    model: ServedModel
    latents: Float32Array  # N x D, finite
    return_png: bool = False

    @property
    def rows(self) -> int:
        return int(self.latents.shape[0])


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

    def chunks(self, deadline: float | None = None) -> AsyncIterator[SampleChunk]:
        """Run it: the model's draws and decoded images, `chunk_size` rows at a time."""
        return self.model.sample_chunks(
            self.count, self.chunk_size, self.prior, self.temperature, self.seed, deadline
        )

    @property
    def item_bytes(self) -> int:
        """Upper bound on the response bytes one sampled image adds."""
        return (
            IMAGE_BYTES
            + (4 * self.model.latent_dim if self.return_latents else 0)
            + (PNG_BYTES_BOUND if self.return_png else 0)
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
        images: Float32Array,
        *,
        sample_z: bool = False,
        seed: int | None = None,
    ) -> EncodeRequest:
        """`images`: N x 28 x 28 or N x 1 x 28 x 28 float32 grey levels in [0, 1]."""
        shape = tuple(images.shape)
        if not (
            (len(shape) == 3 and shape[1:] == IMAGE_SHAPE[1:])
            or (len(shape) == 4 and shape[1:] == IMAGE_SHAPE)
        ):
            raise invalid_argument(
                f"images: shape {list(shape)} is not allowed; send N x 28 x 28 or "
                "N x 1 x 28 x 28 float32"
            )
        self._check_batch(shape[0], "images")
        check_pixels(images)
        return self._encode(model, images.reshape(shape[0], *IMAGE_SHAPE), sample_z, seed)

    async def encode_files(
        self,
        model: ServedModel,
        files: Sequence[bytes],
        *,
        resize: bool = False,
        sample_z: bool = False,
        seed: int | None = None,
    ) -> EncodeRequest:
        """`files`: PNG or JPEG images, 28 x 28 unless `resize`; decoded to grey levels."""
        self._check_batch(len(files), "encoded_images")
        s = self._settings

        def decode_all() -> Float32Array:
            decoded = [
                decode_image(
                    data,
                    index=i,
                    resize=resize,
                    max_bytes=s.max_image_bytes,
                    max_pixels=s.max_image_pixels,
                )
                for i, data in enumerate(files)
            ]
            return np.stack(decoded).reshape(len(files), *IMAGE_SHAPE)

        # Pillow decoding (and resizing) would stall every other call on the event loop.
        images = await asyncio.to_thread(decode_all)
        return self._encode(model, images, sample_z, seed)

    def _encode(
        self, model: ServedModel, images: Float32Array, sample_z: bool, seed: int | None
    ) -> EncodeRequest:
        n = int(images.shape[0])
        # Each row answers latents, log_var and z, D float32 each.
        self._check_response_size(n, 3 * 4 * model.latent_dim, "Encode")
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
        self, model: ServedModel, latents: Float32Array | None, *, return_png: bool = False
    ) -> DecodeRequest:
        """`latents`: N x D float32 (D = the model's latent_dim), finite."""
        d = model.latent_dim
        if latents is None:
            raise invalid_argument(f"latents: missing; send N x {d} float32")
        if latents.ndim != 2 or latents.shape[1] != d:
            raise invalid_argument(
                f"latents: shape {list(latents.shape)} is not allowed; model {model.name!r} "
                f"takes N x {d} float32 (latent_dim {d})"
            )
        self._check_batch(latents.shape[0], "latents")
        check_finite(latents, "latents")
        per_item = IMAGE_BYTES + (PNG_BYTES_BOUND if return_png else 0)
        self._check_response_size(int(latents.shape[0]), per_item, "Decode")
        return DecodeRequest(model, latents, return_png)

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
            limit=limit, method=method, hint=hint,
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
        method: str = "SampleRandomStream",
    ) -> SampleRequest:
        """`count` images answered `chunk_size` at a time (0: the server's chunk size)."""
        largest = self._settings.stream_chunk_size
        # Larger chunk requests are clamped (documented): the server bounds message size.
        chunk = min(chunk_size or largest, largest)
        request = self._sample(
            model, count, chunk, prior, temperature, seed, return_latents, return_png,
            limit=self._settings.max_stream_samples, method=method, hint="",
        )  # fmt: skip
        self._check_response_size(chunk, request.item_bytes, "chunk_size")
        return request

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
        raise invalid_argument(f"{what}: {bad} values are NaN or infinite; all must be finite")


def check_pixels(images: Float32Array) -> None:
    """Grey levels outside [0, 1] (typically 0..255 bytes sent as floats) would encode to
    meaningless latents without any error, so they are refused with a hint."""
    lo, hi = float(images.min()), float(images.max())
    if lo >= 0.0 and hi <= 1.0:  # False for NaN as well
        return
    check_finite(images, "images")
    hint = "; divide 8-bit grey levels by 255" if 1.0 < hi <= 255.0 and lo >= 0.0 else ""
    raise invalid_argument(
        f"images: pixel values span [{lo:g}, {hi:g}]; allowed are float32 grey levels "
        f"in [0, 1]{hint}"
    )


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
