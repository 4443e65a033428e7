"""The explorer page follows the model (issue 20), in a real headless Chromium against a real
server: an RGB 3 x 32 x 32 model with a 2-D latent (plane, RGB samples, a dropped colour PNG
sent as it is), a non-square grey model, and an RGB model with a spatial 4 x 8 x 8 latent
(no plane; reconstruction, samples and the latent as channel maps). Pixels are read at the
centre of each image pixel and compared with what the native API returns."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fixtures.browser import (
    assert_no_page_errors,
    choose_model,
    chromium,
    explorer_page,
    shown_images,
)
from fixtures.models import Names, build_shaped_model_folder
from fixtures.servers import InProcessServer, free_port
from PIL import Image

from latentserve.client import LatentClient


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    root = tmp_path_factory.mktemp("explorer-shapes")
    build_shaped_model_folder(root, "rgb-flat", kind="vae", image_shape=(3, 32, 32),
                              latent_shape=(2,), seed=31)  # fmt: skip
    build_shaped_model_folder(root, "grey-wide", kind="ae", image_shape=(1, 20, 36),
                              latent_shape=(3,), seed=32)  # fmt: skip
    build_shaped_model_folder(
        root, "rgb-spatial", kind="vae", image_shape=(3, 32, 32), latent_shape=(4, 8, 8),
        value_range=(-1.0, 1.0), names=Names("x", ("mu", "logvar"), "z", "y"), seed=33,
    )  # fmt: skip
    with InProcessServer(root, http_port=free_port(), default_model="rgb-flat") as running:
        yield running


@pytest.fixture(scope="module")
def client(served: InProcessServer) -> Iterator[LatentClient]:
    with LatentClient(served.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def page(served: InProcessServer) -> Iterator[Any]:
    assert served.server.http is not None
    url = f"http://127.0.0.1:{served.server.http.port}/"
    with chromium() as browser, explorer_page(browser, url) as page:
        yield page


def assert_same_images(got: np.ndarray, images: np.ndarray) -> None:
    want = np.clip(np.round(images.reshape(len(images), -1).astype(np.float64) * 255), 0, 255)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1


def sample_in_page(page: Any, seed: int, count: int) -> None:
    page.fill("#seed", str(seed))
    page.fill("#count", str(count))
    page.click("#sample")
    page.wait_for_function(
        "(s) => window.explorer.state.samples && window.explorer.state.samples.seed === s", arg=seed
    )
    page.evaluate("window.explorer.idle()")


def drop_png(page: Any, data: bytes) -> None:
    page.evaluate(
        """async (bytes) => {
          const file = new File([new Uint8Array(bytes)], "image.png", { type: "image/png" });
          const data = new DataTransfer();
          data.items.add(file);
          document.getElementById("draw").dispatchEvent(
            new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        }""",
        list(data),
    )
    page.wait_for_function("window.explorer.state.drawn !== null")
    page.evaluate("window.explorer.idle()")


def colour_png() -> bytes:
    """A 32 x 32 picture in three colours (flat areas, so scaling keeps them exactly)."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16] = (200, 30, 40)
    pixels[:, 16:] = (20, 160, 220)
    pixels[24:] = (250, 240, 10)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_rgb_model_samples_decodes_and_takes_a_colour_png(page: Any, client: LatentClient) -> None:
    choose_model(page, "rgb-flat")
    assert page.is_visible("#plane-panel") and not page.is_visible("#sample-latent")
    sample_in_page(page, seed=77, count=6)
    expected = client.sample(6, model="rgb-flat", seed=77, prior="standard_normal")
    assert_same_images(shown_images(page, "#samples canvas", (3, 32, 32)), expected.images)
    # The decoded centre of the prior, in colour.
    latent = page.evaluate("window.explorer.state.cursor.z")
    decoded = client.decode(np.asarray([latent], np.float32), model="rgb-flat").images
    assert_same_images(shown_images(page, "#decoded", (3, 32, 32)), decoded)
    # A colour PNG is sent as it is (not inverted, not grey) and reconstructed.
    drop_png(page, colour_png())
    sent = shown_images(page, "#draw-input", (3, 32, 32))[0] / 255
    assert page.inner_text("#draw-sent") == "sent (RGB 32 x 32)"
    want = np.asarray(Image.open(io.BytesIO(colour_png()))).transpose(2, 0, 1) / 255
    # The pad is scaled with smoothing, so only pixels at the colour edges blend.
    assert (np.abs(sent - want.reshape(-1)) <= 1 / 255).mean() > 0.85
    encoded = client.encode(sent.reshape(1, 3, 32, 32).astype(np.float32), model="rgb-flat")
    drawn = page.evaluate("window.explorer.state.drawn.latent")
    assert np.allclose(drawn, encoded.latents[0], atol=1e-4)
    recon = client.decode(encoded.latents, model="rgb-flat").images
    assert_same_images(shown_images(page, "#draw-recon", (3, 32, 32)), recon)
    assert_no_page_errors(page)


def test_non_square_grey_model(page: Any, client: LatentClient) -> None:
    choose_model(page, "grey-wide")
    sample_in_page(page, seed=5, count=4)
    canvas = page.evaluate(
        "[...document.querySelectorAll('#samples canvas')].map(c => [c.width, c.height])"
    )
    assert all(abs(h / w - 20 / 36) < 0.05 for w, h in canvas)
    expected = client.sample(4, model="grey-wide", seed=5, prior="fitted_gaussian")
    got = shown_images(page, "#samples canvas", (1, 20, 36))
    assert_same_images(got, expected.images)
    assert_no_page_errors(page)


def test_spatial_latent_shows_channel_maps_and_no_plane(page: Any, client: LatentClient) -> None:
    choose_model(page, "rgb-spatial")
    for hidden in ("#plane-panel", "#decode-panel", "#walk-panel"):
        assert not page.is_visible(hidden), hidden
    sample_in_page(page, seed=9, count=5)
    expected = client.sample(5, model="rgb-spatial", seed=9, prior="standard_normal")
    assert_same_images(shown_images(page, "#samples canvas", (3, 32, 32)), expected.images)
    assert page.evaluate("document.querySelectorAll('#sample-latent canvas').length") == 4
    drop_png(page, colour_png())
    sent = (shown_images(page, "#draw-input", (3, 32, 32))[0] / 255).astype(np.float32)
    encoded = client.encode(sent.reshape(1, 3, 32, 32), model="rgb-spatial")
    drawn = np.asarray(page.evaluate("window.explorer.state.drawn.latent"))
    assert np.allclose(drawn, encoded.latents.reshape(-1), atol=1e-4)
    recon = client.decode(encoded.latents, model="rgb-spatial").images
    assert_same_images(shown_images(page, "#draw-recon", (3, 32, 32)), recon)
    # One map per latent channel, each the channel stretched to its min..max.
    maps = shown_images(page, "#draw-latent canvas", (1, 8, 8))
    assert maps.shape == (4, 64)
    z = encoded.latents[0].reshape(4, 64).astype(np.float64)
    stretched = np.round(255 * (z - z.min(1, keepdims=True)) / np.ptp(z, 1, keepdims=True))
    assert np.abs(maps - stretched).max() <= 1
    assert_no_page_errors(page)


def test_model_list_names_shapes(page: Any) -> None:
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
    assert "rgb-spatial v1 (vae, 4 x 8 x 8, 3 x 32 x 32)" in options
    assert "grey-wide v1 (ae, 3-D, 1 x 20 x 36)" in options
