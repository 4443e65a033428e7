"""The shipped monitoring assets against the real thing: Debian's `prometheus` scrapes a real
`latent-serve --workers 2` under a short load, with deploy/prometheus/latentserve-rules.yml
loaded; every query of deploy/grafana/latentserve-dashboard.json and every recorded series
behind an alert must return data, and every rule must evaluate without error. The same
server shows the statistics extension summed over both workers; then a SIGKILLed worker
makes the worker-restart alert fire.

Prometheus listens on 127.0.0.1:<free port> with its own temporary storage and a 1 s scrape
and evaluation interval, and is stopped by its pid. Where it is not installed (`apt-get
install prometheus`; .ci/run does that) the Prometheus tests skip with that reason.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fixtures.servers import SubprocessServer, free_port
from prometheus_client.parser import text_string_to_metric_families

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.tensors import array_to_tensor

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
MODELS_DIR = ROOT / "models"
RULES = ROOT / "deploy" / "prometheus" / "latentserve-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "latentserve-dashboard.json"
# What Grafana puts in for the dashboard's variables and macros.
GRAFANA_VARIABLES = {"$__rate_interval": "20s", "$model": ".*", "$instance": ".*"}
LOAD_SECONDS = 6.0
CHANNELS = 6
MODEL = "mnist-vae"
LATENTS = np.random.default_rng(0).normal(size=(2, 2)).astype(np.float32)
BAD_LATENTS = np.array([[0.0, np.nan]], dtype=np.float32)


@dataclass
class Load:
    """Native Decode calls on `CHANNELS` channels (each its own connection, so both workers
    get some), REST decode calls on fresh connections, and a few bad calls for the error
    series; bounded by LOAD_SECONDS."""

    target: str
    http_port: int
    decoded: int = 0  # successful decoder calls, native and REST
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        end = time.monotonic() + LOAD_SECONDS
        threads = [threading.Thread(target=self._native, args=(end,)) for _ in range(CHANNELS)]
        threads.append(threading.Thread(target=self._rest, args=(end,)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(LOAD_SECONDS + 30)

    def _count(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.decoded += 1
            else:
                self.failed += 1

    def _native(self, end: float) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(self.target, options=options) as channel:
            decode = pb_grpc.AutoencoderStub(channel).Decode
            calls = 0
            while time.monotonic() < end:
                calls += 1
                bad = calls % 25 == 0
                request = pb.DecodeRequest(
                    model=MODEL, latents=array_to_tensor(BAD_LATENTS if bad else LATENTS)
                )
                try:
                    decode(request, timeout=10)
                    self._count(True)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                    self._count(False)

    def _rest(self, end: float) -> None:
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL}-decoder/infer"
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "latents",
                        "datatype": "FP32",
                        "shape": [2, 2],
                        "data": LATENTS.ravel().tolist(),
                    }
                ]
            }
        ).encode()
        while time.monotonic() < end:
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
                assert r.status == 200
            self._count(True)


@dataclass
class Served:
    proc: SubprocessServer
    metrics_port: int
    http_port: int
    load: Load
    load_ended: float  # time.time()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    metrics_port, http_port = free_port(), free_port()
    proc = SubprocessServer(
        MODELS_DIR,
        ["--workers", "2", "--metrics-port", str(metrics_port), "--http-port", str(http_port)],
    ).start()
    try:
        proc.wait_for_log("ready: serving")
        load = Load(proc.target, http_port)
        yield Served(proc, metrics_port, http_port, load, 0.0)
    finally:
        proc.stop()


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[str]

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr, time=f"{at:.3f}")
        return data["result"]  # type: ignore[no-any-return]


NO_PROMETHEUS = "Debian's prometheus is not installed (apt-get install -y prometheus)"


def start_prometheus(work: Path, metrics_port: int) -> Prometheus | None:
    """Prometheus scraping 127.0.0.1:metrics_port every second, or None if not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    port = free_port()
    config = work / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "latentserve",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "prometheus.log").open("w"),
        text=True,
    )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process)
    end = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return prometheus
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > end:
            process.kill()
            raise AssertionError((work / "prometheus.log").read_text()[-3000:])
        time.sleep(0.2)


@pytest.fixture(scope="module")
def observed(
    served: Served, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Prometheus | None, float]]:
    """The load, with Prometheus scraping the server throughout where it is installed;
    yields it (or None) and the time to query at (just after the load, once scraped and
    evaluated)."""
    prom = start_prometheus(tmp_path_factory.mktemp("prometheus"), served.metrics_port)
    try:
        time.sleep(2)  # scrapes before the load: the counters' starting values
        served.load.run()
        at = time.time() + 3
        time.sleep(4)  # the last scrapes and rule evaluations (and statistics shared) after it
        yield prom, at
    finally:
        if prom is not None:
            prom.process.terminate()  # the pid this test started
            try:
                prom.process.wait(10)
            except subprocess.TimeoutExpired:
                prom.process.kill()
                prom.process.wait(5)


@pytest.fixture(scope="module")
def prometheus(observed: tuple[Prometheus | None, float]) -> tuple[Prometheus, float]:
    prom, at = observed
    if prom is None:
        pytest.skip(NO_PROMETHEUS)
    return prom, at


def grafana_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((f"{panel['title']} {target['refId']}", expr))
    return queries


def rule_groups() -> list[dict[str, Any]]:
    import yaml

    return yaml.safe_load(RULES.read_text())["groups"]  # type: ignore[no-any-return]


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [float(s["value"][1]) for s in result if math.isfinite(float(s["value"][1]))]


def test_every_dashboard_query_returns_data(prometheus: tuple[Prometheus, float]) -> None:
    prom, at = prometheus
    queries = grafana_queries()
    assert len(queries) >= 10
    empty = {name: expr for name, expr in queries if not finite_values(prom.query(expr, at))}
    assert not empty, f"dashboard queries with no data: {json.dumps(empty, indent=1)}"


def test_the_dashboard_shows_both_workers(prometheus: tuple[Prometheus, float]) -> None:
    prom, at = prometheus
    spread = prom.query("sum by (worker) (rate(latentserve_worker_requests_total[20s]))", at)
    assert {s["metric"]["worker"] for s in spread} == {"0", "1"}
    assert all(v > 0 for v in finite_values(spread)), spread


def test_every_recorded_signal_behind_an_alert_returns_data(
    prometheus: tuple[Prometheus, float],
) -> None:
    prom, at = prometheus
    records = [r["record"] for g in rule_groups() for r in g["rules"] if "record" in r]
    alerts = [r for g in rule_groups() for r in g["rules"] if "alert" in r]
    assert len(records) == len(alerts) == 4
    for alert in alerts:  # each alert reads a recorded series
        assert any(record in alert["expr"] for record in records), alert["alert"]
    empty = [record for record in records if not finite_values(prom.query(record, at))]
    assert not empty, f"recorded series with no data: {empty}"
    # The load had no server-side failures, was ready throughout and restarted nothing.
    assert finite_values(prom.query("latentserve:server_error_ratio:rate5m", at)) == [0.0]
    assert finite_values(prom.query("latentserve:model_ready:min", at)) == [1.0]
    assert finite_values(prom.query("latentserve:worker_restarts:increase15m", at)) == [0.0]


def test_every_rule_evaluates_and_every_alert_expression_runs(
    prometheus: tuple[Prometheus, float],
) -> None:
    prom, at = prometheus
    loaded = prom.get("/api/v1/rules")["groups"]
    rules = [r for g in loaded for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in rule_groups())
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy
    for rule in rules:
        if rule["type"] == "alerting":
            prom.query(rule["query"], at)  # a valid query (empty: the alert is not firing)
            assert rule["state"] == "inactive", rule


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("Debian's prometheus (promtool) is not installed")
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_statistics_sum_over_both_workers(
    served: Served, observed: tuple[Prometheus | None, float]
) -> None:
    """Any worker answers for the whole server (each shares its figures within a second)."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10
    ) as response:
        families = text_string_to_metric_families(response.read().decode())
        per_worker = {
            s.labels["worker"]: s.value
            for f in families
            for s in f.samples
            if s.name == "latentserve_worker_requests_total"
        }
    assert per_worker.get("0", 0) > 0 and per_worker.get("1", 0) > 0, per_worker
    url = f"http://127.0.0.1:{served.http_port}/v2/models/{MODEL}-decoder/stats"
    # Each worker answers for both; fresh connections reach either.
    for _ in range(4):
        with urllib.request.urlopen(url, timeout=10) as response:
            (stat,) = json.load(response)["model_stats"]
        inference = stat["inference_stats"]
        assert inference["success"]["count"] == served.load.decoded
        assert stat["inference_count"] == 2 * served.load.decoded
        # Bad latents are refused at the edge, before the model: not a model failure.
        assert inference["fail"]["count"] == 0


def test_a_killed_worker_fires_the_restart_alert(
    served: Served, prometheus: tuple[Prometheus, float]
) -> None:
    """Last in this module: it kills a worker (statistics of the run above are read first)."""
    prom, _ = prometheus
    with urllib.request.urlopen(
        f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10
    ) as response:
        families = text_string_to_metric_families(response.read().decode())
        pids = {
            s.labels["worker"]: int(s.labels["pid"])
            for f in families
            for s in f.samples
            if s.name == "latentserve_worker_up"
        }
    os.kill(pids["1"], signal.SIGKILL)  # a worker of the server this module started
    served.proc.wait_for_log("worker 1 .* is back and serving", timeout=60)
    end = time.monotonic() + 30  # a bound for scrapes and rule evaluations, not a timing claim
    while True:
        firing = prom.query('ALERTS{alertname="LatentserveWorkerRestarts"}', time.time())
        if any(a["metric"]["alertstate"] == "firing" for a in firing):
            break
        assert time.monotonic() < end, firing
        time.sleep(0.5)
    restarts = prom.query("latentserve_worker_restarts_total", time.time())
    assert finite_values(restarts) == [1.0]
