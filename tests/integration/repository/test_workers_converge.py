"""With `--workers 2` the repository index and a version's readiness answer for every
worker, whichever one a connection reaches: a version one worker has not loaded yet is
LOADING, its reason naming that worker, and never READY before both serve it.

One worker is held back deterministically: it is stopped (SIGSTOP) while the version is
published, so only the other loads it; then it is let go and both converge."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from fixtures.models import build_model_folder
from fixtures.repository import infer_rest, publish_tiny, wait_for
from fixtures.servers import SubprocessServer, free_port

from latentserve._proto.inference import grpc_predict_v2_pb2 as v2_pb
from latentserve._proto.inference import grpc_predict_v2_pb2_grpc as v2_pb_grpc

NAME = "tiny-vae"
STALLED_S = 8.0  # at most, asking worker 0 while worker 1 stays stopped


def index_row(base: str, timeout: float) -> dict[str, str] | None:
    """The index row of NAME version 2 from one fresh connection (None: no answer in time,
    as from a stopped worker)."""
    request = urllib.request.Request(base + "/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            rows = json.loads(response.read())
    except (urllib.error.URLError, TimeoutError, OSError):
        return None
    found = [r for r in rows if r["name"] == NAME and r.get("version") == "2"]
    return found[0] if found else {"state": "", "reason": "not listed"}


def grpc_row(target: str, timeout: float) -> v2_pb.RepositoryIndexResponse.ModelIndex | None:
    # A subchannel of its own: a new connection, not one shared with earlier channels.
    with grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = v2_pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            answer = stub.RepositoryIndex(v2_pb.RepositoryIndexRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
    found = [m for m in answer.models if m.name == NAME and m.version == "2"]
    return found[0] if found else None


def version_ready(base: str, timeout: float = 30.0) -> int | None:
    """The HTTP status of version 2's readiness from one fresh connection (None: no
    answer in time)."""
    url = f"{base}/v2/models/{NAME}-decoder/versions/2/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, TimeoutError, OSError):
        return None


def test_index_and_readiness_wait_for_every_worker(tmp_path: Path):
    repo = tmp_path / "repo"
    build_model_folder(repo, NAME, seed=1)
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    server = SubprocessServer(
        repo,
        [
            "--workers",
            "2",
            "--model-control",
            "poll",
            "--poll-interval-s",
            "0.3",
            "--http-port",
            str(http_port),
            "--max-connection-age-ms",
            "0",
        ],
    ).start()
    stalled = 0
    try:
        line = server.wait_for_log("ready: serving", timeout=120)
        match = re.search(r"pids (\d+), (\d+)", line)
        assert match is not None, line
        stalled = int(match.group(2))  # the workers start in order: this is worker 1
        os.kill(stalled, signal.SIGSTOP)
        publish_tiny(repo, NAME, seed=2)
        server.wait_for_log(r"worker 0 .*model tiny-vae version 2 ready", timeout=30)
        # Worker 0 serves version 2, worker 1 has not seen it: worker 0's answers (those
        # of worker 1 wait until it runs again) must name worker 1 as behind.
        behind = f"worker 1 (pid {stalled})"
        rest_rows, grpc_rows, readiness = [], [], []
        until = time.monotonic() + STALLED_S
        while time.monotonic() < until and min(map(len, (rest_rows, grpc_rows, readiness))) < 3:
            status = version_ready(base, timeout=0.5)
            if status is not None:
                readiness.append(status)
            row = index_row(base, timeout=0.5)
            if row is not None:
                rest_rows.append(row)
            answer = grpc_row(server.target, timeout=0.5)
            if answer is not None:
                grpc_rows.append(answer)
        assert rest_rows and grpc_rows and readiness, "worker 0 did not answer, worker 1 stopped"
        assert set(readiness) == {503}, readiness
        for row in rest_rows:
            assert row["state"] == "LOADING", row
            assert f"not loaded yet in {behind}: not seen yet" in row["reason"], row
            assert "ready in worker 0 (pid " in row["reason"], row
        for answer in grpc_rows:
            assert answer.state == "LOADING" and behind in answer.reason, answer
    finally:
        if stalled:
            os.kill(stalled, signal.SIGCONT)
    try:
        check_convergence(base)
    finally:
        server.terminate()
        assert server.wait(60) == 0


def check_convergence(base: str) -> None:
    """While worker 1 catches up: once any answer says version 2 is READY (index) or ready
    (readiness), every call naming version 2, whichever worker it reaches, is answered."""
    first_ready: list[float] = []
    calls: list[tuple[float, str]] = []  # (started, error or "")
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            row = index_row(base, timeout=30)
            if row is not None and row["state"] == "READY" and not first_ready:
                first_ready.append(time.monotonic())
            if version_ready(base) == 200 and not first_ready:
                first_ready.append(time.monotonic())

    def infer() -> None:
        latents = np.zeros((1, 2), np.float32)
        while not done.is_set():
            started = time.monotonic()
            try:
                infer_rest(base, f"{NAME}-decoder", latents, version="2")
                calls.append((started, ""))
            except (RuntimeError, OSError) as e:
                calls.append((started, str(e)))

    threads = [threading.Thread(target=f, daemon=True) for f in (watch, watch, infer, infer)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: first_ready, timeout=30, what="version 2 READY in the index")
        time.sleep(1.0)  # calls after it, spread over both workers
    finally:
        done.set()
        for t in threads:
            t.join(30)
    after = [(s, e) for s, e in calls if s > first_ready[0]]
    assert len(after) >= 4, calls
    failed = [e for _, e in after if e]
    assert not failed, failed
    rows = [index_row(base, timeout=30) for _ in range(8)]
    assert all(r is not None and r["state"] == "READY" and r["reason"] == "" for r in rows), rows
    assert {version_ready(base) for _ in range(8)} == {200}
