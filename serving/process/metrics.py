"""Prometheus metrics: definitions, the recording helpers the server calls, and the /metrics
HTTP endpoint. Each server owns its own CollectorRegistry, so several servers in one process
(tests) do not collide.

Exported series (labels in braces; `version` is the model's repository version, empty for
a call that failed before a version was chosen):
  latentserve_requests_total{model,method,version}              RPCs received
  latentserve_request_errors_total{model,method,code,version}   RPCs that ended non-OK
  latentserve_request_latency_seconds{model,method,version}     RPC wall time (histogram)
  latentserve_samples_total{model,method,version}               images/latents answered
  latentserve_batch_rows{model,graph,version}            rows per onnxruntime run (histogram)
  latentserve_batch_requests{model,graph,version}        requests merged per run (histogram)
  latentserve_inference_seconds{model,graph,version}     onnxruntime run time (histogram)
  latentserve_queue_wait_seconds{model,graph,version}    each request's wait for its run
  latentserve_queue_depth{model,graph,version}           requests waiting for a batch
  latentserve_model_ready{model,version}                 1 when that version is READY, else 0
  latentserve_model_loads_total{model,version,outcome}   version loads (outcome ok / failed)
  latentserve_model_unloads_total{model,version}         versions released
  latentserve_http_connections_closed_total{reason}      HTTP connections closed by the
                                                         server: limit (over
                                                         max_http_connections, refused),
                                                         header_timeout (no request head in
                                                         http_header_timeout_s)
With several worker processes (serving/process/supervisor.py) also:
  latentserve_worker_requests_total{worker}              RPCs received by each worker
  latentserve_worker_up{worker,pid}                      1 per live worker process
  latentserve_worker_restarts_total                      workers the supervisor restarted
docs/operations.md has the table with what each means.

Worker processes use prometheus_client's multiprocess mode: the supervisor sets
PROMETHEUS_MULTIPROC_DIR before it starts them, every worker writes its values there, and the
supervisor's one /metrics endpoint sums them (counters and histograms over all workers; queue
depth summed over the live ones; model_ready the minimum over the live ones, so 1 means ready
in every worker).
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class BatchMetrics:
    """The batcher's observer for one (model, version, graph)."""

    def __init__(self, metrics: Metrics, model: str, version: str, graph: str) -> None:
        self._rows = metrics.batch_rows.labels(model, graph, version)
        self._requests = metrics.batch_requests.labels(model, graph, version)
        self._seconds = metrics.inference_seconds.labels(model, graph, version)
        self._depth = metrics.queue_depth.labels(model, graph, version)
        self._wait = metrics.queue_wait.labels(model, graph, version)

    def batch_ran(self, rows: int, requests: int, seconds: float) -> None:
        self._rows.observe(rows)
        self._requests.observe(requests)
        self._seconds.observe(seconds)

    def queue_changed(self, depth: int) -> None:
        self._depth.set(depth)

    def queue_waited(self, seconds: float) -> None:
        self._wait.observe(seconds)


class Metrics:
    def __init__(self, worker: int | None = None) -> None:
        self.registry = CollectorRegistry()
        self._define_call_metrics()
        self._define_batch_metrics()
        self._define_model_metrics()
        # Per-worker counts, so an operator sees how SO_REUSEPORT spread the connections.
        self._worker_requests: Counter | None = None
        if worker is not None:
            self._worker_requests = self._define_worker_metrics(str(worker))
        # Label children by (model, method), for observe_request. The samples series is
        # kept apart so that it appears only once a call has answered samples.
        self._request_series: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._samples_series: dict[tuple[str, str, str], Counter] = {}
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def _define_call_metrics(self) -> None:
        """Per RPC, labelled {model, method}: received, failed (and the code), wall time,
        samples answered."""
        r = self.registry
        self.requests = Counter(
            "latentserve_requests", "RPCs received", ["model", "method", "version"], registry=r
        )
        self.errors = Counter(
            "latentserve_request_errors",
            "RPCs that ended with a non-OK gRPC status",
            ["model", "method", "code", "version"],
            registry=r,
        )
        self.latency = Histogram(
            "latentserve_request_latency_seconds",
            "RPC wall time in seconds",
            ["model", "method", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.samples = Counter(
            "latentserve_samples",
            "Images or latents processed",
            ["model", "method", "version"],
            registry=r,
        )

    def _define_batch_metrics(self) -> None:
        """Per onnxruntime run, labelled {model, graph}: the batcher's observations."""
        r = self.registry
        self.batch_rows = Histogram(
            "latentserve_batch_rows",
            "Rows (images or latents) per onnxruntime run",
            ["model", "graph", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "latentserve_batch_requests",
            "Requests merged into one onnxruntime run",
            ["model", "graph", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "latentserve_inference_seconds",
            "onnxruntime run time in seconds",
            ["model", "graph", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "latentserve_queue_wait_seconds",
            "Each request's wait in the batcher's queue before its onnxruntime run, in seconds",
            ["model", "graph", "version"],
            buckets=(0.0, *LATENCY_BUCKETS),
            registry=r,
        )
        self.queue_depth = Gauge(
            "latentserve_queue_depth",
            "Requests waiting for a batch",
            ["model", "graph", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )

    def _define_model_metrics(self) -> None:
        r = self.registry
        self.model_ready = Gauge(
            "latentserve_model_ready",
            "1 when the model version is READY",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.model_loads = Counter(
            "latentserve_model_loads",
            "Model version loads, by outcome (ok, failed)",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.model_unloads = Counter(
            "latentserve_model_unloads", "Model versions released", ["model", "version"], registry=r
        )
        self.http_connections_closed = Counter(
            "latentserve_http_connections_closed",
            "HTTP connections the server closed: refused over the limit, or too slow",
            ["reason"],
            registry=r,
        )

    def _define_worker_metrics(self, label: str) -> Counter:
        """This worker's series: its up gauge (set to 1) and its request counter (returned)."""
        r = self.registry
        requests = Counter(
            "latentserve_worker_requests",
            "RPCs received by each worker process",
            ["worker"],
            registry=r,
        ).labels(label)
        # "liveall": the collector adds the pid label and drops a dead worker's series.
        Gauge(
            "latentserve_worker_up",
            "1 for each live worker process",
            ["worker"],
            registry=r,
            multiprocess_mode="liveall",
        ).labels(label).set(1)
        return requests

    def batch_observer(self, model: str, version: str, graph: str) -> BatchMetrics:
        return BatchMetrics(self, model, version, graph)

    def model_event(self, event: str, model: str, version: str) -> None:
        """A repository event: "loaded", "failed" or "unloaded"."""
        if event == "unloaded":
            self.model_unloads.labels(model, version).inc()
        else:
            self.model_loads.labels(model, version, "ok" if event == "loaded" else "failed").inc()

    def observe_request(
        self,
        model: str,
        method: str,
        code: str,
        seconds: float,
        samples: int = 0,
        version: str = "",
    ) -> None:
        # labels() costs a lock and a tuple per call; the children are looked up once.
        key = (model, method, version)
        series = self._request_series.get(key)
        if series is None:
            series = (
                self.requests.labels(model, method, version),
                self.latency.labels(model, method, version),
            )
            self._request_series[key] = series
        requests, latency = series
        requests.inc()
        if self._worker_requests is not None:
            self._worker_requests.inc()
        latency.observe(seconds)
        if code != "OK":
            self.errors.labels(model, method, code, version).inc()
        elif samples:
            counter = self._samples_series.get(key)
            if counter is None:
                counter = self._samples_series[key] = self.samples.labels(model, method, version)
            counter.inc(samples)

    def serve_http(self, host: str, port: int) -> None:
        """Expose /metrics on host:port in a background thread."""
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, self._http.server_port)

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
