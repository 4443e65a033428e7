"""The shipped models under models/: gRPC outputs equal in-process onnxruntime (<= 1e-6)
for Encode, Decode and SampleRandom, for every model folder that exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.reference import Reference
from fixtures.servers import InProcessServer

from latentserve.client import LatentClient
from latentserve.manifest import read_manifest

MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
SHIPPED = sorted(p.name for p in MODELS_DIR.glob("*") if (p / "model.json").is_file())
ATOL = 1e-6

pytestmark = pytest.mark.skipif(not SHIPPED, reason=f"no model folders under {MODELS_DIR} yet")


@pytest.fixture(scope="module")
def shipped_client():
    with InProcessServer(MODELS_DIR) as running, LatentClient(running.target) as client:
        yield client


@pytest.mark.parametrize("name", SHIPPED or ["none"])
def test_shipped_model_over_grpc_equals_onnxruntime(shipped_client, name):
    reference = Reference(MODELS_DIR / name)
    info = shipped_client.get_model(name)
    assert info.state == "READY", info.error
    shape = read_manifest(MODELS_DIR / name).image_shape
    images = np.random.default_rng(0).random((16, *shape), dtype=np.float32)

    encoded = shipped_client.encode(images, model=name)
    expected = reference.encode(images)
    first_output = "latents" if info.kind == "ae" else "mean"
    np.testing.assert_allclose(encoded.latents, expected[first_output], atol=ATOL, rtol=0)
    if info.kind == "vae":
        np.testing.assert_allclose(encoded.log_var, expected["log_var"], atol=ATOL, rtol=0)

    decoded = shipped_client.decode(encoded.latents, model=name)
    np.testing.assert_allclose(decoded.images, reference.decode(encoded.latents), atol=ATOL, rtol=0)

    sampled = shipped_client.sample(64, model=name, seed=7, return_latents=True)
    np.testing.assert_allclose(sampled.images, reference.decode(sampled.latents), atol=ATOL, rtol=0)
    again = shipped_client.sample(64, model=name, seed=7)
    np.testing.assert_array_equal(again.images, sampled.images)


@pytest.mark.parametrize("name", SHIPPED or ["none"])
def test_shipped_model_stream_equals_unary_exactly(shipped_client, name):
    """Batch composition must not change a sample: chunks of 100 == one call of 1000."""
    unary = shipped_client.sample(1000, model=name, seed=11)
    with LatentClient(shipped_client.target, max_unary_samples=1, chunk_size=100) as streaming:
        streamed = streaming.sample(1000, model=name, seed=11)
    np.testing.assert_array_equal(streamed.images, unary.images)
