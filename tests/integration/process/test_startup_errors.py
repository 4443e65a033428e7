"""`latent-serve` that cannot start says why in one log line naming the fix, with no
traceback, and exits 2: its gRPC or metrics port is taken, its models folder is missing, or
the folder holds no servable model (refused, not served NOT_SERVING). Each case runs for one
process and for workers. And with no --models-dir, it serves the shipped models from any
working directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.models import build_model_folder, corrupt_hash
from fixtures.servers import free_port

from latentserve.client import LatentClient, LatentServeError
from serving.process.settings import ServerSettings

pytestmark = pytest.mark.slow


# The HTTP port (default 8000) off, as in every test server, unless a test turns it on.
HTTP_OFF = ("--http-port", "0") if "http_port" in ServerSettings.model_fields else ()


def latent_serve(*flags: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", "--host", "127.0.0.1", *HTTP_OFF, *flags],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def assert_one_line_naming(result: subprocess.CompletedProcess[str], *fix: str) -> str:
    """Exit 2, no traceback, and exactly one line that says what to change."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
    naming = [line for line in result.stderr.splitlines() if all(f in line for f in fix)]
    assert len(naming) == 1, result.stderr
    assert "ERROR" in naming[0]
    return naming[0]


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port held by a plain listening socket: some other program."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_grpc_port_in_use(tiny_models_dir, listening_port, workers):
    result = latent_serve(
        "--port", str(listening_port), "--metrics-port", "0", "--models-dir", str(tiny_models_dir),
        "--workers", workers,
    )  # fmt: skip
    line = assert_one_line_naming(result, "--port (LATENTSERVE_PORT)")
    assert f"gRPC port {listening_port} on 127.0.0.1 is already in use" in line
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_port_in_use(tiny_models_dir, listening_port, workers):
    result = latent_serve(
        "--port", "0", "--metrics-port", str(listening_port), "--models-dir", str(tiny_models_dir),
        "--workers", workers,
    )  # fmt: skip
    line = assert_one_line_naming(result, "--metrics-port (LATENTSERVE_METRICS_PORT)")
    assert f"metrics port {listening_port} on 127.0.0.1 is already in use" in line
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_models_dir_missing(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = latent_serve("--port", "0", "--metrics-port", "0", "--models-dir", str(missing))
    line = assert_one_line_naming(result, "--models-dir (LATENTSERVE_MODELS_DIR)")
    assert f"models folder {missing} does not exist" in line
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_models_dir_without_a_valid_model_is_refused(tmp_path, workers):
    corrupt_hash(build_model_folder(tmp_path, "broken", kind="vae", seed=3))
    result = latent_serve(
        "--port", "0", "--metrics-port", "0", "--models-dir", str(tmp_path), "--workers", workers
    )  # fmt: skip
    line = assert_one_line_naming(result, "--models-dir (LATENTSERVE_MODELS_DIR)")
    assert f"no servable model in {tmp_path}" in line
    # The refused folder's own reason is logged too (once per worker).
    assert "model folder" in result.stderr and "broken" in result.stderr
    assert "ready: serving" not in result.stderr


def test_empty_models_dir_is_refused(tmp_path):
    result = latent_serve("--port", "0", "--metrics-port", "0", "--models-dir", str(tmp_path))
    assert_one_line_naming(result, f"no servable model in {tmp_path}", "--models-dir")
    # Nothing was ever running: no warning about calls to cancel before the clear error.
    assert "grace period over" not in result.stderr and "still running" not in result.stderr


def test_shipped_models_are_the_default_from_any_folder(tmp_path):
    """No --models-dir, started elsewhere than the checkout: the three shipped models."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LATENTSERVE_MODELS_DIR"}
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", "0", *HTTP_OFF],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with LatentClient(f"127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 60
            while client_health(client) != "SERVING":
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            ready = {m.name for m in client.list_models() if m.state == "READY"}
            assert ready == {"mnist-ae", "mnist-vae", "mnist-vae-16", "emoji-vae"}
            assert client.sample(2, seed=0).images.shape == (2, 1, 28, 28)
    finally:
        server.terminate()  # our own child, by its handle
        assert server.wait(30) == 0


def client_health(client: LatentClient) -> str:
    try:
        return client.health()
    except LatentServeError as e:
        return e.code.name
