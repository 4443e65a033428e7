"""The real tritonclient (its own venv: tests/fixtures/tritonclient_env.py) drives the
repository API over REST and gRPC: index, unload, load, with the readiness it reports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fixtures.models import build_model_folder
from fixtures.servers import InProcessServer, free_port
from fixtures.tritonclient_env import tritonclient_python

SCRIPT = """
import json, sys
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
protocol, url = sys.argv[1], sys.argv[2]
module = grpcclient if protocol == "grpc" else httpclient
client = module.InferenceServerClient(url)
def index():
    if protocol == "grpc":
        rows = client.get_model_repository_index(as_json=True).get("models", [])
    else:
        rows = client.get_model_repository_index()
    return {r["name"] + "/" + r.get("version", ""): r.get("state", "") for r in rows}
report = {"before": index()}
client.unload_model("tiny-vae")
report["unloaded"] = index()
report["ready_after_unload"] = client.is_model_ready("tiny-vae-decoder")
client.load_model("tiny-vae")
report["loaded"] = index()
report["ready_after_load"] = client.is_model_ready("tiny-vae-decoder")
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def triton_python() -> Path:
    python = tritonclient_python()
    if isinstance(python, str):
        pytest.skip(python)
    return python


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_indexes_unloads_and_loads(triton_python, tmp_path, protocol):
    build_model_folder(tmp_path, "tiny-vae", seed=1)
    with InProcessServer(tmp_path, model_control="explicit", http_port=free_port()) as server:
        assert server.server.http is not None
        port = server.server.port if protocol == "grpc" else server.server.http.port
        done = subprocess.run(
            [str(triton_python), "-c", SCRIPT, protocol, f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["before"] == {"tiny-vae/1": "READY"}
    assert report["unloaded"] == {"tiny-vae/1": "UNAVAILABLE"}
    assert report["ready_after_unload"] is False
    assert report["loaded"] == {"tiny-vae/1": "READY"}
    assert report["ready_after_load"] is True
