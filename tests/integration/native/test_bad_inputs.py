"""Every class of bad input gets its precise gRPC status and a message saying what is allowed,
and the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from fixtures import bad_input
from fixtures.bad_input import LIMITS, bomb_png, gif, png, tensor
from fixtures.servers import InProcessServer

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.client import AsyncLatentClient, LatentClient, LatentServeError

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

limited = bad_input.limited


@pytest.fixture(scope="module")
def client(limited):
    # batch_size above the server limit so the client does not split around it.
    with LatentClient(limited.target, batch_size=10_000, max_unary_samples=10_000) as c:
        yield c


@pytest.fixture(scope="module")
def stub(limited):
    channel = grpc.insecure_channel(limited.target)
    yield pb_grpc.AutoencoderStub(channel)
    channel.close()


def raw_call(method, request):
    with pytest.raises(grpc.RpcError) as info:
        method(request, timeout=10)
    return info.value.code(), info.value.details()


def expect(code, fragment, call, *args, **kwargs):
    with pytest.raises(LatentServeError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value.message
    assert fragment in info.value.message, info.value.message
    return info.value.message


# -- Encode ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(2, 27, 28), (2, 3, 28, 28), (28, 28, 1, 1), (2, 784), (2, 1, 1, 28, 28)],
)
def test_encode_wrong_shape(client, shape):
    message = expect(
        INVALID, "N x 28 x 28 or N x 1 x 28 x 28", client.encode, np.zeros(shape, np.float32)
    )
    assert str(list(shape)) in message


def test_encode_byte_length_mismatch(stub):
    request = pb.EncodeRequest(images=pb.Tensor(shape=[1, 28, 28], raw_data=b"\0" * 100))
    code, details = raw_call(stub.Encode, request)
    assert code == INVALID
    assert "100 bytes" in details and "3136" in details


def test_negative_or_empty_shape(stub):
    code, details = raw_call(stub.Encode, pb.EncodeRequest(images=pb.Tensor(shape=[-1, 28, 28])))
    assert code == INVALID and "negative" in details
    code, details = raw_call(stub.Encode, pb.EncodeRequest(images=pb.Tensor()))
    assert code == INVALID and "shape is empty" in details


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_non_finite(client, bad):
    images = np.zeros((2, 28, 28), np.float32)
    images[1, 3, 4] = bad
    expect(INVALID, "NaN or infinite", client.encode, images)


def test_encode_empty_batch_and_no_input(client, stub):
    expect(INVALID, "empty batch", client.encode, np.zeros((0, 28, 28), np.float32))
    code, details = raw_call(stub.Encode, pb.EncodeRequest(model="tiny-vae"))
    assert code == INVALID and "images" in details and "encoded_images" in details


def test_encode_too_many_items(client):
    message = expect(
        EXHAUSTED, "max_samples_per_request", client.encode, np.zeros((9, 28, 28), np.float32)
    )
    assert "(8)" in message
    expect(EXHAUSTED, "max_samples_per_request", client.encode, [png()] * 9)


def test_encode_undecodable_image(client):
    message = expect(
        INVALID, "not a decodable PNG or JPEG", client.encode, [png(), b"hello, not an image"]
    )
    assert "encoded_images.data[1]" in message
    expect(INVALID, "not a decodable PNG or JPEG", client.encode, [gif()])
    expect(INVALID, "empty", client.encode, [b""])


def test_encode_wrong_size_image(client):
    message = expect(INVALID, "32 x 30 pixels", client.encode, [png(32, 30)])
    assert "resize" in message
    assert client.encode([png(32, 30)], resize=True).latents.shape == (1, 2)


def test_encode_image_limits_and_decompression_bomb(client):
    noisy = png(90, 90, noise=True)
    assert len(noisy) > LIMITS["max_image_bytes"]
    expect(EXHAUSTED, "max_image_bytes", client.encode, [noisy], resize=True)
    expect(EXHAUSTED, "max_image_pixels", client.encode, [png(101, 100)], resize=True)
    bomb = bomb_png(2000, 2000)
    assert len(bomb) < LIMITS["max_image_bytes"]
    expect(EXHAUSTED, "4000000 pixels", client.encode, [bomb], resize=True)
    expect(INVALID, "2000 x 2000", client.encode, [bomb])
    huge = bomb_png(50_000, 50_000)
    assert len(huge) < LIMITS["max_image_bytes"]
    expect(EXHAUSTED, "max_image_pixels", client.encode, [huge], resize=True)
    expect(EXHAUSTED, "max_image_pixels", client.encode, [huge])


def test_sample_z_on_plain_autoencoder(client):
    expect(
        INVALID,
        "VAE models only",
        client.encode,
        np.zeros((1, 28, 28), np.float32),
        model="tiny-ae",
        sample_z=True,
    )


# -- Decode ------------------------------------------------------------------------------------


def test_decode_wrong_latent_dim(client):
    message = expect(
        INVALID, "N x 8", client.decode, np.zeros((2, 3), np.float32), model="tiny-vae-8"
    )
    assert "[2, 3]" in message


def test_decode_wrong_rank_and_missing(stub):
    code, details = raw_call(stub.Decode, pb.DecodeRequest(latents=tensor((2, 2, 1))))
    assert code == INVALID and "N x 2" in details
    code, details = raw_call(stub.Decode, pb.DecodeRequest(model="tiny-vae"))
    assert code == INVALID and "latents: missing" in details
    code, details = raw_call(
        stub.Decode, pb.DecodeRequest(latents=pb.Tensor(shape=[1, 2], raw_data=b"\0" * 7))
    )
    assert code == INVALID and "7 bytes" in details


def test_decode_non_finite_empty_and_too_many(client):
    expect(INVALID, "NaN or infinite", client.decode, np.array([[0.0, np.nan]], np.float32))
    expect(INVALID, "empty batch", client.decode, np.zeros((0, 2), np.float32))
    expect(EXHAUSTED, "max_samples_per_request", client.decode, np.zeros((9, 2), np.float32))


# -- SampleRandom --------------------------------------------------------------------------------


def test_sample_count_out_of_range(client, stub):
    expect(INVALID, "count: must be at least 1", client.sample, 0)
    message = expect(INVALID, "SampleRandom allows (8)", client.sample, 9)
    assert "SampleRandomStream" in message
    code, details = raw_call(
        lambda r, timeout: list(stub.SampleRandomStream(r, timeout=timeout)),
        pb.SampleRequest(count=101),
    )
    assert code == INVALID and "SampleRandomStream allows (100)" in details
    code, details = raw_call(
        lambda r, timeout: list(stub.SampleRandomStream(r, timeout=timeout)),
        pb.SampleRequest(count=0),
    )
    assert code == INVALID


@pytest.mark.parametrize("temperature", [0.0, -1.0, 10.5, float("nan"), float("inf")])
def test_sample_bad_temperature(client, temperature):
    expect(INVALID, "0 < t <= 10", client.sample, 4, temperature=temperature)


def test_sample_unknown_prior(stub):
    code, details = raw_call(stub.SampleRandom, pb.SampleRequest(count=1, prior=7))
    assert code == INVALID and "PRIOR_FITTED_GAUSSIAN" in details


def test_stream_chunk_size_is_clamped_to_server_limit(limited):
    with LatentClient(limited.target, max_unary_samples=1, chunk_size=1000) as c:
        result = c.sample(100, seed=1)
    assert result.images.shape == (100, 1, 28, 28)


# -- other statuses ------------------------------------------------------------------------------


def test_unknown_model_lists_available(client):
    message = expect(
        grpc.StatusCode.NOT_FOUND, "unknown model 'nope'", client.sample, 1, model="nope"
    )
    assert "tiny-ae, tiny-vae, tiny-vae-8" in message
    expect(grpc.StatusCode.NOT_FOUND, "available models", client.get_model, "nope")


def test_message_over_max_message_bytes(stub):
    huge = pb.DecodeRequest(latents=pb.Tensor(shape=[1, 2], raw_data=b"\0" * (5 << 20)))
    code, _ = raw_call(stub.Decode, huge)
    assert code == EXHAUSTED


def test_response_over_max_message_bytes_is_refused_up_front(tiny_models_dir):
    with (
        InProcessServer(
            tiny_models_dir, max_samples_per_request=5000, max_message_bytes=4 << 20
        ) as running,
        LatentClient(running.target, batch_size=5000) as c,
    ):
        message = expect(EXHAUSTED, "max_message_bytes", c.decode, np.zeros((2000, 2), np.float32))
        assert "2000 items" in message
        assert c.decode(np.zeros((1000, 2), np.float32)).images.shape == (1000, 1, 28, 28)


def test_deadline_exceeded(server):
    """A call still running at its deadline ends with DEADLINE_EXCEEDED. The stream is kept
    running past it by a slow reader (flow control stops the server from finishing early)."""
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AutoencoderStub(channel)
        request = pb.SampleRequest(model="tiny-vae", count=10_000, chunk_size=100, seed=1)
        stream = stub.SampleRandomStream(request, timeout=0.5)
        next(stream)
        time.sleep(0.8)
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with LatentClient(server.target, timeout=0.5) as c:
        assert c.sample(2, model="tiny-vae", seed=1).images.shape == (2, 1, 28, 28)


async def test_cancelled_stream_leaves_server_healthy(limited):
    channel = grpc.aio.insecure_channel(limited.target)
    stub = pb_grpc.AutoencoderStub(channel)
    call = stub.SampleRandomStream(pb.SampleRequest(count=100, chunk_size=1, seed=1))
    first = await call.read()
    assert first.offset == 0
    call.cancel()
    await asyncio.sleep(0.05)
    assert call.cancelled() or (await call.code()) == grpc.StatusCode.CANCELLED
    await channel.close()
    async with AsyncLatentClient(limited.target) as c:
        assert await c.health() == "SERVING"
        assert (await c.sample(2, seed=1)).images.shape == (2, 1, 28, 28)


def test_server_still_serving_after_bad_inputs(client):
    assert client.health() == "SERVING"
    assert client.sample(8, seed=3).images.shape == (8, 1, 28, 28)


def test_queue_full_is_resource_exhausted(tiny_models_dir):
    """With a one-request queue, a burst of concurrent calls behind a slow batch overflows it."""

    async def burst(target):
        async with AsyncLatentClient(target, batch_size=100_000) as c:
            big = np.zeros((15_000, 8), np.float32)
            small = np.zeros((1, 8), np.float32)
            calls = [c.decode(big, model="tiny-vae-8")]
            calls += [c.decode(small, model="tiny-vae-8") for _ in range(30)]
            return await asyncio.gather(*calls, return_exceptions=True)

    with InProcessServer(
        tiny_models_dir, max_queue=1, max_batch_size=1, max_samples_per_request=100_000
    ) as running:
        results = asyncio.run(burst(running.target))
        codes = [r.code for r in results if isinstance(r, LatentServeError)]
        assert codes and set(codes) == {EXHAUSTED}
        assert any("max_queue 1" in r.message for r in results if isinstance(r, LatentServeError))
        assert any(not isinstance(r, Exception) for r in results)


async def test_async_client_raises_the_same_errors(limited):
    async with AsyncLatentClient(limited.target, max_unary_samples=10_000) as c:
        with pytest.raises(LatentServeError) as info:
            await c.decode(np.zeros((1, 5), np.float32), model="tiny-vae")
        assert info.value.code == INVALID and "N x 2" in info.value.message
        with pytest.raises(LatentServeError) as info:
            await c.sample(9)
        assert info.value.code == INVALID
        assert await c.health("nope") == "SERVICE_UNKNOWN"
