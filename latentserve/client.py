"""Python client for latentserve: numpy arrays in, numpy arrays out.

Installs alone (`pip install latentserve`: numpy, grpcio and protobuf), so nothing here
imports the server (serving/) or the model-folder manifest (pydantic).

    from latentserve.client import LatentClient

    with LatentClient("127.0.0.1:50051") as client:
        images = client.sample(16, model="mnist-vae", seed=7).images   # 16 x C x H x W
        codes = client.encode(images).latents                          # 16 x D
        again = client.decode(codes).images

`AsyncLatentClient` has the same methods as coroutines. Every failure raises
:class:`LatentServeError` with the gRPC status `code` and the server's message. Large
requests are split for you: `sample` switches to the server-streaming RPC above
`max_unary_samples`, and `encode`/`decode` send at most `batch_size` rows per call, so
message-size limits never show.

Many replicas, balanced by the client (round_robin, per call), and retries:

    LatentClient("dns:///latentserve-headless:50051")          # every address DNS gives
    LatentClient("ipv4:10.0.0.1:50051,10.0.0.2:50051")         # a fixed list
    LatentClient("host:50051", channels=4)  # 4 connections: a server with 4 worker processes

Calls that fail unrun (UNAVAILABLE: a replica draining, refusing or gone; CANCELLED from a
server closing its listener) are retried by gRPC
up to 3 attempts (`retry=RetryPolicy(...)`, or None for none); which calls and why is in
:mod:`latentserve.channels`. With replicas, `health_check=True` also skips one whose health
says NOT_SERVING (draining), before it refuses anything.

A server with TLS and/or token auth (see docs/reliability.md):

    tls = TlsConfig.from_files(ca="ca.pem")                    # mTLS: cert=..., key=...
    with LatentClient("host:50051", tls=tls, token="s3cret") as client: ...
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
import numpy as np
import numpy.typing as npt

from ._proto.grpc_health.v1 import health_pb2, health_pb2_grpc
from ._proto.latentserve.v1 import autoencoder_pb2 as pb
from ._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from .channels import (
    DEFAULT_RETRY,
    ChannelOption,
    RetryPolicy,
    RoundRobin,
    aio_channels,
    sync_channels,
)
from .channels import channel_options as _channel_options  # a parameter's name below
from .priors import PRIOR_NAMES, PRIOR_TO_PROTO, PROTO_TO_PRIOR, PriorName, is_prior_name
from .tensors import array_to_tensor, tensor_to_array
from .wording import counted

Float32Array = npt.NDArray[np.float32]
PriorArg = PriorName | None

IMAGE_DTYPES = {"float32": pb.DATA_TYPE_FLOAT32, "uint8": pb.DATA_TYPE_UINT8}
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
UINT32_MAX = 2**32 - 1
STREAM_SECONDS_PER_SAMPLE = 0.01

_STATES = {
    pb.MODEL_STATE_READY: "READY",
    pb.MODEL_STATE_FAILED: "FAILED",
    pb.MODEL_STATE_LOADING: "LOADING",
    pb.MODEL_STATE_UNLOADING: "UNLOADING",
    pb.MODEL_STATE_UNAVAILABLE: "UNAVAILABLE",
}


class LatentServeError(Exception):
    """A failed call: `code` is the grpc.StatusCode, `message` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class EncodeResult:
    latents: Float32Array  # N x D or N x C x h x w (VAE: posterior mean)
    log_var: Float32Array | None  # same shape, VAE only
    z: Float32Array | None  # same shape, when sample_z was asked for
    seed: int  # the seed used for z (0 when not sampled)
    model: str
    model_version: str = ""  # the repository version that answered


@dataclass(frozen=True)
class DecodeResult:
    # N x C x H x W (the model's image shape) float32 in [0, 1], or uint8 0..255 when
    # image_dtype="uint8" was asked for
    images: npt.NDArray[Any]
    png: list[bytes]  # N PNG files when return_png was set, else empty
    model: str
    model_version: str = ""  # the repository version that answered


@dataclass(frozen=True)
class SampleResult:
    images: npt.NDArray[Any]  # N x C x H x W, float32 in [0, 1] (or uint8 on request)
    latents: Float32Array | None  # N x latent shape, when return_latents was set
    seed: int
    prior: str  # the prior actually used, e.g. "standard_normal"
    model: str
    model_version: str = ""  # the repository version that answered


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE or FAILED
    reason: str = ""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    state: str  # READY, FAILED, LOADING or UNAVAILABLE
    version: str = ""
    kind: str = ""
    latent_dim: int = 0  # values per image: D, or C * h * w
    image_shape: tuple[int, ...] = ()  # C x H x W (nominal size when dynamic)
    latent_shape: tuple[int, ...] = ()  # (D,) or (C, h, w)
    description: str = ""
    error: str = ""
    providers: tuple[str, ...] = ()
    default_prior: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    encoder_sha256: str = ""
    decoder_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    graph_dtype: str = ""  # "float32" or "float16" (the wire is float32 either way)
    # Dynamic sizes: (multiple, min, max) for height and width; None when fixed.
    dynamic_sizes: tuple[int, int, int] | None = None
    versions: tuple[VersionStatus, ...] = ()  # every version in the repository, newest first


# -- conversions shared by the sync and async clients -------------------------------------------


def _decoded(tensor: pb.Tensor) -> npt.NDArray[Any]:
    # A writable copy, as callers may edit results in place (the view is read-only).
    return tensor_to_array(tensor, "response tensor", allow_uint8=True).copy()


def _as_images(images: npt.ArrayLike) -> npt.NDArray[Any]:
    """N x C x H x W, N x H x W or one H x W (grey) -> float32, or uint8 as is (the server
    scales 0..255 to [0, 1]; uint8 is 4x smaller on the wire). Shapes are the server's to
    check: it knows the model's."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        array = array.astype(np.float32, copy=False)
    return array


def _encode_requests(
    images: npt.ArrayLike | Sequence[bytes],
    model: str,
    sample_z: bool,
    seed: int | None,
    resize: bool,
    batch_size: int,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[pb.EncodeRequest]:
    encoded = isinstance(images, list | tuple) and all(isinstance(i, bytes) for i in images)
    items: Any = list(images) if encoded else _as_images(images)  # type: ignore[arg-type]
    if not encoded and len(items):
        # Large images: as many rows as fit one request message.
        batch_size = _rows_that_fit(batch_size, items[0].nbytes, max_message_bytes)
    # A sampled z is drawn from one seed over the whole batch; splitting would change it.
    step = len(items) if sample_z or len(items) == 0 else batch_size
    requests = []
    for start in range(0, max(len(items), 1), max(step, 1)):
        part = items[start : start + step]
        request = pb.EncodeRequest(model=model, sample_z=sample_z)
        if seed is not None:
            request.seed = seed
        if encoded:
            request.encoded_images.data.extend(part)
            request.encoded_images.resize = resize
        else:
            request.images.CopyFrom(array_to_tensor(part))
        requests.append(request)
    return requests


# Room in a message for everything but its tensors (names, shapes, field tags).
MESSAGE_OVERHEAD_BYTES = 64 << 10


def _rows_that_fit(rows: int, row_bytes: int, max_message_bytes: int) -> int:
    """At most `rows`, and no more than one message of `max_message_bytes` holds."""
    return max(1, min(rows, (max_message_bytes - MESSAGE_OVERHEAD_BYTES) // max(row_bytes, 1)))


def _answer_row_bytes(info: ModelInfo, image_dtype: str, return_png: bool) -> int:
    """Bytes one image adds to a Decode or SampleRandom answer (PNG: at most the raw bytes
    plus framing), from the model's image shape."""
    values = math.prod(info.image_shape) if info.image_shape else 0
    itemsize = 1 if image_dtype == "uint8" else 4
    return itemsize * values + (values + 2048 if return_png else 0) + 4 * info.latent_dim


def _too_large(error: LatentServeError) -> bool:
    """The server refused an answer that would exceed its message size (not a full queue)."""
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_message_bytes" in error.message


def _encode_result(responses: list[pb.EncodeResponse]) -> EncodeResult:
    def joined(name: str) -> Float32Array | None:
        if not responses[0].HasField(name):  # type: ignore[arg-type]
            return None
        return np.concatenate([_decoded(getattr(r, name)) for r in responses])

    latents = joined("latents")
    assert latents is not None
    first = responses[0]
    return EncodeResult(
        latents, joined("log_var"), joined("z"), int(first.seed), first.model, first.model_version
    )


def _image_dtype(image_dtype: str) -> pb.DataType.ValueType:
    if image_dtype not in IMAGE_DTYPES:
        raise ValueError(f"image_dtype must be one of {list(IMAGE_DTYPES)}, got {image_dtype!r}")
    return IMAGE_DTYPES[image_dtype]


def _decode_requests(
    latents: npt.ArrayLike, model: str, return_png: bool, batch_size: int, image_dtype: str
) -> list[pb.DecodeRequest]:
    """latents: N x D or N x C x h x w (one flat latent D is taken as 1 x D)."""
    array = np.asarray(latents, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    dtype = _image_dtype(image_dtype)
    return [
        pb.DecodeRequest(
            model=model,
            latents=array_to_tensor(array[i : i + batch_size]),
            return_png=return_png,
            image_dtype=dtype,
        )
        for i in range(0, max(len(array), 1), batch_size)
    ]


def _set_version(requests: Sequence[pb.EncodeRequest | pb.DecodeRequest], version: int) -> None:
    """Pin every request of one call to `version`: without it, a call split into several
    requests could straddle a swap and be answered by two versions."""
    for request in requests:
        request.version = version


def _decode_result(responses: list[pb.DecodeResponse]) -> DecodeResult:
    images = np.concatenate([_decoded(r.images) for r in responses])
    first = responses[0]
    pngs = [p for r in responses for p in r.png]
    return DecodeResult(images, pngs, first.model, first.model_version)


def _sample_request(
    count: int,
    model: str,
    seed: int | None,
    prior: PriorArg,
    temperature: float | None,
    return_latents: bool,
    return_png: bool = False,
    image_dtype: str = "float32",
) -> pb.SampleRequest:
    if prior is not None and not is_prior_name(prior):
        raise ValueError(f"prior must be one of {list(PRIOR_NAMES)} or None, got {prior!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count > UINT32_MAX:
        raise ValueError(f"count must fit the wire's uint32 (<= {UINT32_MAX}), got {count}")
    request = pb.SampleRequest(
        model=model,
        count=count,
        prior=PRIOR_TO_PROTO[prior] if prior else pb.PRIOR_UNSPECIFIED,
        return_latents=return_latents,
        return_png=return_png,
        image_dtype=_image_dtype(image_dtype),
    )
    if seed is not None:
        request.seed = seed
    if temperature is not None:
        request.temperature = temperature
    return request


class _SampleAssembler:
    """Collects streamed chunks into one result (preallocated; chunks land at their offset)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.images: npt.NDArray[Any] | None = None
        self.latents: Float32Array | None = None
        self.first: pb.SampleResponse | None = None
        self.received = 0

    def add(self, response: pb.SampleResponse) -> None:
        images = _decoded(response.images)
        if self.first is None:
            self.first = response
            self.images = np.empty((self.count, *images.shape[1:]), dtype=images.dtype)
        assert self.images is not None
        start = int(response.offset)
        self.images[start : start + len(images)] = images
        if response.HasField("latents"):
            latents = _decoded(response.latents)
            if self.latents is None:
                self.latents = np.empty((self.count, *latents.shape[1:]), dtype=np.float32)
            self.latents[start : start + len(latents)] = latents
        self.received += len(images)

    def result(self) -> SampleResult:
        if self.first is None or self.images is None or self.received != self.count:
            raise LatentServeError(
                grpc.StatusCode.DATA_LOSS,
                f"stream ended after {self.received} of {counted(self.count, 'sample')}",
            )
        first = self.first
        return SampleResult(
            self.images,
            self.latents,
            int(first.seed),
            PROTO_TO_PRIOR.get(first.prior, ""),
            first.model,
            first.model_version,
        )


def _model_info(info: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=info.name,
        state=_STATES.get(info.state, "LOADING"),
        version=info.version,
        kind=info.kind,
        latent_dim=info.latent_dim,
        image_shape=tuple(info.image_shape),
        latent_shape=tuple(info.latent_shape),
        graph_dtype=info.graph_dtype,
        dynamic_sizes=(
            (info.size_multiple, info.min_size, info.max_size) if info.size_multiple else None
        ),
        description=info.description,
        error=info.error,
        providers=tuple(info.providers),
        default_prior=PROTO_TO_PRIOR.get(info.default_prior, ""),
        metrics=dict(info.metrics),
        encoder_sha256=info.encoder_sha256,
        decoder_sha256=info.decoder_sha256,
        provenance=json.loads(info.provenance_json) if info.provenance_json else {},
        versions=tuple(
            VersionStatus(v.version, _STATES.get(v.state, "LOADING"), v.reason)
            for v in info.versions
        ),
    )


def _error(e: grpc.RpcError) -> LatentServeError:
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    details = e.details() if callable(getattr(e, "details", None)) else str(e)
    return LatentServeError(code, details or code.name)


@dataclass(frozen=True)
class TlsConfig:
    """TLS towards the server. All PEM bytes; None means: trust the system's CAs, and
    present no client certificate (mutual TLS needs `certificate_chain` and `private_key`)."""

    root_certificates: bytes | None = None  # CA(s) that signed the server certificate
    certificate_chain: bytes | None = None  # client certificate (mutual TLS)
    private_key: bytes | None = None  # its key
    server_name: str | None = None  # name to check the certificate against, if not the host

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        if (cert is None) != (key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    # Sent as plain metadata rather than call credentials, which grpc withholds on
    # plaintext channels (a TLS-terminating proxy in front of the server is common).
    return (("authorization", f"Bearer {token}"),) if token else None


T = TypeVar("T")


class _ClientBase:
    """What both clients share: their arguments, checked once, and the channel options.
    Each subclass opens its kind of channels (`_open`)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = 30.0,
        *,
        max_unary_samples: int = 1024,
        batch_size: int = 1024,
        chunk_size: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: TlsConfig | None = None,
        token: str | None = None,
        channels: int = 1,
        load_balancing: str | None = "round_robin",
        retry: RetryPolicy | None = DEFAULT_RETRY,
        health_check: bool = False,
        channel_options: Sequence[ChannelOption] = (),
    ) -> None:
        if max_unary_samples < 1 or batch_size < 1:
            raise ValueError("max_unary_samples and batch_size must be >= 1")
        self.target = target
        self.timeout = timeout
        self.max_unary_samples = max_unary_samples
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.max_message_bytes = max_message_bytes
        self.metadata = _auth_metadata(token)
        self.retry = retry
        self.options = _channel_options(
            max_message_bytes=max_message_bytes,
            load_balancing=load_balancing,
            retry=retry,
            health_check=health_check,
            server_name=tls.server_name if tls is not None else None,
            extra=channel_options,
        )
        self.credentials = tls.credentials() if tls is not None else None
        self._open(channels)

    def _open(self, channels: int) -> None:
        raise NotImplementedError

    def stream_timeout(self, count: int) -> float | None:
        # A deadline for the whole stream: the unary timeout plus STREAM_SECONDS_PER_SAMPLE
        # per sample. A conv decoder on a busy 2-core CPU decodes well under 1,000 images/s,
        # so 1 ms per sample was too tight; 10 ms gives a 100,000-sample stream ~17 minutes.
        if self.timeout is None:
            return None
        return self.timeout + count * STREAM_SECONDS_PER_SAMPLE


class LatentClient(_ClientBase):
    """Blocking client. Use as a context manager or call close(). Safe to share between
    threads. See the module docstring for targets, `channels`, balancing and retries."""

    def _open(self, channels: int) -> None:
        self.channels = sync_channels(self.target, channels, self.options, self.credentials)
        self._stubs = RoundRobin(
            [(pb_grpc.AutoencoderStub(c), health_pb2_grpc.HealthStub(c)) for c in self.channels]
        )

    @property
    def _stub(self) -> pb_grpc.AutoencoderStub:
        """The next channel's Autoencoder stub: each read moves one step round the K channels."""
        return self._stubs.next()[0]

    @property
    def _health(self) -> health_pb2_grpc.HealthStub:
        return self._stubs.next()[1]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            raise _error(e) from None

    def encode(
        self,
        images: npt.ArrayLike | Sequence[bytes],
        model: str = "",
        sample_z: bool = False,
        seed: int | None = None,
        resize: bool = False,
        version: int = 0,
    ) -> EncodeResult:
        """images: N x C x H x W array in the model's shape (N x H x W or one H x W image for
        a grey model), float32 in [0, 1] or uint8, or a list of PNG/JPEG files as bytes
        (`resize` scales them to the model's size) -> latents N x D or N x C x h x w (VAE:
        mean, log_var, optional z). `version`: the model's repository version (0 = the newest
        the server serves)."""
        requests = _encode_requests(
            images, model, sample_z, seed, resize, self.batch_size, self.max_message_bytes
        )
        _set_version(requests, version)
        return _encode_result([self._call(self._stub.Encode, r) for r in requests])

    def decode(
        self,
        latents: npt.ArrayLike,
        model: str = "",
        return_png: bool = False,
        image_dtype: str = "float32",
        version: int = 0,
    ) -> DecodeResult:
        """latents: N x D or N x C x h x w float32 -> images N x C x H x W, float32 in
        [0, 1] or uint8 with image_dtype="uint8" (and PNGs on request)."""
        rows = self.batch_size
        try:
            requests = _decode_requests(latents, model, return_png, rows, image_dtype)
            _set_version(requests, version)
            return _decode_result([self._call(self._stub.Decode, r) for r in requests])
        except LatentServeError as e:
            # Large images: the answer for batch_size rows would not fit one message; size
            # the calls from the model's image shape and try again.
            if not _too_large(e):
                raise
            row = _answer_row_bytes(self.get_model(model), image_dtype, return_png)
            rows = _rows_that_fit(rows, row, self.max_message_bytes)
            if rows >= self.batch_size:
                raise
        requests = _decode_requests(latents, model, return_png, rows, image_dtype)
        _set_version(requests, version)
        return _decode_result([self._call(self._stub.Decode, r) for r in requests])

    def sample(
        self,
        count: int,
        model: str = "",
        seed: int | None = None,
        prior: PriorArg = None,
        temperature: float | None = None,
        return_latents: bool = False,
        image_dtype: str = "float32",
        version: int = 0,
    ) -> SampleResult:
        """`count` random images (N x C x H x W; float32, or uint8 with image_dtype="uint8");
        same seed and arguments, same images."""
        request = _sample_request(
            count, model, seed, prior, temperature, return_latents, image_dtype=image_dtype
        )
        request.version = version
        assembler = _SampleAssembler(count)
        if count <= self.max_unary_samples:
            try:
                assembler.add(self._call(self._stub.SampleRandom, request))
                return assembler.result()
            except LatentServeError as e:
                # Large images: stream instead (the server sizes its chunks to fit).
                if not _too_large(e):
                    raise
        request.chunk_size = self.chunk_size
        try:
            for response in self._stub.SampleRandomStream(
                request, timeout=self.stream_timeout(count), metadata=self.metadata
            ):
                assembler.add(response)
        except grpc.RpcError as e:
            raise _error(e) from None
        return assembler.result()

    def list_models(self) -> list[ModelInfo]:
        return [
            _model_info(m) for m in self._call(self._stub.ListModels, pb.ListModelsRequest()).models
        ]

    def default_model(self) -> str:
        return str(self._call(self._stub.ListModels, pb.ListModelsRequest()).default_model)

    def get_model(self, name: str = "") -> ModelInfo:
        return _model_info(self._call(self._stub.GetModel, pb.GetModelRequest(model=name)))

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status of the server ("") or a model: SERVING, NOT_SERVING or
        SERVICE_UNKNOWN. Raises LatentServeError when the server cannot be reached."""
        try:
            response = self._health.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            error = _error(e)
            if error.code is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise error from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class AsyncLatentClient(_ClientBase):
    """asyncio client with the same methods and options as LatentClient, as coroutines.
    Create it inside the event loop that uses it."""

    def _open(self, channels: int) -> None:
        self.channels = aio_channels(self.target, channels, self.options, self.credentials)
        # The generated classes serve both channel kinds; the typed view is the async one.
        self._stubs = RoundRobin(
            [
                (
                    cast("pb_grpc.AutoencoderAsyncStub", pb_grpc.AutoencoderStub(c)),
                    cast("health_pb2_grpc.HealthAsyncStub", health_pb2_grpc.HealthStub(c)),
                )
                for c in self.channels
            ]
        )

    @property
    def _stub(self) -> pb_grpc.AutoencoderAsyncStub:
        """The next channel's Autoencoder stub: each read moves one step round the K channels."""
        return self._stubs.next()[0]

    @property
    def _health(self) -> health_pb2_grpc.HealthAsyncStub:
        return self._stubs.next()[1]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            raise _error(e) from None

    async def _call_all(self, method: Any, requests: Iterable[Any]) -> list[Any]:
        return [await self._call(method, r) for r in requests]

    async def encode(
        self,
        images: npt.ArrayLike | Sequence[bytes],
        model: str = "",
        sample_z: bool = False,
        seed: int | None = None,
        resize: bool = False,
        version: int = 0,
    ) -> EncodeResult:
        requests = _encode_requests(
            images, model, sample_z, seed, resize, self.batch_size, self.max_message_bytes
        )
        _set_version(requests, version)
        return _encode_result(await self._call_all(self._stub.Encode, requests))

    async def decode(
        self,
        latents: npt.ArrayLike,
        model: str = "",
        return_png: bool = False,
        image_dtype: str = "float32",
        version: int = 0,
    ) -> DecodeResult:
        rows = self.batch_size
        try:
            requests = _decode_requests(latents, model, return_png, rows, image_dtype)
            _set_version(requests, version)
            return _decode_result(await self._call_all(self._stub.Decode, requests))
        except LatentServeError as e:
            if not _too_large(e):
                raise
            row = _answer_row_bytes(await self.get_model(model), image_dtype, return_png)
            rows = _rows_that_fit(rows, row, self.max_message_bytes)
            if rows >= self.batch_size:
                raise
        requests = _decode_requests(latents, model, return_png, rows, image_dtype)
        _set_version(requests, version)
        return _decode_result(await self._call_all(self._stub.Decode, requests))

    async def sample(
        self,
        count: int,
        model: str = "",
        seed: int | None = None,
        prior: PriorArg = None,
        temperature: float | None = None,
        return_latents: bool = False,
        image_dtype: str = "float32",
        version: int = 0,
    ) -> SampleResult:
        request = _sample_request(
            count, model, seed, prior, temperature, return_latents, image_dtype=image_dtype
        )
        request.version = version
        assembler = _SampleAssembler(count)
        if count <= self.max_unary_samples:
            try:
                assembler.add(await self._call(self._stub.SampleRandom, request))
                return assembler.result()
            except LatentServeError as e:
                if not _too_large(e):
                    raise
        request.chunk_size = self.chunk_size
        try:
            stream = self._stub.SampleRandomStream(
                request, timeout=self.stream_timeout(count), metadata=self.metadata
            )
            async for response in stream:
                assembler.add(response)
        except grpc.RpcError as e:
            raise _error(e) from None
        return assembler.result()

    async def list_models(self) -> list[ModelInfo]:
        response = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return [_model_info(m) for m in response.models]

    async def default_model(self) -> str:
        response = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return str(response.default_model)

    async def get_model(self, name: str = "") -> ModelInfo:
        return _model_info(await self._call(self._stub.GetModel, pb.GetModelRequest(model=name)))

    async def health(self, service: str = "") -> str:
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            error = _error(e)
            if error.code is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise error from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
