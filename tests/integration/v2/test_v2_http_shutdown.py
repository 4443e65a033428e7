"""SIGTERM drains the HTTP port with the gRPC one: a v2 REST call accepted before the
signal is answered in full, calls after it are refused (503, or the port is closed), and
`latent-serve` exits 0. A real process, signalled by its own PID."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fixtures.servers import SubprocessServer, free_port
from fixtures.slow_model import build_slow_model_folder

# 2048 rows through the slow decoder take about 3 s on an idle 2-core machine (256 took
# 0.4 s, which could end before the signal), and longer under load.
ROWS = 2048


def infer(port: int, rows: int) -> tuple[int, Any]:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "latents",
                    "datatype": "FP32",
                    "shape": [rows, 2],
                    "data": [0.0] * 2 * rows,
                }
            ],
            "outputs": [{"name": "images", "parameters": {"binary_data": True}}],
        }
    ).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/slow-decoder/infer", body)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            n = int(response.headers["Inference-Header-Content-Length"])
            data = response.read()
            return int(response.status), (json.loads(data[:n]), len(data) - n)
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read())


def test_sigterm_finishes_accepted_rest_calls_and_exits_0(tmp_path: Path) -> None:
    build_slow_model_folder(tmp_path, "slow", matmuls=300)
    port = free_port()
    server = SubprocessServer(
        tmp_path, ["--http-port", str(port), "--grace-period-s", "20", "--intra-op-threads", "1"]
    ).start()
    try:
        server.wait_for_log(re.compile(r"ready: serving"))
        accepted: list[tuple[int, Any]] = []
        slow = threading.Thread(target=lambda: accepted.append(infer(port, ROWS)))
        slow.start()
        # Give the call time to reach the server; its run (ROWS rows through 300 extra
        # MatMuls) takes seconds, and the drain log line proves it was in flight.
        threading.Event().wait(1.0)
        server.terminate()
        server.wait_for_log(re.compile(r"shutting down: draining [1-9]"))
        try:
            status, refused = infer(port, 1)
            assert status == 503 and "shutting down" in refused["error"], refused
        except urllib.error.URLError:
            pass  # the port already closed: refused as well
        slow.join(60)
        assert server.wait(30) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    ((status, (header, raw_bytes)),) = accepted
    assert status == 200
    assert header["outputs"][0]["shape"] == [ROWS, 1, 28, 28]
    assert raw_bytes == ROWS * 784 * 4
