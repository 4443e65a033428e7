"""The repository with `--workers 2` (separate processes on one port): in poll mode every
worker converges on a newly published version; explicit mode is refused at start-up, since
a load call would reach one worker only."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import numpy as np
from fixtures.models import build_model_folder
from fixtures.repository import publish_tiny, wait_for
from fixtures.servers import SubprocessServer, free_port

from latentbench.serverproc import ServerProcess
from latentserve.client import LatentClient

NAME = "tiny-vae"


def fresh_connection_versions(target: str, calls: int = 16) -> list[str]:
    """The version answering each of `calls` calls, each on a new connection (so the kernel
    spreads them over the workers)."""
    versions = []
    for _ in range(calls):
        with LatentClient(target) as client:
            result = client.decode(np.zeros((1, 2), np.float32), model=NAME)
            versions.append(result.model_version)
    return versions


def worker_requests(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    found = re.findall(r'latentserve_worker_requests_total\{worker="(\d+)"\} ([0-9.e+]+)', text)
    return {worker: float(value) for worker, value in found}


def test_every_worker_converges_on_a_published_version(tmp_path: Path):
    repo = tmp_path / "repo"
    build_model_folder(repo, NAME, seed=1)
    metrics_port = free_port()
    server = SubprocessServer(
        repo,
        [
            "--workers",
            "2",
            "--model-control",
            "poll",
            "--poll-interval-s",
            "0.5",
            "--metrics-port",
            str(metrics_port),
            "--max-connection-age-ms",
            "0",
        ],
    ).start()
    try:
        server.wait_for_log("ready: serving", timeout=120)
        assert set(fresh_connection_versions(server.target, 8)) == {"1"}
        publish_tiny(repo, NAME, seed=2)
        # One poll interval plus a load and warm-up in each worker (generous on a busy box).
        wait_for(
            lambda: set(fresh_connection_versions(server.target, 8)) == {"2"},
            timeout=30,
            what="every fresh connection answered by version 2",
        )
        before = worker_requests(metrics_port)
        assert set(fresh_connection_versions(server.target, 24)) == {"2"}
        after = worker_requests(metrics_port)
        # Both workers answered some of those calls: both have converged, not just one.
        assert sorted(after) == ["0", "1"]
        assert all(after[w] > before.get(w, 0.0) for w in after), (before, after)
    finally:
        server.terminate()
        assert server.wait(60) == 0


def test_explicit_mode_with_workers_is_refused_with_the_reason(tmp_path: Path):
    build_model_folder(tmp_path, NAME, seed=1)
    server = SubprocessServer(tmp_path, ["--workers", "2", "--model-control", "explicit"])
    ServerProcess.start(server)  # not SubprocessServer.start: it never listens
    code = server.wait(60)
    text = "\n".join(server.lines)
    assert code == 2
    assert "model_control explicit needs workers 1" in text
    assert "Traceback" not in text
