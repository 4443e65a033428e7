"""Models of any shape on a real server (issue 20): 1 x 28 x 28, 3 x 32 x 32 RGB, 1 x 20 x 36,
a 4 x 8 x 8 spatial latent (with its own tensor names, a [-1, 1] value range and latent
scaling), float16 graphs and dynamic sizes. Each round-trips through native gRPC, v2 gRPC,
v2 REST and latent-client and equals onnxruntime run in this process; bad input is answered
with the model's own shape in the message."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures.servers import InProcessServer, free_port
from fixtures.shaped import (
    GREY_28,
    SHAPED_MODELS,
    Reference,
    assert_close,
    build_shaped_models,
    http_json,
    v2_grpc_infer,
    v2_grpc_metadata,
    v2_rest_infer,
)
from PIL import Image

from latentserve.cli import main as client_main
from latentserve.client import LatentClient, LatentServeError
from latentserve.png import to_uint8
from latentserve.sampling import draw_latents

MODELS = [GREY_28, *SHAPED_MODELS]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shaped_models(tmp_path_factory.mktemp("shaped"))


@pytest.fixture(scope="module")
def served(models_dir: Path) -> Iterator[InProcessServer]:
    with InProcessServer(models_dir, http_port=free_port(), default_model=GREY_28) as running:
        yield running


@pytest.fixture(scope="module")
def client(served: InProcessServer) -> Iterator[LatentClient]:
    with LatentClient(served.target) as c:
        yield c


def http_port(served: InProcessServer) -> int:
    assert served.server.http is not None
    return served.server.http.port


def png(pixels: np.ndarray) -> bytes:
    """C x H x W in [0, 1] -> a grey or RGB PNG."""
    cells = to_uint8(pixels)
    picture = cells[0] if cells.shape[0] == 1 else cells.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_model_is_ready_with_its_shapes(client, models_dir):
    infos = {m.name: m for m in client.list_models()}
    for name in MODELS:
        info, ref = infos[name], Reference(models_dir / name)
        assert info.state == "READY", info.error
        assert info.image_shape == ref.manifest.image_shape
        assert info.latent_shape == ref.manifest.latent_shape
        assert info.graph_dtype == ref.manifest.image.dtype
    assert infos["dynamic"].dynamic_sizes == (4, 8, 64)
    assert infos["rgb-32"].dynamic_sizes is None


@pytest.mark.parametrize("name", MODELS)
def test_native_round_trip_equals_onnxruntime(client, models_dir, name):
    ref = Reference(models_dir / name)
    images = ref.images(3, seed=1)
    encoded = client.encode(images, model=name)
    expected = ref.encode(images)
    assert_close(encoded.latents, expected[0], "latents")
    if ref.manifest.kind == "vae":
        assert encoded.log_var is not None
        assert_close(encoded.log_var, expected[1], "log_var")
    decoded = client.decode(encoded.latents, model=name, return_png=True)
    assert_close(decoded.images, ref.decode(encoded.latents), "images")
    c, h, w = ref.manifest.image_shape
    picture = Image.open(io.BytesIO(decoded.png[0]))
    assert picture.size == (w, h) and picture.mode == ("L" if c == 1 else "RGB")
    # uint8 images: the same pixels, rounded, 4x smaller.
    small = client.decode(encoded.latents, model=name, image_dtype="uint8")
    assert small.images.dtype == np.uint8
    np.testing.assert_array_equal(small.images, to_uint8(decoded.images))
    # PNG files in: the same latents as the tensors they hold (pixels are k/255).
    from_files = client.encode([png(i) for i in images], model=name)
    assert_close(from_files.latents, encoded.latents, "latents from PNG files")
    # uint8 tensors in: the same again.
    levels = np.rint(images * 255).astype(np.uint8)
    assert_close(client.encode(levels, model=name).latents, encoded.latents, "uint8 in")


@pytest.mark.parametrize("name", MODELS)
def test_sampling_decodes_the_documented_draws(client, models_dir, name):
    ref = Reference(models_dir / name)
    m = ref.manifest
    for prior in ("standard_normal", "fitted_gaussian", "bounding_box_uniform"):
        result = client.sample(5, model=name, seed=3, prior=prior, return_latents=True)
        assert result.latents is not None
        expected = draw_latents(m, prior, 5, 3)
        assert expected.shape == (5, *m.latent_shape)
        assert_close(result.latents, expected, prior)
        assert_close(result.images, ref.decode(result.latents), prior)
    # Streaming gives the same rows as one answer.
    streamed = LatentClient(client.target, max_unary_samples=2, chunk_size=2)
    with streamed:
        chunked = streamed.sample(5, model=name, seed=3, prior="fitted_gaussian")
    unary = client.sample(5, model=name, seed=3, prior="fitted_gaussian")
    np.testing.assert_array_equal(chunked.images, unary.images)
    as_uint8 = client.sample(5, model=name, seed=3, prior="fitted_gaussian", image_dtype="uint8")
    np.testing.assert_array_equal(as_uint8.images, to_uint8(unary.images))


@pytest.mark.parametrize("name", MODELS)
def test_v2_grpc_and_rest_follow_the_model(served, models_dir, name):
    ref = Reference(models_dir / name)
    m = ref.manifest
    images = ref.images(2, seed=2)
    expected = ref.encode(images)
    port = http_port(served)
    meta = v2_grpc_metadata(served.target, f"{name}-encoder")
    assert [i.name for i in meta.inputs] == [m.encoder_input]
    assert [o.name for o in meta.outputs] == list(m.encoder_outputs)
    fixed = m.image.dynamic is None
    if fixed:
        assert list(meta.inputs[0].shape) == [-1, *m.image_shape]
        assert list(meta.outputs[0].shape) == [-1, *m.latent_shape]
    status, rest_meta = http_json(port, f"/v2/models/{name}-sampler")
    assert status == 200
    shapes = {o["name"]: o["shape"] for o in rest_meta["outputs"]}
    assert shapes["images"] == [-1, *m.image_shape]
    assert shapes["latents"] == [-1, *m.latent_shape]
    for infer in (
        lambda model, inputs: v2_grpc_infer(served.target, model, inputs),
        lambda model, inputs: v2_rest_infer(port, model, inputs),
    ):
        outputs = infer(f"{name}-encoder", {m.encoder_input: images})
        assert list(outputs) == list(m.encoder_outputs)
        for got, want in zip(outputs.values(), expected, strict=True):
            assert_close(got, want, "v2 encoder")
        decoded = infer(f"{name}-decoder", {m.decoder_input: expected[0]})
        assert list(decoded) == [m.decoder_output]
        assert_close(decoded[m.decoder_output], ref.decode(expected[0]), "v2 decoder")
    levels = np.rint(images * 255).astype(np.uint8)
    uint8_in = v2_grpc_infer(served.target, f"{name}-encoder", {m.encoder_input: levels})
    assert_close(uint8_in[m.encoder_outputs[0]], expected[0], "v2 UINT8 images")


@pytest.mark.parametrize("name", MODELS)
def test_latent_client_encode_decode_sample(served, models_dir, name, tmp_path, capsys):
    ref = Reference(models_dir / name)
    images = ref.images(2, seed=4)
    np.save(tmp_path / "in.npy", images)
    target = ["--target", served.target]
    assert client_main([*target, "encode", str(tmp_path / "in.npy"), "--model", name,
                        "--out", str(tmp_path / "z.npy")]) == 0  # fmt: skip
    latents = np.load(tmp_path / "z.npy")
    assert_close(latents, ref.encode(images)[0], "latent-client encode")
    assert client_main([*target, "decode", "--latents", str(tmp_path / "z.npy"), "--model", name,
                        "--out", str(tmp_path / "x.npy")]) == 0  # fmt: skip
    assert_close(np.load(tmp_path / "x.npy"), ref.decode(latents), "latent-client decode")
    assert client_main([*target, "sample", "--model", name, "--count", "4", "--seed", "1",
                        "--out", str(tmp_path / "grid.png")]) == 0  # fmt: skip
    assert client_main([*target, "sample", "--model", name, "--count", "4", "--seed", "1",
                        "--uint8", "--out", str(tmp_path / "s8.npy")]) == 0  # fmt: skip
    assert client_main([*target, "sample", "--model", name, "--count", "4", "--seed", "1",
                        "--out", str(tmp_path / "s32.npy")]) == 0  # fmt: skip
    levels = np.load(tmp_path / "s8.npy")
    assert levels.dtype == np.uint8
    np.testing.assert_array_equal(levels, to_uint8(np.load(tmp_path / "s32.npy")))
    grid = Image.open(tmp_path / "grid.png")
    assert grid.mode == ("L" if ref.manifest.image.channels == 1 else "RGB")
    _, h, w = ref.manifest.image_shape
    assert grid.size == (2 * (w + 2) + 2, 2 * (h + 2) + 2)
    capsys.readouterr()


def test_dynamic_sizes_take_any_allowed_size(client, models_dir):
    ref = Reference(models_dir / "dynamic")
    images = ref.images(2, seed=5, size=(24, 40))
    encoded = client.encode(images, model="dynamic")
    assert encoded.latents.shape == (2, 2, 6, 10)
    assert_close(encoded.latents, ref.encode(images)[0], "dynamic encode")
    decoded = client.decode(encoded.latents, model="dynamic")
    assert decoded.images.shape == (2, 1, 24, 40)
    assert_close(decoded.images, ref.decode(encoded.latents), "dynamic decode")
    from_file = client.encode([png(images[0])], model="dynamic")
    assert from_file.latents.shape == (1, 2, 6, 10)
    with pytest.raises(LatentServeError) as info:
        client.encode(ref.images(1, size=(18, 40)), model="dynamic")
    assert info.value.code == INVALID
    assert "height and width multiples of 4 within [8, 64]" in info.value.message
    # Latents of any allowed image size decode; a 1 x 1 map would be a 4 x 4 image (< 8).
    assert client.decode(np.zeros((1, 2, 3, 5), np.float32), model="dynamic").images.shape == (
        1,
        1,
        12,
        20,
    )
    for latents in (np.zeros((1, 2, 1, 1), np.float32), np.zeros((1, 3, 4, 4), np.float32)):
        with pytest.raises(LatentServeError) as info:
            client.decode(latents, model="dynamic")
        assert info.value.code == INVALID and "N x 2 x h x w" in info.value.message


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(LatentServeError) as info:
        call(*args, **kwargs)
    assert info.value.code == INVALID, info.value.message
    return info.value.message


def test_one_grey_image_without_a_batch_axis(client, models_dir):
    ref = Reference(models_dir / "wide-20x36")
    image = ref.images(1, seed=3)[0, 0]
    assert_close(client.encode(image, model="wide-20x36").latents, ref.encode(image[None, None])[0])
    message = refused(client.encode, image, model="rgb-32")
    assert "shape [20, 36]" in message and "N x 3 x 32 x 32" in message


def test_bad_input_names_the_models_own_shape(client):
    # Wrong channels, wrong size, channels last, wrong latent shape.
    message = refused(client.encode, np.zeros((1, 1, 32, 32), np.float32), model="rgb-32")
    assert "model 'rgb-32' takes N x 3 x 32 x 32" in message and "1 channels" in message
    message = refused(client.encode, np.zeros((1, 32, 32, 3), np.float32), model="rgb-32")
    assert "channels come first" in message
    message = refused(client.encode, np.zeros((1, 36, 20), np.float32), model="wide-20x36")
    assert "N x 20 x 36 or N x 1 x 20 x 36" in message
    message = refused(client.decode, np.zeros((1, 4, 4, 4), np.float32), model="spatial")
    assert "N x 4 x 8 x 8" in message
    # PNG files: wrong size, and an RGB file sent to a grey model without resize.
    message = refused(client.encode, [png(np.zeros((3, 32, 32)))], model="wide-20x36")
    assert "grey 1 x 20 x 36" in message and "resize" in message
    colour = np.zeros((3, 28, 28), np.float32)
    colour[0] = 1.0
    message = refused(client.encode, [png(colour)], model=GREY_28)
    assert "in colour (RGB)" in message and "grey 1 x 28 x 28" in message
    assert "set resize" in message
    resized = client.encode([png(colour)], model=GREY_28, resize=True)
    assert resized.latents.shape == (1, 2)
    scaled = client.encode([png(np.zeros((1, 64, 64)))], model="rgb-32", resize=True)
    assert scaled.latents.shape == (1, 8)


def test_v2_rest_bad_shape_names_the_model_shape(served):
    tensor = {"name": "pixel_values", "datatype": "FP32", "shape": [1, 1, 32, 32],
              "data": [0.0] * 1024}  # fmt: skip
    status, answer = http_json(http_port(served), "/v2/models/spatial-encoder/infer",
                               {"inputs": [tensor]})  # fmt: skip
    assert status == 400
    assert "N x 3 x 32 x 32" in answer["error"]


def test_large_images_split_to_fit_the_message_limit(tmp_path):
    """3 x 256 x 256 float32 images are 786 kB each: at a 4 MiB message limit, 12 of them
    fit no single message. The client splits Encode by request size, retries Decode in
    fitting calls, and streams SampleRandom, whose chunks the server sizes to fit."""
    from fixtures.models import build_shaped_model_folder

    build_shaped_model_folder(tmp_path, "big", kind="ae", image_shape=(3, 256, 256),
                              latent_shape=(4,), seed=40)  # fmt: skip
    ref = Reference(tmp_path / "big")
    limit = 4 << 20
    with (
        InProcessServer(tmp_path, max_message_bytes=limit) as server,
        LatentClient(server.target, max_message_bytes=limit) as client,
    ):
        images = ref.images(12, seed=6)
        encoded = client.encode(images, model="big")
        assert_close(encoded.latents, ref.encode(images)[0], "encode in pieces")
        decoded = client.decode(encoded.latents, model="big")
        assert_close(decoded.images, ref.decode(encoded.latents), "decode in pieces")
        sampled = client.sample(12, model="big", seed=2, return_latents=True)
        assert sampled.images.shape == (12, 3, 256, 256) and sampled.latents is not None
        assert_close(sampled.images, ref.decode(sampled.latents), "streamed sample")
        # The same sample as uint8 fits one answer: 4x smaller.
        small = client.sample(12, model="big", seed=2, image_dtype="uint8")
        np.testing.assert_array_equal(small.images, to_uint8(sampled.images))


def test_concurrent_calls_of_different_sizes_to_a_dynamic_model(served, models_dir):
    import asyncio

    from latentserve.client import AsyncLatentClient

    ref = Reference(models_dir / "dynamic")
    batches = [ref.images(1 + i % 3, seed=i, size=[(16, 16), (24, 40), (8, 64)][i % 3])
               for i in range(12)]  # fmt: skip

    async def run() -> list[np.ndarray]:
        async with AsyncLatentClient(served.target) as client:
            done = await asyncio.gather(*(client.encode(b, model="dynamic") for b in batches))
        return [d.latents for d in done]

    for images, latents in zip(batches, asyncio.run(run()), strict=True):
        assert_close(latents, ref.encode(images)[0], f"dynamic {images.shape}")
