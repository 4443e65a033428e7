"""Property-based fuzzing of every RPC against a live server on loopback (hypothesis).

Requests are generated field by field (any model name, shapes with negative, zero and
huge dimensions, raw bytes of the right or wrong length holding NaN/Inf, image blobs that
are partly PNG, open enum values, uint32/uint64 extremes, NaN temperatures...), and as raw
bytes that may not be protobuf at all. Whatever arrives, the server must answer with a
documented status, never INTERNAL or UNKNOWN, must answer OK with well-formed results, and
must still be healthy at the end. Example counts are bounded so the whole file runs in
a few seconds.
"""

from __future__ import annotations

import math
import os

import grpc
import numpy as np
import pytest
from fixtures.bad_input import limited_server, png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.client import LatentClient

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
# Looser than the bad-input tests' limits, so that more drawn requests get through.
FUZZ_LIMITS = {
    "max_samples_per_request": 16,
    "max_stream_samples": 64,
    "stream_chunk_size": 16,
    "max_image_bytes": 8192,
    "max_image_pixels": 128 * 128,
}
LATENT_DIMS = {"tiny-ae": 2, "tiny-vae": 2, "tiny-vae-8": 8}
# LATENTSERVE_FUZZ_EXAMPLES=5000 for a deeper run by hand.
FUZZ = settings(
    max_examples=int(os.environ.get("LATENTSERVE_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def served(tiny_models_dir):
    with limited_server(tiny_models_dir, **FUZZ_LIMITS) as running:
        channel = grpc.insecure_channel(running.target)
        yield running, pb_grpc.AutoencoderStub(channel), channel
        channel.close()


# -- strategies ------------------------------------------------------------------------------

models = st.one_of(
    st.sampled_from(["", *LATENT_DIMS, "nope"]),
    st.text(max_size=40),
)
dims = st.one_of(
    st.integers(0, 40),
    st.sampled_from([1, 28, 2, 8]),
    st.integers(-(2**63), 2**63 - 1),
)
floats = st.one_of(
    st.floats(0, 1, width=32),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@st.composite
def tensors(draw: st.DrawFn, likely: list[list[int]]) -> pb.Tensor:
    shape = draw(st.one_of(st.sampled_from(likely), st.lists(dims, max_size=5)))
    size = math.prod(shape) if all(d >= 0 for d in shape) else -1
    if 0 <= size <= 16 * 784 and draw(st.booleans()):
        # Right-sized: uniform values with a few drawn ones (maybe NaN/Inf) planted in.
        values = np.random.default_rng(draw(st.integers(0, 2**32))).random(size, dtype="<f4")
        for value in draw(st.lists(floats, max_size=3)) if size else []:
            values[draw(st.integers(0, size - 1))] = value
        raw = values.tobytes()
    else:
        raw = draw(st.binary(max_size=256))
    return pb.Tensor(shape=shape, raw_data=raw)


def grey_or_rgb_png(width: int, height: int, mode: str) -> bytes:
    return png(width, height, mode=mode, fill=128 if mode == "L" else (1, 2, 3))


image_files = st.one_of(
    st.builds(
        grey_or_rgb_png, st.integers(1, 60), st.integers(1, 60), st.sampled_from(["L", "RGB"])
    ),
    st.just(grey_or_rgb_png(28, 28, "L")),
    st.binary(max_size=300),
    st.builds(
        lambda data, cut: data[:cut], st.just(grey_or_rgb_png(28, 28, "RGB")), st.integers(0, 120)
    ),
)


@st.composite
def encode_requests(draw: st.DrawFn) -> pb.EncodeRequest:
    request = pb.EncodeRequest(model=draw(models), sample_z=draw(st.booleans()))
    if draw(st.booleans()):
        request.seed = draw(st.integers(0, 2**64 - 1))
    which = draw(st.sampled_from(["images", "encoded", "none"]))
    if which == "images":
        n = draw(st.integers(0, 3))
        request.images.CopyFrom(draw(tensors([[n, 28, 28], [n, 1, 28, 28], [n, 784]])))
    elif which == "encoded":
        request.encoded_images.data.extend(draw(st.lists(image_files, max_size=4)))
        request.encoded_images.resize = draw(st.booleans())
    return request


@st.composite
def decode_requests(draw: st.DrawFn) -> pb.DecodeRequest:
    request = pb.DecodeRequest(model=draw(models), return_png=draw(st.booleans()))
    if draw(st.booleans()):
        n = draw(st.integers(0, 4))
        request.latents.CopyFrom(draw(tensors([[n, 2], [n, 8], [n, 3], [n]])))
    return request


@st.composite
def sample_requests(draw: st.DrawFn) -> pb.SampleRequest:
    request = pb.SampleRequest(
        model=draw(models),
        count=draw(st.one_of(st.integers(0, 80), st.just(2**32 - 1))),
        prior=draw(st.integers(-3, 6)),
        return_latents=draw(st.booleans()),
        return_png=draw(st.booleans()),
        chunk_size=draw(st.one_of(st.integers(0, 40), st.just(2**32 - 1))),
    )
    if draw(st.booleans()):
        request.seed = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        request.temperature = draw(st.floats(width=32, allow_nan=True, allow_infinity=True))
    return request


# -- the property ------------------------------------------------------------------------------


def status_of(call) -> tuple[grpc.StatusCode, object]:
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as e:
        return e.code(), e.details()


def assert_documented(code: grpc.StatusCode, detail: object) -> None:
    assert code in DOCUMENTED, f"{code.name}: {detail}"
    if code is not grpc.StatusCode.OK:
        assert isinstance(detail, str) and detail, "an error says what was wrong"


def tensor_shape(t: pb.Tensor) -> tuple[int, ...]:
    assert len(t.raw_data) == 4 * math.prod(t.shape)
    return tuple(t.shape)


@FUZZ
@given(request=encode_requests())
def test_fuzz_encode(served, request):
    _, stub, _ = served
    code, response = status_of(lambda: stub.Encode(request, timeout=10))
    assert_documented(code, response)
    if code is grpc.StatusCode.OK:
        n, d = tensor_shape(response.latents)
        assert d == LATENT_DIMS[response.model] and n >= 1
        for field in ("latents", "log_var", "z"):
            if response.HasField(field):
                values = np.frombuffer(getattr(response, field).raw_data, "<f4")
                assert np.isfinite(values).all(), f"OK with non-finite {field}"


@FUZZ
@given(request=decode_requests())
def test_fuzz_decode(served, request):
    _, stub, _ = served
    code, response = status_of(lambda: stub.Decode(request, timeout=10))
    assert_documented(code, response)
    if code is grpc.StatusCode.OK:
        n = request.latents.shape[0]
        assert tensor_shape(response.images) == (n, 1, 28, 28)
        assert np.isfinite(np.frombuffer(response.images.raw_data, "<f4")).all()
        assert len(response.png) == (n if request.return_png else 0)


@FUZZ
@given(request=sample_requests(), stream=st.booleans())
def test_fuzz_sample(served, request, stream):
    _, stub, _ = served
    if stream:
        code, responses = status_of(lambda: list(stub.SampleRandomStream(request, timeout=10)))
        assert_documented(code, responses)
        if code is grpc.StatusCode.OK:
            assert sum(tensor_shape(r.images)[0] for r in responses) == request.count
    else:
        code, response = status_of(lambda: stub.SampleRandom(request, timeout=10))
        assert_documented(code, response)
        if code is grpc.StatusCode.OK:
            assert tensor_shape(response.images) == (request.count, 1, 28, 28)


@FUZZ
@given(
    method=st.sampled_from(
        ["Encode", "Decode", "SampleRandom", "SampleRandomStream", "ListModels", "GetModel"]
    ),
    payload=st.binary(max_size=200),
)
def test_fuzz_raw_bytes(served, method, payload):
    _, _, channel = served
    path = f"/latentserve.v1.Autoencoder/{method}"
    if method == "SampleRandomStream":
        code, detail = status_of(lambda: list(channel.unary_stream(path)(payload, timeout=10)))
    else:
        code, detail = status_of(lambda: channel.unary_unary(path)(payload, timeout=10))
    assert_documented(code, detail)


@FUZZ
@given(name=models)
def test_fuzz_get_model(served, name):
    _, stub, _ = served
    code, response = status_of(lambda: stub.GetModel(pb.GetModelRequest(model=name), timeout=10))
    assert_documented(code, response)


def test_still_healthy_after_fuzzing(served):
    running, _, _ = served
    with LatentClient(running.target) as client:
        assert client.health() == "SERVING"
        assert client.sample(4, seed=1).images.shape == (4, 1, 28, 28)
    # The server's own metrics saw no internal error while being fuzzed, and did see the
    # fuzzing (so this check is not vacuous).
    codes = {
        sample.labels["code"]
        for metric in running.server.metrics.registry.collect()
        if metric.name == "latentserve_request_errors"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert "INVALID_ARGUMENT" in codes
    assert not codes & {"INTERNAL", "UNKNOWN"}, codes
