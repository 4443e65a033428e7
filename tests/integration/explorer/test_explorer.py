"""The explorer page in a real headless Chromium against a real server on 127.0.0.1.

The server (`python -m serving` in its own process, as a user runs it) serves the shipped
models, whose latent_sample.json and analysis.json are what the page draws, with the HTTP
port on. Every check compares what the page shows with what the native gRPC API returns for
the same request: the pixels of the decoded digit under the pointer or set by the sliders,
the marker of a drawn or dropped digit, the sample grid for a seed, the walk between two
pins. Canvas pixels are read back with getImageData at the centre of each 28 x 28 cell; the
page paints grey level round(255 * v), so the tolerance is one grey level.

The decode round trip (performance.now around fetch, in the page) is measured and printed,
not asserted. Set LATENTSERVE_EXPLORER_SCREENSHOT=docs/figures/explorer.png to write the
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
    VIEWPORT,
    ConsoleLog,
    assert_no_page_errors,
    choose_model,
    chromium,
    explorer_page,
)
from fixtures.servers import free_port
from PIL import Image, ImageDraw

from latentbench.serverproc import ServerProcess
from latentserve.client import LatentClient

SHIPPED_MODELS = Path(__file__).resolve().parents[3] / "models"
TOKEN = "explorer-test-token"

# Grey levels of every digit canvas matching `selector`, read at each 28 x 28 cell's centre.
READ_DIGITS = """(selector) => Array.from(document.querySelectorAll(selector)).map((c) => {
  const f = c.width / 28;
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const out = [];
  for (let y = 0; y < 28; y++)
    for (let x = 0; x < 28; x++)
      out.push(d[4 * ((y * f + (f >> 1)) * c.width + x * f + (f >> 1))]);
  return out;
})"""


def grey(images: np.ndarray) -> np.ndarray:
    """N x 1 x 28 x 28 float32 in [0, 1] -> N x 784 grey levels, as the page paints them."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    return np.clip(np.round(flat * 255), 0, 255)


def assert_same_digits(shown: list[list[int]], images: np.ndarray) -> None:
    got = np.asarray(shown, dtype=np.float64)
    want = grey(images)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    assert diff.max() <= 1, f"{int((diff > 1).sum())} pixels differ by more than one level"


class ExplorerServer(ServerProcess):
    """`python -m serving` on 127.0.0.1 with its HTTP port on a free port."""

    def __init__(self, flags: tuple[str, ...] = ()) -> None:
        self.http_port = free_port()
        super().__init__(SHIPPED_MODELS, ("--http-port", str(self.http_port), *flags))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"


@pytest.fixture(scope="module")
def served() -> Iterator[ExplorerServer]:
    with ExplorerServer(("--default-model", "mnist-vae")) as running:
        yield running


@pytest.fixture(scope="module")
def client(served: ExplorerServer) -> Iterator[LatentClient]:
    with LatentClient(served.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def page(browser: Any, served: ExplorerServer) -> Iterator[Any]:
    with explorer_page(browser, served.url) as page:
        yield page


def no_errors(page: Any) -> None:
    """No console errors, no error banner, and never two requests in flight in one panel."""
    assert_no_page_errors(page)
    in_flight = page.evaluate(
        "Object.fromEntries(Object.entries(window.explorer.panels).map(([k, p]) => [k, p.maxInFlight]))"
    )
    assert max(in_flight.values()) <= 1, in_flight


def test_page_loads_without_console_errors(page: Any) -> None:
    assert page.title() == "latentserve explorer"
    models = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert models == ["emoji-vae", "mnist-ae", "mnist-vae", "mnist-vae-16"]
    assert page.input_value("#model") == "mnist-vae"
    # The scatter of the shipped sample and the first decode and sample grid are drawn.
    assert page.evaluate("window.explorer.state.model.scatter.points.length") == 2000
    assert page.evaluate("document.querySelectorAll('#samples canvas').length") == 30
    no_errors(page)


@pytest.mark.parametrize(
    ("model", "point"),
    [("mnist-vae", (0.8, -1.1)), ("mnist-ae", (-2.0, 1.5)), ("mnist-vae-16", (1.2, 0.4))],
)
def test_hover_shows_what_decode_returns(
    page: Any, client: LatentClient, model: str, point: tuple[float, float]
) -> None:
    choose_model(page, model)
    x, y = page.evaluate("(uv) => window.explorer.plane.toClient(uv)", list(point))
    page.mouse.move(x, y)
    page.evaluate("window.explorer.idle()")
    latent = json.loads(page.get_attribute("#decoded", "data-latent"))
    # The page decoded the point under the pointer: the known plane point, to float precision.
    uv = page.evaluate("(z) => window.explorer.state.projection.project(z)", latent)
    assert np.allclose(uv, point, atol=1e-3), (uv, point)
    expected = client.decode(np.asarray([latent], dtype=np.float32), model=model).images
    assert_same_digits(page.evaluate(READ_DIGITS, "#decoded"), expected)
    no_errors(page)


def test_sliders_decode_the_latent_they_set(page: Any, client: LatentClient) -> None:
    choose_model(page, "mnist-vae-16")
    assert page.evaluate("document.querySelectorAll('#sliders input').length") == 16
    page.click("#sliders-zero")
    for dim, value in ((2, "1.5"), (9, "-2.25")):
        page.fill(f"#sliders input[data-dim='{dim}']", value)
    page.evaluate("window.explorer.idle()")
    want = np.zeros((1, 16), dtype=np.float32)
    want[0, 2], want[0, 9] = 1.5, -2.25
    latent = json.loads(page.get_attribute("#decoded", "data-latent"))
    assert np.allclose(latent, want[0])
    expected = client.decode(want, model="mnist-vae-16").images
    assert_same_digits(page.evaluate(READ_DIGITS, "#decoded"), expected)
    no_errors(page)


def test_drawn_stroke_lands_where_encode_puts_it(page: Any, client: LatentClient) -> None:
    choose_model(page, "mnist-vae")
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 80, box["y"] + 60)
    page.mouse.down()
    for tx, ty in ((200, 60), (190, 90), (130, 230)):
        page.mouse.move(box["x"] + tx, box["y"] + ty, steps=8)
    page.mouse.up()
    page.evaluate("window.explorer.idle()")
    # The 28 x 28 preview is exactly the tensor the page sent (quantised to k/255).
    sent = np.asarray(page.evaluate(READ_DIGITS, "#draw-input")[0], dtype=np.float32) / 255
    assert sent.max() == 1.0 and 0.05 < (sent > 0).mean() < 0.5
    encoded = client.encode(sent.reshape(1, 1, 28, 28), model="mnist-vae").latents[0]
    marker = page.locator("#drawn-marker")
    assert np.allclose(json.loads(marker.get_attribute("data-latent")), encoded, atol=1e-5)
    want = page.evaluate(
        "(z) => window.explorer.plane.toClient(window.explorer.state.projection.project(z))",
        encoded.tolist(),
    )
    drawn = marker.bounding_box()
    centre = (drawn["x"] + drawn["width"] / 2, drawn["y"] + drawn["height"] / 2)
    assert np.allclose(centre, want, atol=1.0), (centre, want)
    # Beside it, the reconstruction: Decode of that latent.
    recon = client.decode(encoded.reshape(1, -1), model="mnist-vae").images
    assert_same_digits(page.evaluate(READ_DIGITS, "#draw-recon"), recon)
    no_errors(page)


def dark_on_light_png() -> bytes:
    """A 'digit' as a scanner or paint program gives it: a black stroke on white, 120 x 90."""
    image = Image.new("L", (120, 90), 255)
    ImageDraw.Draw(image).line([(40, 15), (80, 15), (55, 78)], fill=0, width=9)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_dropped_png_is_inverted_encoded_and_marked(page: Any, client: LatentClient) -> None:
    choose_model(page, "mnist-vae-16")
    page.evaluate(
        """async (bytes) => {
          const file = new File([new Uint8Array(bytes)], "digit.png", { type: "image/png" });
          const data = new DataTransfer();
          data.items.add(file);
          document.getElementById("draw").dispatchEvent(
            new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        }""",
        list(dark_on_light_png()),
    )
    page.wait_for_function("window.explorer.state.drawn !== null")
    page.evaluate("window.explorer.idle()")
    sent = np.asarray(page.evaluate(READ_DIGITS, "#draw-input")[0], dtype=np.float32) / 255
    # White background turned into black, the stroke into ink: a sparse image, like MNIST.
    assert sent.max() == 1.0 and 0.05 < (sent > 0).mean() < 0.5
    assert sent.reshape(28, 28)[[0, -1], :].max() == 0  # empty border rows
    encoded = client.encode(sent.reshape(1, 1, 28, 28), model="mnist-vae-16").latents[0]
    marked = json.loads(page.get_attribute("#drawn-marker", "data-latent"))
    assert np.allclose(marked, encoded, atol=1e-5)
    no_errors(page)


@pytest.mark.parametrize(
    ("model", "prior", "temperature"),
    [("mnist-vae", "standard_normal", 1.0), ("mnist-ae", "fitted_gaussian", 0.7)],
)
def test_sampling_panel_matches_sample_random(
    page: Any, client: LatentClient, model: str, prior: str, temperature: float
) -> None:
    choose_model(page, model)
    page.select_option("#prior", prior)
    page.fill("#temperature", str(temperature))
    page.fill("#seed", "1234")
    page.fill("#count", "12")
    page.click("#sample")
    page.wait_for_function(
        "window.explorer.state.samples && window.explorer.state.samples.seed === 1234"
    )
    page.evaluate("window.explorer.idle()")
    expected = client.sample(12, model=model, seed=1234, prior=prior, temperature=temperature)
    assert_same_digits(page.evaluate(READ_DIGITS, "#samples canvas"), expected.images)
    # The classifier's digit mix for that prior, from the model folder's analysis.json.
    analysis = json.loads((SHIPPED_MODELS / model / "analysis.json").read_text())
    bars = page.eval_on_selector_all("#mix .bar", "bs => bs.map(b => b.title)")
    share = analysis["samples"][prior]["digit_share"]
    assert bars == [f"{d}: {100 * s:.1f}%" for d, s in enumerate(share)]
    no_errors(page)


def test_walk_between_pins_decodes_the_line(page: Any, client: LatentClient) -> None:
    choose_model(page, "mnist-vae")
    a, b = (-1.5, 1.0), (1.5, -0.5)
    for uv in (a, b):
        x, y = page.evaluate("(uv) => window.explorer.plane.toClient(uv)", list(uv))
        page.mouse.click(x, y)
    page.evaluate("window.explorer.idle()")
    pins = page.evaluate("window.explorer.state.pins.map(p => p.z)")
    # A click lands on whole pixels (pointer moves do not): within a pixel of the point.
    pixel = 1 / page.evaluate("window.explorer.plane.scale")
    assert np.allclose(pins, [a, b], atol=pixel), (pins, pixel)
    t = np.linspace(0, 1, 12)[:, None]
    start, end = np.asarray(pins[0]), np.asarray(pins[1])
    line = (start + t * (end - start)).astype(np.float32)
    expected = client.decode(line, model="mnist-vae").images
    assert_same_digits(page.evaluate(READ_DIGITS, "#walk canvas"), expected)
    no_errors(page)


def test_pointer_sweep_keeps_one_request_in_flight_and_measures_round_trip(
    page: Any, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    choose_model(page, "mnist-vae")
    page.evaluate("window.explorer.api.decodeTimes = []")
    before = page.evaluate("window.explorer.panels.decoder.runs")
    # A spiral over the plane, as a user's pointer would sweep it (one CDP call per move).
    turns = np.linspace(0, 1, 300)
    spiral = np.stack(
        [2.2 * turns * np.cos(6 * np.pi * turns), 2.2 * turns * np.sin(6 * np.pi * turns)], 1
    )
    points = page.evaluate(
        "(uvs) => uvs.map((uv) => window.explorer.plane.toClient(uv))", spiral.tolist()
    )
    for x, y in points:
        page.mouse.move(x, y)
    moves = len(points)
    page.evaluate("window.explorer.idle()")
    times = page.evaluate("window.explorer.api.decodeTimes")
    runs = page.evaluate("window.explorer.panels.decoder.runs") - before
    assert page.evaluate("window.explorer.panels.decoder.maxInFlight") == 1
    assert 1 <= runs <= moves
    p50 = float(np.median(times))
    record_property("decode_round_trip_p50_ms", p50)
    with capsys.disabled():
        print(
            f"\nexplorer decode round trip: p50 {p50:.2f} ms, p90 "
            f"{np.percentile(times, 90):.2f} ms over {len(times)} calls "
            f"({moves} pointer moves coalesced into {runs} requests; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
    no_errors(page)


def test_screenshot(page: Any, tmp_path: Path) -> None:
    choose_model(page, "mnist-vae")
    page.fill("#seed", "7")
    page.fill("#count", "30")
    page.select_option("#prior", "standard_normal")
    page.fill("#temperature", "1")
    page.click("#sample")
    page.wait_for_function(
        "window.explorer.state.samples && window.explorer.state.samples.seed === 7"
    )
    for uv in ((-2.2, 1.6), (2.0, -1.2)):
        x, y = page.evaluate("(uv) => window.explorer.plane.toClient(uv)", list(uv))
        page.mouse.click(x, y)
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 95, box["y"] + 70)
    page.mouse.down()
    for tx, ty in ((185, 70), (185, 90), (120, 225)):
        page.mouse.move(box["x"] + tx, box["y"] + ty, steps=8)
    page.mouse.up()
    # A short sweep first, so the header's live round-trip readout is not of a cold start.
    page.evaluate("window.explorer.api.decodeTimes = []")
    sweep = [
        [0.35 + 0.5 * np.cos(a), 0.9 + 0.5 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 120)
    ]
    for x, y in page.evaluate(
        "(uvs) => uvs.map((uv) => window.explorer.plane.toClient(uv))", sweep
    ):
        page.mouse.move(x, y)
    x, y = page.evaluate("(uv) => window.explorer.plane.toClient(uv)", [0.35, 0.9])
    page.mouse.move(x, y)
    page.evaluate("window.explorer.idle()")
    target = Path(os.environ.get("LATENTSERVE_EXPLORER_SCREENSHOT") or tmp_path / "explorer.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    no_errors(page)


# -- behind token auth, with the server's errors shown in the page -------------------------------


@pytest.fixture(scope="module")
def guarded() -> Iterator[ExplorerServer]:
    flags = ("--auth-token", TOKEN, "--max-samples-per-request", "16")
    with ExplorerServer(flags) as running:
        yield running


def test_page_works_behind_token_auth_and_shows_server_errors(
    browser: Any, guarded: ExplorerServer
) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    log = ConsoleLog(page)
    page.goto(guarded.url)
    page.evaluate("window.explorer.ready")
    # Without a token the data endpoint refuses, and the page says so.
    assert "401" in page.inner_text("#error")
    assert "Bearer" in page.inner_text("#error")
    page.fill("#token", "wrong")
    page.dispatch_event("#token", "change")
    page.wait_for_function(
        "document.getElementById('error').innerText.includes('invalid bearer token')"
    )
    page.fill("#count", "12")  # within the server's limit of 16
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_function(
        "window.explorer.state.model !== null && window.explorer.state.errors.size === 0"
    )
    page.evaluate("window.explorer.idle()")
    assert page.evaluate("window.explorer.api.decodeTimes.length") >= 1
    # A request over the server's limit: the server's own message appears in the page.
    page.fill("#count", "20")
    page.click("#sample")
    page.wait_for_function("window.explorer.state.errors.has('sample')")
    message = page.inner_text("#error")
    assert "sample:" in message and "16" in message, message
    # The browser logs each refused fetch; nothing else may fail.
    unexpected = [e for e in log.take() if "Failed to load resource" not in e]
    assert unexpected == []
    context.close()
