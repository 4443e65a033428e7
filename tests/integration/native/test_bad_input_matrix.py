"""The bad-input matrix: every RPC x every class of bad request, each answered with its
documented status and a message naming the problem, and the server unharmed afterwards.

Every request travels as raw bytes through `channel.unary_unary` / `unary_stream` with
identity serializers, so the table can hold well-formed messages, messages no client
library would build (unknown enum values, uint32 maxima) and bytes that are no protobuf at
all, side by side. After each row the server's health must still be SERVING and a normal
Decode must still equal in-process onnxruntime. docs/reliability.md shows this table.
(test_bad_inputs.py checks the exact wording of many of these messages in detail.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from fixtures import bad_input
from fixtures.bad_input import bomb_png, gif, png, tensor
from fixtures.reference import Reference
from google.protobuf.message import Message

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve.client import LatentClient

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND

SERVICE = "/latentserve.v1.Autoencoder/"
STREAMING = {"SampleRandomStream"}
UINT32_MAX = 2**32 - 1


# -- request builders ------------------------------------------------------------------------


def encode(**fields) -> pb.EncodeRequest:
    return pb.EncodeRequest(**fields)


def images(*files: bytes, resize: bool = False) -> pb.EncodeRequest:
    return pb.EncodeRequest(encoded_images=pb.EncodedImages(data=list(files), resize=resize))


def decode(latents: pb.Tensor | None = None, **fields) -> pb.DecodeRequest:
    request = pb.DecodeRequest(**fields)
    if latents is not None:
        request.latents.CopyFrom(latents)
    return request


def sample(**fields) -> pb.SampleRequest:
    fields.setdefault("count", 2)
    return pb.SampleRequest(**fields)


GARBAGE = b"\xff\xfe\xfd not a protobuf \x00\x01"
# Field 1 (model, a string) holding bytes that are not UTF-8.
BAD_UTF8 = b"\x0a\x02\xff\xfe"
HUGE_NAME = "m" * 100_000
OVERSIZED = 5 << 20  # over the 4 MiB max_message_bytes


def truncated(message: Message) -> bytes:
    data = message.SerializeToString()
    return data[: len(data) // 2]


@dataclass(frozen=True)
class Case:
    rpc: str
    what: str
    request: Message | bytes | Callable[[], Message | bytes]
    code: grpc.StatusCode
    fragment: str  # must appear in the status message

    @property
    def id(self) -> str:
        return f"{self.rpc}: {self.what}"

    def payload(self) -> bytes:
        request = self.request() if callable(self.request) else self.request
        return request if isinstance(request, bytes) else request.SerializeToString()


# One row per line reads as the table it is.
# fmt: off
MATRIX = [
    # -- Encode: float tensors
    Case("Encode", "wrong shape 2x27x28", encode(images=tensor((2, 27, 28))), INVALID, "N x 28 x 28"),
    Case("Encode", "3 channels", encode(images=tensor((2, 3, 28, 28))), INVALID, "[2, 3, 28, 28]"),
    Case("Encode", "rank 2 (flattened)", encode(images=tensor((2, 784))), INVALID, "N x 1 x 28 x 28"),
    Case("Encode", "rank 5", encode(images=tensor((1, 1, 1, 28, 28))), INVALID, "not allowed"),
    Case("Encode", "rank 0 (no shape)", encode(images=pb.Tensor(raw_data=b"\0" * 4)), INVALID, "shape is empty"),
    Case("Encode", "bytes != 4 x prod(shape)", encode(images=pb.Tensor(shape=[1, 28, 28], raw_data=b"\0" * 100)), INVALID, "needs 3136"),
    Case("Encode", "negative dimension", encode(images=pb.Tensor(shape=[-1, 28, 28])), INVALID, "negative"),
    Case("Encode", "NaN pixel", encode(images=tensor((2, 28, 28), at=900, bad=np.nan)), INVALID, "NaN or infinite"),
    Case("Encode", "+Inf pixel", encode(images=tensor((2, 28, 28), at=0, bad=np.inf)), INVALID, "NaN or infinite"),
    Case("Encode", "-Inf pixel", encode(images=tensor((1, 1, 28, 28), at=5, bad=-np.inf)), INVALID, "NaN or infinite"),
    Case("Encode", "pixels of 3e38", encode(images=tensor((1, 28, 28), fill=3e38)), INVALID, "in [0, 1]"),
    Case("Encode", "pixels of -1e30 with sample_z", encode(images=tensor((1, 28, 28), fill=-1e30), sample_z=True), INVALID, "in [0, 1]"),
    Case("Encode", "0..255 grey levels as floats", encode(images=tensor((1, 28, 28), fill=255.0)), INVALID, "divide 8-bit grey levels by 255"),
    Case("Encode", "pixel just below 0", encode(images=tensor((1, 28, 28), at=3, bad=-0.01)), INVALID, "span [-0.01, "),
    Case("Encode", "empty batch", encode(images=tensor((0, 28, 28))), INVALID, "empty batch"),
    Case("Encode", "no input at all", encode(model="tiny-vae"), INVALID, "encoded_images"),
    Case("Encode", "batch over the limit", encode(images=tensor((9, 28, 28))), EXHAUSTED, "max_samples_per_request (8)"),
    Case("Encode", "unknown model", encode(model="nope", images=tensor((1, 28, 28))), NOT_FOUND, "available models: tiny-ae"),
    Case("Encode", "100 kB model name", encode(model=HUGE_NAME, images=tensor((1, 28, 28))), NOT_FOUND, "available models: tiny-ae"),
    Case("Encode", "sample_z on a plain AE", encode(model="tiny-ae", sample_z=True, images=tensor((1, 28, 28))), INVALID, "VAE models only"),
    # -- Encode: image files
    Case("Encode", "undecodable image", images(png(), b"hello, not an image"), INVALID, "encoded_images.data[1]: not a decodable"),
    Case("Encode", "GIF image", images(gif()), INVALID, "not a decodable PNG or JPEG"),
    Case("Encode", "empty image file", images(b""), INVALID, "empty"),
    Case("Encode", "truncated PNG", lambda: images(png(noise=True)[:400]), INVALID, "image file is truncated"),
    Case("Encode", "empty image list", images(), INVALID, "empty batch"),
    Case("Encode", "too many images", lambda: images(*[png()] * 9), EXHAUSTED, "max_samples_per_request"),
    Case("Encode", "image over max_image_bytes", lambda: images(png(90, 90, noise=True), resize=True), EXHAUSTED, "max_image_bytes (4096)"),
    Case("Encode", "image not 28 x 28", lambda: images(png(32, 30)), INVALID, "or set resize"),
    Case("Encode", "colour PNG to a grey model", lambda: images(png(mode="RGB", fill=(200, 30, 40))), INVALID, "takes grey 1 x 28 x 28 images"),
    Case("Encode", "3 channels to a grey model", encode(images=tensor((2, 3, 28, 28))), INVALID, "3 channels, the model 1"),
    Case("Encode", "resize over max_image_pixels", lambda: images(png(101, 100), resize=True), EXHAUSTED, "max_image_pixels (10000)"),
    Case("Encode", "decompression bomb, resize", lambda: images(bomb_png(2000, 2000), resize=True), EXHAUSTED, "4000000 pixels"),
    Case("Encode", "decompression bomb, no resize", lambda: images(bomb_png(2000, 2000)), INVALID, "2000 x 2000"),
    Case("Encode", "50000^2 bomb (Pillow's own guard)", lambda: images(bomb_png(50_000, 50_000)), EXHAUSTED, "max_image_pixels"),
    # -- Encode: the wire
    Case("Encode", "request over max_message_bytes", lambda: encode(images=pb.Tensor(shape=[1, 28, 28], raw_data=b"\0" * OVERSIZED)), EXHAUSTED, "larger than max"),
    Case("Encode", "garbage bytes", GARBAGE, INVALID, "not a valid protobuf message"),
    Case("Encode", "truncated protobuf", truncated(encode(images=tensor((2, 28, 28)))), INVALID, "not a valid protobuf message"),
    Case("Encode", "model name not UTF-8", BAD_UTF8, INVALID, "UTF-8"),
    # -- Decode
    Case("Decode", "latent size 3 for a 2-D model", decode(tensor((2, 3))), INVALID, "N x 2"),
    Case("Decode", "latent size 2 for an 8-D model", decode(tensor((2, 2)), model="tiny-vae-8"), INVALID, "latent_dim 8"),
    Case("Decode", "rank 1", decode(tensor((2,))), INVALID, "[2]"),
    Case("Decode", "rank 3", decode(tensor((2, 2, 1))), INVALID, "N x 2"),
    Case("Decode", "bytes != 4 x prod(shape)", decode(pb.Tensor(shape=[1, 2], raw_data=b"\0" * 7)), INVALID, "7 bytes"),
    Case("Decode", "NaN latent", decode(tensor((3, 2), at=4, bad=np.nan)), INVALID, "NaN or infinite"),
    Case("Decode", "Inf latent", decode(tensor((3, 2), at=1, bad=np.inf)), INVALID, "NaN or infinite"),
    Case("Decode", "empty batch", decode(tensor((0, 2))), INVALID, "empty batch"),
    Case("Decode", "batch over the limit", decode(tensor((9, 2))), EXHAUSTED, "max_samples_per_request"),
    Case("Decode", "latents missing", decode(model="tiny-vae"), INVALID, "latents: missing"),
    Case("Decode", "unknown model", decode(tensor((1, 2)), model="nope"), NOT_FOUND, "unknown model 'nope'"),
    Case("Decode", "request over max_message_bytes", lambda: decode(pb.Tensor(shape=[1, 2], raw_data=b"\0" * OVERSIZED)), EXHAUSTED, "larger than max"),
    Case("Decode", "garbage bytes", GARBAGE, INVALID, "not a valid protobuf message"),
    Case("Decode", "truncated protobuf", truncated(decode(tensor((50, 2)))), INVALID, "not a valid protobuf message"),
    # -- SampleRandom
    Case("SampleRandom", "count 0", sample(count=0), INVALID, "at least 1"),
    Case("SampleRandom", "count over the limit", sample(count=9), INVALID, "use SampleRandomStream"),
    Case("SampleRandom", "count uint32 max", sample(count=UINT32_MAX), INVALID, "SampleRandom allows (8)"),
    Case("SampleRandom", "unknown prior enum value 7", sample(prior=7), INVALID, "PRIOR_BOUNDING_BOX_UNIFORM"),
    Case("SampleRandom", "negative prior enum value", sample(prior=-3), INVALID, "unknown value -3"),
    Case("SampleRandom", "temperature 0", sample(temperature=0.0), INVALID, "0 < t <= 10"),
    Case("SampleRandom", "temperature NaN", sample(temperature=float("nan")), INVALID, "0 < t <= 10"),
    Case("SampleRandom", "temperature 11", sample(temperature=11.0), INVALID, "0 < t <= 10"),
    Case("SampleRandom", "unknown model", sample(model="nope"), NOT_FOUND, "available models"),
    Case("SampleRandom", "request over max_message_bytes", lambda: sample(model="x" * OVERSIZED), EXHAUSTED, "larger than max"),
    Case("SampleRandom", "garbage bytes", GARBAGE, INVALID, "not a valid protobuf message"),
    # -- SampleRandomStream
    Case("SampleRandomStream", "count 0", sample(count=0), INVALID, "at least 1"),
    Case("SampleRandomStream", "count over the stream limit", sample(count=101), INVALID, "SampleRandomStream allows (100)"),
    Case("SampleRandomStream", "count uint32 max", sample(count=UINT32_MAX), INVALID, "SampleRandomStream allows (100)"),
    Case("SampleRandomStream", "unknown prior enum value", sample(prior=99), INVALID, "unknown value 99"),
    Case("SampleRandomStream", "temperature -1", sample(temperature=-1.0), INVALID, "0 < t <= 10"),
    Case("SampleRandomStream", "unknown model", sample(model="nope"), NOT_FOUND, "available models"),
    Case("SampleRandomStream", "100 kB model name", sample(model=HUGE_NAME), NOT_FOUND, "available models"),
    Case("SampleRandomStream", "garbage bytes", GARBAGE, INVALID, "not a valid protobuf message"),
    # -- ListModels / GetModel / health
    Case("ListModels", "garbage bytes", GARBAGE, INVALID, "not a valid protobuf message"),
    Case("GetModel", "unknown model", pb.GetModelRequest(model="nope"), NOT_FOUND, "available models"),
    Case("GetModel", "100 kB model name", pb.GetModelRequest(model=HUGE_NAME), NOT_FOUND, "available models"),
    Case("GetModel", "model name not UTF-8", BAD_UTF8, INVALID, "UTF-8"),
    Case("/grpc.health.v1.Health/Check", "garbage bytes", GARBAGE, INVALID, "not a valid protobuf message"),
]
# fmt: on


# -- fixtures ------------------------------------------------------------------------------


limited = bad_input.limited


@pytest.fixture(scope="module")
def channel(limited):
    # No client-side size limit: the oversized rows must reach the server.
    with grpc.insecure_channel(
        limited.target, options=[("grpc.max_send_message_length", -1)]
    ) as ch:
        yield ch


@pytest.fixture(scope="module")
def client(limited):
    with LatentClient(limited.target, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_models_dir):
    return Reference(tiny_models_dir / "tiny-vae")


def call_raw(channel: grpc.Channel, rpc: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    """Send `payload` as the request bytes of `rpc`; return the final status and message."""
    path = rpc if rpc.startswith("/") else SERVICE + rpc
    try:
        if rpc in STREAMING:
            list(channel.unary_stream(path)(payload, timeout=10))
        else:
            channel.unary_unary(path)(payload, timeout=10)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return OK, ""


def assert_still_serving(client: LatentClient, reference: Reference) -> None:
    assert client.health() == "SERVING"
    assert client.health("tiny-vae") == "SERVING"
    latents = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    np.testing.assert_allclose(
        client.decode(latents, model="tiny-vae").images, reference.decode(latents), atol=1e-6
    )


# -- tests -------------------------------------------------------------------------------------


def test_matrix_covers_every_rpc():
    rpcs = {c.rpc for c in MATRIX}
    methods = set(pb.DESCRIPTOR.services_by_name["Autoencoder"].methods_by_name)
    assert methods <= rpcs
    assert len({c.id for c in MATRIX}) == len(MATRIX), "row names must be unique"


@pytest.mark.parametrize("case", MATRIX, ids=lambda c: c.id)
def test_bad_request(case: Case, channel, client, reference):
    code, message = call_raw(channel, case.rpc, case.payload())
    assert code == case.code, f"{case.id}: got {code.name}: {message}"
    assert case.fragment in message, f"{case.id}: message {message[:300]!r}"
    assert len(message.encode()) < 4096, "status messages stay short enough for any proxy"
    assert_still_serving(client, reference)


def test_client_refuses_counts_that_cannot_be_sent(client):
    """Negative counts and counts past uint32 cannot be put on the wire; the client says so
    before sending anything."""
    with pytest.raises(ValueError, match="count must be >= 0"):
        client.sample(-1)
    with pytest.raises(ValueError, match="uint32"):
        client.sample(2**32)
    with pytest.raises(ValueError, match="prior must be one of"):
        client.sample(1, prior="laplace")  # type: ignore[arg-type]
