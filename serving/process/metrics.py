"""Prometheus metrics: definitions, the recording helpers the server calls, and the /metrics
HTTP endpoint. Each server owns its own CollectorRegistry, so several servers in one process
(tests) do not collide.

Exported series (labels in braces):
  latentserve_requests_total{model,method}               RPCs received
  latentserve_request_errors_total{model,method,code}    RPCs that ended with a non-OK status
  latentserve_request_latency_seconds{model,method}      RPC wall time (histogram)
  latentserve_samples_total{model,method}                images/latents answered (OK calls)
  latentserve_batch_rows{model,graph}                    rows per onnxruntime run (histogram)
  latentserve_batch_requests{model,graph}                requests merged per run (histogram)
  latentserve_inference_seconds{model,graph}             onnxruntime run time (histogram)
  latentserve_queue_depth{model,graph}                   requests waiting for a batch
  latentserve_model_ready{model}                         1 when READY, else 0
  latentserve_http_connections_closed_total{reason}      HTTP connections closed by the
                                                         server: limit (over
                                                         max_http_connections, refused),
                                                         header_timeout (no request head in
                                                         http_header_timeout_s)
With several worker processes (serving/process/supervisor.py) also:
  latentserve_worker_requests_total{worker}              RPCs received by each worker
  latentserve_worker_up{worker,pid}                      1 per live worker process

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
    """The batcher's observer for one (model, graph)."""

    def __init__(self, metrics: Metrics, model: str, graph: str) -> None:
        self._rows = metrics.batch_rows.labels(model, graph)
        self._requests = metrics.batch_requests.labels(model, graph)
        self._seconds = metrics.inference_seconds.labels(model, graph)
        self._depth = metrics.queue_depth.labels(model, graph)

    def batch_ran(self, rows: int, requests: int, seconds: float) -> None:
        self._rows.observe(rows)
        self._requests.observe(requests)
        self._seconds.observe(seconds)

    def queue_changed(self, depth: int) -> None:
        self._depth.set(depth)


class Metrics:
    def __init__(self, worker: int | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "latentserve_requests", "RPCs received", ["model", "method"], registry=r
        )
        self.errors = Counter(
            "latentserve_request_errors",
            "RPCs that ended with a non-OK gRPC status",
            ["model", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "latentserve_request_latency_seconds",
            "RPC wall time in seconds",
            ["model", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.samples = Counter(
            "latentserve_samples", "Images or latents processed", ["model", "method"], registry=r
        )
        self.batch_rows = Histogram(
            "latentserve_batch_rows",
            "Rows (images or latents) per onnxruntime run",
            ["model", "graph"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "latentserve_batch_requests",
            "Requests merged into one onnxruntime run",
            ["model", "graph"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "latentserve_inference_seconds",
            "onnxruntime run time in seconds",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "latentserve_queue_depth",
            "Requests waiting for a batch",
            ["model", "graph"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_ready = Gauge(
            "latentserve_model_ready",
            "1 when the model is READY",
            ["model"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.http_connections_closed = Counter(
            "latentserve_http_connections_closed",
            "HTTP connections the server closed: refused over the limit, or too slow",
            ["reason"],
            registry=r,
        )
        # Per-worker counts, so an operator sees how SO_REUSEPORT spread the connections.
        self._worker_requests: Counter | None = None
        if worker is not None:
            label = str(worker)
            self._worker_requests = Counter(
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
        # Label children by (model, method), for observe_request. The samples series is
        # kept apart so that it appears only once a call has answered samples.
        self._request_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._samples_series: dict[tuple[str, str], Counter] = {}
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def batch_observer(self, model: str, graph: str) -> BatchMetrics:
        return BatchMetrics(self, model, graph)

    def observe_request(
        self, model: str, method: str, code: str, seconds: float, samples: int = 0
    ) -> None:
        # labels() costs a lock and a tuple per call; the children are looked up once.
        series = self._request_series.get((model, method))
        if series is None:
            series = (self.requests.labels(model, method), self.latency.labels(model, method))
            self._request_series[(model, method)] = series
        requests, latency = series
        requests.inc()
        if self._worker_requests is not None:
            self._worker_requests.inc()
        latency.observe(seconds)
        if code != "OK":
            self.errors.labels(model, method, code).inc()
        elif samples:
            counter = self._samples_series.get((model, method))
            if counter is None:
                counter = self._samples_series[(model, method)] = self.samples.labels(model, method)
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
