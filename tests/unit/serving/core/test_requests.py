"""Request validation without any protocol: plain arrays and values in, typed requests or a
ServingError out (what the native servicer, the v2 servicer and the REST API all call)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.core.errors import ServingError
from serving.core.repository import ModelRepository
from serving.core.requests import RequestParser, check_output
from serving.process.settings import ServerSettings

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
async def parse(tiny_models_dir: Path) -> AsyncIterator[RequestParser]:
    settings = ServerSettings(
        models_dir=tiny_models_dir,
        max_samples_per_request=8,
        max_stream_samples=100,
        stream_chunk_size=16,
        metrics_port=0,
    )
    with ThreadPoolExecutor(1) as executor:
        registry = ModelRepository(settings, executor)
        registry.scan()
        await registry.load_all()
        yield RequestParser(registry, settings)
        await registry.close()


def refused(code: grpc.StatusCode, fragment: str, call, *args, **kwargs) -> str:
    with pytest.raises(ServingError) as info:
        call(*args, **kwargs)
    assert info.value.code is code, info.value.message
    assert fragment in info.value.message, info.value.message
    return info.value.message


async def test_encode_takes_both_image_shapes_and_refuses_others(parse):
    vae = parse.model("tiny-vae")
    request = parse.encode(vae, np.zeros((3, 28, 28), np.float32))
    assert request.images.shape == (3, 1, 28, 28) and request.z_seed is None
    assert parse.encode(vae, np.zeros((2, 1, 28, 28), np.float32)).rows == 2
    refused(INVALID, "N x 28 x 28 or N x 1 x 28 x 28", parse.encode, vae, np.zeros((2, 784)))
    refused(INVALID, "empty batch", parse.encode, vae, np.zeros((0, 28, 28), np.float32))
    refused(EXHAUSTED, "(8)", parse.encode, vae, np.zeros((9, 28, 28), np.float32))
    grey_levels = np.full((1, 28, 28), 255.0, np.float32)
    refused(INVALID, "divide 8-bit grey levels by 255", parse.encode, vae, grey_levels)


async def test_posterior_samples_only_for_a_vae_and_always_with_a_seed(parse):
    images = np.zeros((1, 28, 28), np.float32)
    assert parse.encode(parse.model("tiny-vae"), images, sample_z=True, seed=7).z_seed == 7
    drawn = parse.encode(parse.model("tiny-vae"), images, sample_z=True).z_seed
    assert isinstance(drawn, int)
    ae = parse.model("tiny-ae")
    refused(INVALID, "VAE models only", parse.encode, ae, images, sample_z=True)


async def test_decode_checks_presence_size_and_finiteness(parse):
    vae8 = parse.model("tiny-vae-8")
    assert parse.decode(vae8, np.zeros((2, 8), np.float32), return_png=True).return_png
    refused(INVALID, "latents: missing; send N x 8", parse.decode, vae8, None)
    refused(INVALID, "latent_dim 8", parse.decode, vae8, np.zeros((2, 2), np.float32))
    bad = np.array([[0.0] * 7 + [np.inf]], np.float32)
    refused(INVALID, "1 value is NaN or infinite", parse.decode, vae8, bad)
    refused(INVALID, "2 values are NaN or infinite", parse.decode, vae8, np.vstack([bad, bad]))


async def test_sampling_names_priors_and_bounds_count_and_temperature(parse):
    vae = parse.model("tiny-vae")
    request = parse.sample(vae, count=4, prior="bounding_box_uniform", seed=1)
    assert (request.prior, request.temperature, request.chunk_size) == (
        "bounding_box_uniform",
        1.0,
        4,
    )
    assert parse.sample(vae, count=1).prior == vae.default_prior
    refused(INVALID, "use one of standard_normal", parse.sample, vae, count=1, prior="laplace")
    refused(INVALID, "0 < t <= 10", parse.sample, vae, count=1, temperature=0.0)
    message = refused(INVALID, "SampleRandom allows (8)", parse.sample, vae, count=9)
    assert "use SampleRandomStream for more" in message
    message = refused(INVALID, "(8)", parse.sample, vae, count=9, stream_method=None)
    assert "SampleRandomStream" not in message
    # Streams: larger counts, chunks clamped to the server's chunk size.
    assert parse.sample_stream(vae, count=100, chunk_size=1000).chunk_size == 16
    refused(INVALID, "SampleRandomStream allows (100)", parse.sample_stream, vae, count=101)


def test_outputs_that_overflowed_are_refused_as_the_input_problem():
    finite = np.zeros((1, 2), np.float32)
    check_output({"latents": finite, "log_var": None}, "images")
    overflowed = np.array([[np.nan, 1.0]], np.float32)
    refused(INVALID, "pixels in [0, 1]", check_output, {"latents": overflowed}, "images")


def test_file_limit_scales_with_the_model(tmp_path):
    from types import SimpleNamespace

    from fixtures.models import build_shaped_model_folder

    from latentserve.manifest import read_manifest
    from serving.core.requests import file_byte_limit

    small = SimpleNamespace(manifest=read_manifest(build_shaped_model_folder(
        tmp_path, "s", image_shape=(1, 28, 28), latent_shape=(2,))))  # fmt: skip
    big = SimpleNamespace(manifest=read_manifest(build_shaped_model_folder(
        tmp_path, "b", image_shape=(3, 64, 64), latent_shape=(2,))))  # fmt: skip
    assert file_byte_limit(small, 4096) == (4096, "the server's max_image_bytes")
    limit, name = file_byte_limit(big, 4096)
    assert limit > 3 * 64 * 64 and "3 x 64 x 64 PNG" in name
