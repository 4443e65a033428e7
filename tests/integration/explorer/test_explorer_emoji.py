"""The explorer on the shipped colour model, emoji-vae (RGB 3 x 32 x 32, 8-D latent), in a real
headless Chromium against `python -m serving` on the shipped models, as a user runs it.

The page is opened on its default model (mnist-vae) and emoji-vae is picked from the model
list. Checked against the model folder's latent_sample.json and the native gRPC API: the
legend names the emoji categories (and MNIST keeps its digit key), the 352 scatter points are
coloured by category (in the page's state and in the canvas pixels), and the pointer decodes
the latent the PCA plane maps it back to, with the RGB image that native Decode returns.

Set LATENTSERVE_EXPLORER_EMOJI_SCREENSHOT=docs/figures/explorer-emoji.png to write the
README's screenshot; otherwise it goes to the test's tmp folder.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
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
from fixtures.servers import free_port
from PIL import Image, ImageDraw

from latentbench.serverproc import ServerProcess
from latentserve.client import LatentClient

SHIPPED_MODELS = Path(__file__).resolve().parents[3] / "models"
SAMPLE = json.loads((SHIPPED_MODELS / "emoji-vae" / "latent_sample.json").read_text())
IMAGE = (3, 32, 32)

# The scatter canvas's RGB at each point's centre (device pixels), with the points' positions.
READ_POINTS = """() => {
  const { plane, state } = window.explorer;
  const ctx = plane.canvas.getContext("2d");
  return state.model.scatter.points.map((uv) => {
    const [x, y] = plane.toPixel(uv);
    const d = ctx.getImageData(Math.floor(x * plane.dpr), Math.floor(y * plane.dpr), 1, 1).data;
    return [x, y, d[0], d[1], d[2]];
  });
}"""


class ExplorerServer(ServerProcess):
    """`python -m serving` on the shipped models with its HTTP port on a free port."""

    def __init__(self) -> None:
        self.http_port = free_port()
        super().__init__(SHIPPED_MODELS, ("--http-port", str(self.http_port)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"


@pytest.fixture(scope="module")
def served() -> Iterator[ExplorerServer]:
    with ExplorerServer() as running:
        yield running


@pytest.fixture(scope="module")
def client(served: ExplorerServer) -> Iterator[LatentClient]:
    with LatentClient(served.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def page(served: ExplorerServer) -> Iterator[Any]:
    with chromium() as browser, explorer_page(browser, served.url) as page:
        yield page


def legend(page: Any) -> list[tuple[str, str]]:
    """The legend's keys as (text, swatch colour as the browser computes it)."""
    return [
        tuple(key)
        for key in page.eval_on_selector_all(
            "#legend .key",
            "ks => ks.map(k => [k.textContent, getComputedStyle(k.querySelector('i')).backgroundColor])",
        )
    ]


def rgb(css: str) -> np.ndarray:
    """'rgb(31, 119, 180)' -> [31, 119, 180]."""
    return np.asarray([int(v) for v in css[css.index("(") + 1 : -1].split(",")[:3]], np.float64)


def test_legend_names_the_emoji_categories_and_mnist_keeps_its_digits(page: Any) -> None:
    assert page.input_value("#model") == "mnist-vae"  # the server's default model
    digits = legend(page)
    assert [text for text, _ in digits] == [str(d) for d in range(10)]
    choose_model(page, "emoji-vae")
    keys = legend(page)
    counts = np.bincount(SAMPLE["labels"], minlength=len(SAMPLE["classes"]))
    assert [text for text, _ in keys] == [
        f"{name} {n}" for name, n in zip(SAMPLE["classes"], counts, strict=True)
    ]
    assert "Smileys & Emotion" in SAMPLE["classes"] and "Flags" in SAMPLE["classes"]
    # Ten categories, ten colours: every pair at least 40 apart in RGB.
    colours = np.stack([rgb(colour) for _, colour in keys])
    gaps = np.linalg.norm(colours[:, None] - colours[None], axis=2) + np.eye(len(colours)) * 1e3
    assert gaps.min() > 40, gaps.min()
    assert page.inner_text("#plane-note").startswith("352 test images in 10 classes")
    # Back on MNIST, the digit key and its colours are exactly as before.
    choose_model(page, "mnist-vae")
    assert legend(page) == digits
    choose_model(page, "emoji-vae")
    assert_no_page_errors(page)


def test_scatter_has_352_points_coloured_by_category(page: Any) -> None:
    choose_model(page, "emoji-vae")
    scatter = page.evaluate("window.explorer.state.model.scatter")
    assert len(scatter["points"]) == 352 == len(SAMPLE["labels"])
    assert scatter["labels"] == SAMPLE["labels"] and scatter["classes"] == SAMPLE["classes"]
    assert np.allclose(scatter["points"], SAMPLE["pca"]["points"])
    # Each point is filled with its category's legend colour.
    fills = page.evaluate("window.explorer.plane.pointColours")
    swatch = {name: rgb(colour) for name, colour in legend_by_name(page).items()}
    for label, fill in zip(SAMPLE["labels"], fills, strict=True):
        assert np.array_equal(hex_rgb(fill), swatch[SAMPLE["classes"][label]])
    # And the canvas shows it: where a point stands alone, its centre pixel is its category's
    # colour at the scatter's alpha (0.55) over the plot's background, give or take a grid line.
    read = np.asarray(page.evaluate(READ_POINTS))
    xy, shown = read[:, :2], read[:, 2:]
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(len(xy)) * 1e3
    alone = distance.min(1) > 8
    assert alone.sum() >= 30, alone.sum()
    background = hex_rgb("#fbfbf8")
    want = np.stack([0.55 * hex_rgb(fills[i]) + 0.45 * background for i in range(len(fills))])
    close = np.abs(shown - want).max(1) <= 12
    assert close[alone].mean() >= 0.9, close[alone].mean()
    assert_no_page_errors(page)


def legend_by_name(page: Any) -> dict[str, str]:
    names = page.eval_on_selector_all(
        "#legend .key", "ks => ks.map(k => k.firstChild.nextSibling.textContent)"
    )
    colours = [colour for _, colour in legend(page)]
    return dict(zip(names, colours, strict=True))


def hex_rgb(colour: str) -> np.ndarray:
    return np.asarray([int(colour[i : i + 2], 16) for i in (1, 3, 5)], np.float64)


@pytest.mark.parametrize("point", [(1.2, -0.8), (-3.5, 0.9)])
def test_hover_decodes_the_pca_point_as_native_decode_does(
    page: Any, client: LatentClient, point: tuple[float, float]
) -> None:
    choose_model(page, "emoji-vae")
    x, y = page.evaluate("(uv) => window.explorer.plane.toClient(uv)", list(point))
    page.mouse.move(x, y)
    page.evaluate("window.explorer.idle()")
    latent = np.asarray(json.loads(page.get_attribute("#decoded", "data-latent")))
    # The 8-D latent under the pointer: the plane point mapped back through the shipped PCA.
    pca = SAMPLE["pca"]
    want = np.asarray(pca["mean"]) + np.asarray(point) @ np.asarray(pca["components"])
    assert latent.shape == (8,)
    assert np.allclose(latent, want, atol=2e-3), (latent, want)
    expected = client.decode(latent.reshape(1, 8).astype(np.float32), model="emoji-vae").images
    assert expected.shape == (1, *IMAGE)
    got = shown_images(page, "#decoded", IMAGE)
    want_levels = np.clip(np.round(expected.reshape(1, -1).astype(np.float64) * 255), 0, 255)
    assert got.shape == want_levels.shape
    assert np.abs(got - want_levels).max() <= 1
    # A colour image: the channels differ somewhere.
    assert np.ptp(expected.reshape(3, -1), axis=0).max() > 0.1
    assert_no_page_errors(page)


def smiley_png() -> bytes:
    """A hand-made 64 x 64 smiley on a transparent background, as emoji PNGs come."""
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 4, 59, 59), fill=(255, 201, 61, 255), outline=(214, 140, 20, 255), width=2)
    draw.ellipse((20, 20, 27, 31), fill=(80, 50, 30, 255))
    draw.ellipse((37, 20, 44, 31), fill=(80, 50, 30, 255))
    draw.arc((16, 24, 48, 50), start=20, end=160, fill=(80, 50, 30, 255), width=4)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_screenshot(page: Any, tmp_path: Path) -> None:
    choose_model(page, "emoji-vae")
    page.fill("#seed", "3")
    page.fill("#count", "30")
    page.click("#sample")
    page.wait_for_function(
        "window.explorer.state.samples && window.explorer.state.samples.seed === 3"
    )
    # A walk from the flags (far left of the plane) to a face (lower right).
    for uv in ((-4.0, 0.5), (1.5, -1.5)):
        x, y = page.evaluate("(uv) => window.explorer.plane.toClient(uv)", list(uv))
        page.mouse.click(x, y)
    page.evaluate(
        """async (bytes) => {
          const file = new File([new Uint8Array(bytes)], "smiley.png", { type: "image/png" });
          const data = new DataTransfer();
          data.items.add(file);
          document.getElementById("draw").dispatchEvent(
            new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        }""",
        list(smiley_png()),
    )
    page.wait_for_function("window.explorer.state.drawn !== null")
    page.evaluate("window.explorer.idle()")
    # The hand-made smiley is encoded among the emoji smileys: most of its ten nearest test
    # latents (in all 8 dimensions) are "Smileys & Emotion" (the README says so).
    drawn = np.asarray(page.evaluate("window.explorer.state.drawn.latent"))
    nearest = np.argsort(np.linalg.norm(np.asarray(SAMPLE["latents"]) - drawn, axis=1))[:10]
    names = [SAMPLE["classes"][SAMPLE["labels"][i]] for i in nearest]
    assert names.count("Smileys & Emotion") >= 6, names
    x, y = page.evaluate("(uv) => window.explorer.plane.toClient(uv)", [2.3, 0.0])
    page.mouse.move(x, y)
    page.evaluate("window.explorer.idle()")
    target = Path(
        os.environ.get("LATENTSERVE_EXPLORER_EMOJI_SCREENSHOT") or tmp_path / "explorer-emoji.png"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    assert_no_page_errors(page)
