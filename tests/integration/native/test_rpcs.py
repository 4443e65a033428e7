"""Every RPC through the real server and client, checked against in-process onnxruntime."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fixtures.reference import Reference
from fixtures.servers import InProcessServer
from PIL import Image

from latentserve.client import AsyncLatentClient, LatentClient

ATOL = 1e-6


@pytest.fixture(scope="module")
def client(server: InProcessServer):
    with LatentClient(server.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_models_dir):
    return {
        name: Reference(tiny_models_dir / name) for name in ("tiny-ae", "tiny-vae", "tiny-vae-8")
    }


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["tiny-ae", "tiny-vae", "tiny-vae-8"])
def test_encode_equals_onnxruntime(client, reference, name):
    images = digits(7)
    result = client.encode(images, model=name)
    expected = reference[name].encode(images)
    assert result.model == name
    if name == "tiny-ae":
        np.testing.assert_allclose(result.latents, expected["latents"], atol=ATOL, rtol=0)
        assert result.log_var is None
    else:
        np.testing.assert_allclose(result.latents, expected["mean"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(result.log_var, expected["log_var"], atol=ATOL, rtol=0)
    assert result.z is None


def test_encode_accepts_n_x_1_x_28_x_28_and_uint8(client, reference):
    images = digits(3)
    as_4d = client.encode(images[:, None], model="tiny-vae").latents
    np.testing.assert_array_equal(as_4d, client.encode(images, model="tiny-vae").latents)
    pixels = (images * 255).astype(np.uint8)
    from_uint8 = client.encode(pixels, model="tiny-vae").latents
    expected = reference["tiny-vae"].encode(pixels.astype(np.float32) / 255)["mean"]
    np.testing.assert_allclose(from_uint8, expected, atol=ATOL, rtol=0)


def test_encode_png_equals_onnxruntime_on_decoded_pixels(client, reference):
    pixels = (digits(4, seed=5) * 255).astype(np.uint8)
    result = client.encode([png(p) for p in pixels], model="tiny-ae")
    expected = reference["tiny-ae"].encode(pixels.astype(np.float32) / 255)["latents"]
    np.testing.assert_allclose(result.latents, expected, atol=ATOL, rtol=0)


def test_encode_png_resize_and_color(client, reference):
    rgb = np.zeros((56, 56, 3), dtype=np.uint8)
    rgb[:, 28:] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    result = client.encode([buffer.getvalue()], model="tiny-ae", resize=True)
    gray = np.asarray(
        Image.fromarray(rgb).convert("L").resize((28, 28), Image.Resampling.BILINEAR), np.float32
    )
    expected = reference["tiny-ae"].encode(gray / 255)["latents"]
    np.testing.assert_allclose(result.latents, expected, atol=ATOL, rtol=0)


def test_encode_sample_z_is_seeded_reparameterisation(client, reference):
    images = digits(5)
    a = client.encode(images, model="tiny-vae-8", sample_z=True, seed=11)
    b = client.encode(images, model="tiny-vae-8", sample_z=True, seed=11)
    c = client.encode(images, model="tiny-vae-8", sample_z=True, seed=12)
    assert a.seed == 11
    np.testing.assert_array_equal(a.z, b.z)
    assert not np.allclose(a.z, c.z)
    ref = reference["tiny-vae-8"].encode(images)
    eps = np.random.Generator(np.random.PCG64(11)).standard_normal(ref["mean"].shape)
    expected = ref["mean"] + np.exp(0.5 * ref["log_var"].astype(np.float64)) * eps
    np.testing.assert_allclose(a.z, expected, atol=1e-5, rtol=0)


def test_encode_sample_z_without_seed_returns_the_seed_it_used(client):
    images = digits(2)
    first = client.encode(images, model="tiny-vae", sample_z=True)
    again = client.encode(images, model="tiny-vae", sample_z=True, seed=first.seed)
    np.testing.assert_array_equal(first.z, again.z)


@pytest.mark.parametrize("name,dim", [("tiny-ae", 2), ("tiny-vae", 2), ("tiny-vae-8", 8)])
def test_decode_equals_onnxruntime(client, reference, name, dim):
    latents = np.random.default_rng(1).standard_normal((9, dim)).astype(np.float32)
    result = client.decode(latents, model=name, return_png=True)
    expected = reference[name].decode(latents)
    assert result.images.shape == (9, 1, 28, 28)
    np.testing.assert_allclose(result.images, expected, atol=ATOL, rtol=0)
    assert len(result.png) == 9
    first = np.asarray(Image.open(io.BytesIO(result.png[0])))
    assert first.shape == (28, 28)
    np.testing.assert_array_equal(first, np.rint(expected[0, 0] * 255).astype(np.uint8))


@pytest.mark.parametrize("name", ["tiny-ae", "tiny-vae", "tiny-vae-8"])
def test_sample_equals_onnxruntime_decode_of_its_latents(client, reference, name):
    result = client.sample(33, model=name, seed=5, return_latents=True)
    assert result.images.shape == (33, 1, 28, 28)
    np.testing.assert_allclose(
        result.images, reference[name].decode(result.latents), atol=ATOL, rtol=0
    )


def test_sample_priors_draw_the_documented_distributions(client, reference):
    manifest = reference["tiny-vae"].manifest
    rng = lambda: np.random.Generator(np.random.PCG64(3))  # noqa: E731
    normal = client.sample(10, model="tiny-vae", seed=3, return_latents=True, temperature=0.5)
    assert normal.prior == "standard_normal"  # the VAE's own default
    np.testing.assert_allclose(normal.latents, 0.5 * rng().standard_normal((10, 2)), atol=1e-6)
    box = client.sample(
        500, model="tiny-vae", seed=3, prior="bounding_box_uniform", return_latents=True
    )
    assert box.prior == "bounding_box_uniform"
    np.testing.assert_allclose(
        box.latents, rng().uniform([-2.0, -2.0], [3.0, 3.0], size=(500, 2)), atol=1e-6
    )
    fitted = client.sample(20000, model="tiny-ae", seed=3, return_latents=True)
    assert fitted.prior == "fitted_gaussian"  # a plain AE defaults to its fitted Gaussian
    g = manifest.prior.fitted_gaussian
    np.testing.assert_allclose(fitted.latents.mean(axis=0), g.mean, atol=0.03)
    np.testing.assert_allclose(np.cov(fitted.latents.T), g.covariance, atol=0.03)


def test_sample_same_seed_same_images_and_unseeded_reports_seed(client):
    a = client.sample(64, model="tiny-vae", seed=7)
    b = client.sample(64, model="tiny-vae", seed=7)
    c = client.sample(64, model="tiny-vae", seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    unseeded = client.sample(4, model="tiny-vae")
    replay = client.sample(4, model="tiny-vae", seed=unseeded.seed)
    np.testing.assert_array_equal(unseeded.images, replay.images)


def test_stream_yields_exactly_the_unary_result(server, client):
    unary = client.sample(1000, model="tiny-vae-8", seed=42, return_latents=True)
    with LatentClient(server.target, max_unary_samples=1, chunk_size=64) as streaming:
        streamed = streaming.sample(1000, model="tiny-vae-8", seed=42, return_latents=True)
    np.testing.assert_array_equal(streamed.latents, unary.latents)
    np.testing.assert_array_equal(streamed.images, unary.images)
    assert streamed.seed == unary.seed == 42


def test_100000_samples_stream_without_message_size_errors(client):
    result = client.sample(100_000, model="tiny-vae", seed=1)
    assert result.images.shape == (100_000, 1, 28, 28)
    assert result.images.dtype == np.float32
    first = client.sample(16, model="tiny-vae", seed=1)
    np.testing.assert_array_equal(result.images[:16], first.images)
    assert np.isfinite(result.images).all()


def test_default_model_used_when_model_is_empty(client):
    assert client.sample(2, seed=1).model == "tiny-vae"
    assert client.get_model().name == "tiny-vae"


def test_list_and_get_model(client, reference):
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {"tiny-ae", "tiny-vae", "tiny-vae-8"}
    info = client.get_model("tiny-vae-8")
    manifest = reference["tiny-vae-8"].manifest
    assert info.state == "READY"
    assert (info.kind, info.latent_dim, info.image_shape) == ("vae", 8, (1, 28, 28))
    assert info.providers == ("CPUExecutionProvider",)
    assert info.default_prior == "standard_normal"
    assert info.encoder_sha256 == manifest.encoder.sha256
    assert info.metrics == {"test_mse_per_pixel": pytest.approx(0.0123)}
    assert info.provenance == {"data": "synthetic", "seed": 3}
    assert models["tiny-ae"].default_prior == "fitted_gaussian"


async def test_async_client_has_the_same_results(server, client):
    images = digits(3)
    async with AsyncLatentClient(server.target) as aclient:
        enc = await aclient.encode(images, model="tiny-vae")
        dec = await aclient.decode(enc.latents, model="tiny-vae")
        sample = await aclient.sample(20, model="tiny-vae", seed=9)
        streamed = await AsyncLatentClient(server.target, max_unary_samples=5).sample(
            20, model="tiny-vae", seed=9
        )
        models = await aclient.list_models()
        assert await aclient.health() == "SERVING"
        assert (await aclient.get_model("tiny-ae")).kind == "ae"
    np.testing.assert_array_equal(enc.latents, client.encode(images, model="tiny-vae").latents)
    np.testing.assert_array_equal(dec.images, client.decode(enc.latents, model="tiny-vae").images)
    np.testing.assert_array_equal(sample.images, client.sample(20, model="tiny-vae", seed=9).images)
    np.testing.assert_array_equal(streamed.images, sample.images)
    assert len(models) == 3


def test_concurrent_clients_get_their_own_rows(server, reference):
    """Many small concurrent requests are batched together yet each gets its own answer."""
    import concurrent.futures

    inputs = [
        np.random.default_rng(i).standard_normal((1 + i % 3, 8)).astype(np.float32)
        for i in range(40)
    ]
    with LatentClient(server.target) as c, concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda z: c.decode(z, model="tiny-vae-8").images, inputs))
    for z, images in zip(inputs, results, strict=True):
        np.testing.assert_allclose(images, reference["tiny-vae-8"].decode(z), atol=ATOL, rtol=0)


def test_client_splits_large_encode_and_decode(server, reference):
    images = digits(50)
    with LatentClient(server.target, batch_size=16) as small:
        latents = small.encode(images, model="tiny-ae").latents
        decoded = small.decode(latents, model="tiny-ae").images
    np.testing.assert_allclose(latents, reference["tiny-ae"].encode(images)["latents"], atol=ATOL)
    assert decoded.shape == (50, 1, 28, 28)
