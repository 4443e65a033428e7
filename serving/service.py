"""The gRPC servicer: validates requests, converts protobuf <-> numpy, calls the model API.

Every RPC runs inside `_rpc`, which turns a ServingError into the matching gRPC status,
records the request metrics, and refuses new calls while the server drains. Nothing here
loads models, batches or runs onnxruntime; see registry.py, model.py and batching.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.image_spec import IMAGE_BYTES, IMAGE_SHAPE, PNG_BYTES_BOUND
from latentserve.priors import PRIOR_TO_PROTO as NAME_TO_PRIOR
from latentserve.priors import PROTO_TO_PRIOR as PRIOR_TO_NAME
from latentserve.priors import PriorName
from latentserve.sampling import MAX_TEMPERATURE, new_seed
from latentserve.tensors import TensorError, array_to_tensor, tensor_to_array

from .errors import ServingError, invalid_argument, resource_exhausted, unavailable
from .images import decode_image, encode_pngs
from .metrics import Metrics
from .model import ServedModel, monotonic_deadline
from .registry import ModelEntry, ModelRegistry, ModelState
from .settings import ServerSettings

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]
Context = grpc.aio.ServicerContext[Any, Any]

STATE_TO_PROTO = {
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
    ModelState.LOADING: pb.MODEL_STATE_UNSPECIFIED,
}
UNKNOWN_MODEL_LABEL = "<unknown>"
INPUT_RANGES = {
    "images": "pixels in [0, 1]",
    "latents": "latents of the size its prior produces (see GetModel)",
}
# A call cancelled this close to its deadline was cancelled by it (see `_rpc`).
DEADLINE_SLACK_S = 0.1
# Error messages stay well inside gRPC's default 8 KiB metadata limit, even percent-encoded.
MAX_ERROR_MESSAGE_BYTES = 2000


@dataclass
class _CallRecord:
    """What an RPC reports to the metrics once it ends."""

    model: str
    samples: int = 0


class AutoencoderServicer(pb_grpc.AutoencoderServicer):
    def __init__(self, registry: ModelRegistry, settings: ServerSettings, metrics: Metrics) -> None:
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self.draining = False
        # SampleRandomStream calls in progress (bounded by max_concurrent_streams).
        self.active_streams = 0
        # Calls accepted and not yet finished; shutdown waits for them (see `drain`).
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls (UNAVAILABLE) and wait up to `timeout` seconds for the accepted
        ones to finish; True when none is left."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _rpc(self, method: str, model: str, context: Context) -> AsyncIterator[_CallRecord]:
        record = _CallRecord(model=model or self._registry.default_model or UNKNOWN_MODEL_LABEL)
        start = time.perf_counter()
        code = "OK"
        recorded = False

        def observe(code: str) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self._metrics.observe_request(
                    record.model, method, code, time.perf_counter() - start, record.samples
                )

        try:
            if self.draining:
                # The model name is unchecked here: keep it out of the metric labels.
                record.model = UNKNOWN_MODEL_LABEL
                raise unavailable("server is shutting down; retry on another instance")
            self.in_flight += 1
            self._idle.clear()
            try:
                yield record
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()
        except (ServingError, TensorError) as e:
            if isinstance(e, TensorError):
                e = invalid_argument(str(e))
            code = e.code.name
            if e.code is grpc.StatusCode.NOT_FOUND:
                record.model = UNKNOWN_MODEL_LABEL  # keep label cardinality bounded
            # abort() sends the status at once: count the call first, so a client that
            # reads the metrics right after its error sees it.
            observe(code)
            await context.abort(e.code, bounded(e.message))
        except (asyncio.CancelledError, GeneratorExit):
            remaining = context.time_remaining()
            # The client's own timer fires first and cancels the call a little before the
            # server's clock reaches the deadline; count that as the deadline it was.
            expired = remaining is not None and remaining <= DEADLINE_SLACK_S
            code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = "ABORTED"
            raise
        except Exception as e:
            code = "INTERNAL"
            log.exception("%s failed", method)
            observe(code)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"
            )
        finally:
            observe(code)

    def _model(self, name: str, record: _CallRecord) -> ServedModel:
        model = self._registry.resolve(name)
        record.model = model.name
        return model

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
        # 1 KiB covers the fields around the tensors.
        if n * bytes_per_item + 1024 > limit:
            raise resource_exhausted(
                f"{what}: the response for {n} items would be about {n * bytes_per_item} bytes, "
                f"more than the server's max_message_bytes ({limit}); split the request"
            )

    @staticmethod
    def _check_finite(array: Float32Array, what: str) -> None:
        if not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise invalid_argument(f"{what}: {bad} values are NaN or infinite; all must be finite")

    @classmethod
    def _check_pixels(cls, images: Float32Array) -> None:
        """Grey levels outside [0, 1] (typically 0..255 bytes sent as floats) would encode to
        meaningless latents without any error, so they are refused with a hint."""
        lo, hi = float(images.min()), float(images.max())
        if lo >= 0.0 and hi <= 1.0:  # False for NaN as well
            return
        cls._check_finite(images, "images")
        hint = "; divide 8-bit grey levels by 255" if 1.0 < hi <= 255.0 and lo >= 0.0 else ""
        raise invalid_argument(
            f"images: pixel values span [{lo:g}, {hi:g}]; allowed are float32 grey levels "
            f"in [0, 1]{hint}"
        )

    @staticmethod
    def _check_output(arrays: dict[str, Float32Array | None], inputs: str) -> None:
        """Finite inputs far outside the training range (e.g. pixels of 1e38) overflow in
        the graph; answer that as the input problem it is, never with NaN/Inf results."""
        for name, array in arrays.items():
            if array is not None and not np.isfinite(array).all():
                bad = int(np.count_nonzero(~np.isfinite(array)))
                raise invalid_argument(
                    f"{name}: {bad} output values came out NaN or infinite for these {inputs}; "
                    f"the model expects {INPUT_RANGES[inputs]}"
                )

    # -- Encode -----------------------------------------------------------------------------

    async def Encode(self, request: pb.EncodeRequest, context: Context) -> pb.EncodeResponse:
        async with self._rpc("Encode", request.model, context) as record:
            model = self._model(request.model, record)
            images = await self._encode_inputs(request)
            record.samples = int(images.shape[0])
            self._check_response_size(record.samples, 3 * 4 * model.latent_dim, "Encode")
            if request.sample_z and not model.is_vae:
                raise invalid_argument(
                    f"sample_z: model {model.name!r} is a plain autoencoder (kind ae) with no "
                    "posterior to sample; sample_z is allowed for VAE models only"
                )
            seed = (
                (request.seed if request.HasField("seed") else new_seed())
                if request.sample_z
                else 0
            )
            result = await model.encode(
                images,
                monotonic_deadline(context.time_remaining()),
                z_seed=seed if request.sample_z else None,
            )
            self._check_output(
                {"latents": result.latents, "log_var": result.log_var, "z": result.z}, "images"
            )
            response = pb.EncodeResponse(
                model=model.name,
                model_version=model.manifest.version,
                latents=array_to_tensor(result.latents),
                seed=seed,
            )
            if result.log_var is not None:
                response.log_var.CopyFrom(array_to_tensor(result.log_var))
            if result.z is not None:
                response.z.CopyFrom(array_to_tensor(result.z))
            return response
        raise AssertionError("unreachable: _rpc aborts on error")

    async def _encode_inputs(self, request: pb.EncodeRequest) -> Float32Array:
        """The request's images as N x 1 x 28 x 28 float32, validated."""
        which = request.WhichOneof("input")
        if which == "images":
            images = tensor_to_array(request.images, "images")
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
            self._check_pixels(images)
            return images.reshape(shape[0], *IMAGE_SHAPE)
        if which == "encoded_images":
            files = list(request.encoded_images.data)
            self._check_batch(len(files), "encoded_images")
            s = self._settings
            resize = request.encoded_images.resize

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
            return await asyncio.to_thread(decode_all)
        raise invalid_argument("no input: set either images (a float32 tensor) or encoded_images")

    # -- Decode -----------------------------------------------------------------------------

    async def Decode(self, request: pb.DecodeRequest, context: Context) -> pb.DecodeResponse:
        async with self._rpc("Decode", request.model, context) as record:
            model = self._model(request.model, record)
            if not request.HasField("latents"):
                raise invalid_argument(f"latents: missing; send N x {model.latent_dim} float32")
            latents = tensor_to_array(request.latents, "latents")
            if latents.ndim != 2 or latents.shape[1] != model.latent_dim:
                raise invalid_argument(
                    f"latents: shape {list(latents.shape)} is not allowed; model {model.name!r} "
                    f"takes N x {model.latent_dim} float32 (latent_dim {model.latent_dim})"
                )
            self._check_batch(latents.shape[0], "latents")
            self._check_finite(latents, "latents")
            record.samples = int(latents.shape[0])
            self._check_response_size(
                record.samples,
                IMAGE_BYTES + (PNG_BYTES_BOUND if request.return_png else 0),
                "Decode",
            )
            images = await model.decode(latents, monotonic_deadline(context.time_remaining()))
            self._check_output({"images": images}, "latents")
            response = pb.DecodeResponse(
                model=model.name,
                model_version=model.manifest.version,
                images=array_to_tensor(images),
            )
            if request.return_png:
                response.png.extend(await asyncio.to_thread(encode_pngs, images))
            return response
        raise AssertionError("unreachable: _rpc aborts on error")

    # -- SampleRandom -----------------------------------------------------------------------

    def _sampling_args(
        self, request: pb.SampleRequest, model: ServedModel, limit: int, rpc: str
    ) -> tuple[PriorName, float, int]:
        if request.count < 1:
            raise invalid_argument("count: must be at least 1")
        if request.count > limit:
            hint = (
                "; use SampleRandomStream for more"
                if rpc == "SampleRandom" and limit < self._settings.max_stream_samples
                else ""
            )
            raise invalid_argument(
                f"count: {request.count} is more than {rpc} allows ({limit}){hint}"
            )
        if request.prior == pb.PRIOR_UNSPECIFIED:
            prior = model.default_prior
        elif request.prior in PRIOR_TO_NAME:
            prior = PRIOR_TO_NAME[request.prior]
        else:
            raise invalid_argument(
                f"prior: unknown value {request.prior}; use one of "
                + ", ".join(pb.Prior.Name(v) for v in pb.Prior.values())
            )
        temperature = 1.0
        if request.HasField("temperature"):
            temperature = float(request.temperature)
            if not (np.isfinite(temperature) and 0.0 < temperature <= MAX_TEMPERATURE):
                raise invalid_argument(
                    f"temperature: {temperature} is out of range; allowed 0 < t <= {MAX_TEMPERATURE:g}"
                )
        seed = request.seed if request.HasField("seed") else new_seed()
        return prior, temperature, seed

    async def _sample_response(
        self,
        request: pb.SampleRequest,
        model: ServedModel,
        seed: int,
        prior: PriorName,
        offset: int,
        latents: Float32Array,
        images: Float32Array,
    ) -> pb.SampleResponse:
        response = pb.SampleResponse(
            model=model.name,
            model_version=model.manifest.version,
            images=array_to_tensor(images),
            seed=seed,
            offset=offset,
            prior=NAME_TO_PRIOR[prior],
        )
        if request.return_latents:
            response.latents.CopyFrom(array_to_tensor(latents))
        if request.return_png:
            response.png.extend(await asyncio.to_thread(encode_pngs, images))
        return response

    async def SampleRandom(self, request: pb.SampleRequest, context: Context) -> pb.SampleResponse:
        async with self._rpc("SampleRandom", request.model, context) as record:
            model = self._model(request.model, record)
            limit = self._settings.max_samples_per_request
            prior, temperature, seed = self._sampling_args(request, model, limit, "SampleRandom")
            self._check_response_size(
                request.count, sample_item_bytes(request, model), "SampleRandom"
            )
            deadline = monotonic_deadline(context.time_remaining())
            chunks = [
                chunk
                async for chunk in model.sample_chunks(
                    request.count, request.count, prior, temperature, seed, deadline
                )
            ]
            (chunk,) = chunks
            record.samples = request.count
            return await self._sample_response(
                request, model, seed, prior, 0, chunk.latents, chunk.images
            )
        raise AssertionError("unreachable: _rpc aborts on error")

    async def SampleRandomStream(
        self, request: pb.SampleRequest, context: Context
    ) -> AsyncIterator[pb.SampleResponse]:
        async with self._rpc("SampleRandomStream", request.model, context) as record:
            model = self._model(request.model, record)
            limit = self._settings.max_stream_samples
            prior, temperature, seed = self._sampling_args(
                request, model, limit, "SampleRandomStream"
            )
            largest = self._settings.stream_chunk_size
            # Larger chunk requests are clamped (documented): the server bounds message size.
            chunk_size = min(request.chunk_size or largest, largest)
            self._check_response_size(chunk_size, sample_item_bytes(request, model), "chunk_size")
            most = self._settings.max_concurrent_streams
            if self.active_streams >= most:
                raise resource_exhausted(
                    f"SampleRandomStream: {self.active_streams} streams already running "
                    f"(max_concurrent_streams {most}); retry with backoff"
                )
            self.active_streams += 1
            try:
                deadline = monotonic_deadline(context.time_remaining())
                async for chunk in model.sample_chunks(
                    request.count, chunk_size, prior, temperature, seed, deadline
                ):
                    yield await self._sample_response(
                        request, model, seed, prior, chunk.offset, chunk.latents, chunk.images
                    )
                    record.samples += int(chunk.images.shape[0])
            finally:
                self.active_streams -= 1

    # -- ListModels / GetModel --------------------------------------------------------------

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        async with self._rpc("ListModels", "", context):
            return pb.ListModelsResponse(
                models=[model_info(e) for e in self._registry.entries],
                default_model=self._registry.default_model,
            )
        raise AssertionError("unreachable: _rpc aborts on error")

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.ModelInfo:
        async with self._rpc("GetModel", request.model, context) as record:
            entry = self._registry.get_entry(request.model)
            record.model = entry.name
            return model_info(entry)
        raise AssertionError("unreachable: _rpc aborts on error")


def bounded(message: str, limit: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """`message` cut to `limit` UTF-8 bytes. gRPC sends it percent-encoded in a trailer
    (up to 3 bytes per byte) and a client drops trailers over 16 KiB, turning a helpful
    NOT_FOUND that echoes a 100 kB model name into an opaque RESOURCE_EXHAUSTED."""
    data = message.encode("utf-8")
    if len(data) <= limit:
        return message
    # Keep both ends: the start says what was wrong, the end often says what is allowed.
    half = limit // 2
    head = data[:half].decode("utf-8", "ignore")
    tail = data[-half:].decode("utf-8", "ignore")
    return f"{head} ...[{len(data) - 2 * half} bytes cut]... {tail}"


def sample_item_bytes(request: pb.SampleRequest, model: ServedModel) -> int:
    """Upper bound on the response bytes one sampled image adds."""
    return (
        IMAGE_BYTES
        + (4 * model.latent_dim if request.return_latents else 0)
        + (PNG_BYTES_BOUND if request.return_png else 0)
    )


def model_info(entry: ModelEntry) -> pb.ModelInfo:
    info = pb.ModelInfo(name=entry.name, state=STATE_TO_PROTO[entry.state], error=entry.error)
    m = entry.manifest
    if m is not None:
        info.version = m.version
        info.kind = m.kind
        info.latent_dim = m.latent_dim
        info.image_shape.extend(m.image.shape)
        info.description = m.description
        info.default_prior = NAME_TO_PRIOR[m.prior.default]
        info.metrics.update(m.metrics)
        info.encoder_sha256 = m.encoder.sha256
        info.decoder_sha256 = m.decoder.sha256
        info.provenance_json = json.dumps(m.provenance, sort_keys=True)
    if entry.model is not None:
        info.providers.extend(entry.model.providers)
    return info
