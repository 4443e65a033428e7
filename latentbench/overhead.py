"""Server CPU per call: what one single-image call costs the server beyond transport and model.

Against one running server (batching on), 64 concurrent streams send health checks, then
single-image Encode calls, in a few interleaved rounds (each figure is the median over the
rounds, so both kinds of call see the same machine load). For each run the server's CPU-seconds (utime + stime of all its
threads, from /proc/PID/stat) are read over the steady middle of the measured window, and

    CPU per call = (server CPU-seconds / wall-seconds over that stretch) / (calls/s of the run).

Health checks run no model and no latentserve code, so theirs is the transport's share.
The model's share is onnxruntime's CPU per image for the batches the server actually ran
(mean requests per batch from its own metrics over the Encode run), measured in-process
with the server's session options. What is left of an Encode call is the serving code's
own share (batcher, conversions, futures, metrics):

    overhead = Encode CPU per call - health CPU per call - model CPU per image.

The load comes from h2load (Debian's nghttp2-client: a C HTTP/2 client that costs the
machine's cores almost nothing, so the server's CPU is what is measured) when it is on the
PATH, else from the Python load generator, which shares the cores with the server. h2load
cannot read gRPC trailers, so Encode errors are counted from the server's own metrics.
Linux only (reads /proc).
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from latentbench import h2load
from latentbench.inprocess import OrtModel
from latentbench.loadgen import HEALTH_CHECK, SERVICE, LoadGenerator
from latentbench.serverproc import ServerProcess, cpu_seconds
from latentbench.suite import request_bytes

# Target of issue 16: the serving code's share of a call, in ms of CPU.
OVERHEAD_TARGET_MS = 0.1
# The Python load generator starts its workers together this long after being asked.
LOADGEN_START_DELAY_S = 0.3
# Fraction of the measured window left out at each end before reading the server's CPU.
EDGE = 0.15
# h2load: this many connections, streams spread evenly over them.
H2LOAD_CONNECTIONS = 8


@dataclass
class CpuPerCall:
    rpc: str
    driver: str  # "h2load" or "python"
    concurrency: int
    calls: int
    calls_per_s: float
    server_cpu_cores: float  # CPU-seconds per wall-second over the sampled stretch
    cpu_ms_per_call: float
    errors: dict[str, int] = field(default_factory=dict)
    requests_per_batch: float = 0.0  # mean, from the server's metrics (Encode only)
    rounds_ms: list[float] = field(default_factory=list)  # CPU per call of each round


@dataclass
class OverheadResult:
    health: CpuPerCall
    encode: CpuPerCall
    model_batch: int
    model_cpu_ms_per_image: float
    overhead_ms: float
    target_ms: float = OVERHEAD_TARGET_MS

    @property
    def met(self) -> bool:
        return self.overhead_ms <= self.target_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


class CpuWindow:
    """Reads a process's CPU clock at two instants in a background thread."""

    def __init__(self, pid: int, start: float, end: float) -> None:
        self.cores = 0.0
        self._thread = threading.Thread(target=self._sample, args=(pid, start, end), daemon=True)
        self._thread.start()

    def _sample(self, pid: int, start: float, end: float) -> None:
        _sleep_until(start)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        _sleep_until(end)
        self.cores = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)

    def result(self) -> float:
        self._thread.join()
        return self.cores


def h2load_run(
    server: ServerProcess,
    method: str,
    message: bytes,
    streams: int,
    warmup_s: float,
    duration_s: float,
) -> tuple[int, float, float]:
    """(calls answered, calls/s, server cores) for `streams` concurrent h2load streams."""
    started = time.monotonic()
    window = CpuWindow(
        server.pid,
        started + warmup_s + EDGE * duration_s,
        started + warmup_s + (1 - EDGE) * duration_s,
    )
    result = h2load.run(
        server.target,
        method,
        message,
        streams=streams,
        connections=H2LOAD_CONNECTIONS,
        warmup_s=warmup_s,
        duration_s=duration_s,
    )
    return result.succeeded, result.calls_per_s, window.result()


def python_load_run(
    server: ServerProcess,
    load: LoadGenerator,
    rpc: str,
    message: bytes,
    streams: int,
    warmup_s: float,
    duration_s: float,
) -> tuple[int, float, float, dict[str, int]]:
    """(calls answered, calls/s, server cores, errors) with the Python load generator."""
    started = time.monotonic()
    measured_from = started + LOADGEN_START_DELAY_S + warmup_s
    window = CpuWindow(
        server.pid,
        measured_from + EDGE * duration_s,
        measured_from + (1 - EDGE) * duration_s,
    )
    agg = load.run(
        server.target,
        rpc,
        message,
        1,
        streams,
        warmup_s=warmup_s,
        duration_s=duration_s,
        max_requests=10_000_000,
    )
    calls = len(agg.latencies_s)
    rate = calls / agg.window_s if agg.window_s > 0 else 0.0
    return calls, rate, window.result(), agg.errors


def server_counters(metrics_port: int) -> dict[str, float]:
    """Sums of the server's error counter and batch-size histogram (all models). Calls
    CANCELLED are left out: h2load closes its connections with calls still in flight when
    its time is up, and the server counts those as cancelled."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    sums = {"errors": 0.0, "batches": 0.0, "batched_requests": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if 'code="CANCELLED"' in line:
            continue
        key = {
            "latentserve_request_errors_total": "errors",
            "latentserve_batch_requests_count": "batches",
            "latentserve_batch_requests_sum": "batched_requests",
        }.get(name)
        if key:
            sums[key] += float(line.rsplit(" ", 1)[1])
    return sums


def measure_cpu_per_call(
    server: ServerProcess,
    rpc: str,
    message: bytes,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    load: LoadGenerator | None = None,
    metrics_port: int = 0,
) -> CpuPerCall:
    """Drive `rpc` ("HealthCheck" or an Autoencoder method) at `concurrency` streams, with
    h2load unless a Python `load` generator is given."""
    before = server_counters(metrics_port) if metrics_port else {}
    errors: dict[str, int] = {}
    if load is None:
        method = HEALTH_CHECK if rpc == "HealthCheck" else SERVICE + rpc
        calls, rate, cores = h2load_run(server, method, message, concurrency, warmup_s, duration_s)
        driver = "h2load"
    else:
        calls, rate, cores, errors = python_load_run(
            server, load, rpc, message, concurrency, warmup_s, duration_s
        )
        driver = "python"
    per_batch = 0.0
    if metrics_port:
        after = server_counters(metrics_port)
        if after["errors"] > before["errors"]:
            errors = {**errors, "server_counted": int(after["errors"] - before["errors"])}
        batches = after["batches"] - before["batches"]
        if batches:
            per_batch = (after["batched_requests"] - before["batched_requests"]) / batches
    return CpuPerCall(
        rpc=rpc,
        driver=driver,
        concurrency=concurrency,
        calls=calls,
        calls_per_s=round(rate, 1),
        server_cpu_cores=round(cores, 3),
        cpu_ms_per_call=round(1000 * cores / rate, 4) if rate else float("nan"),
        errors=errors,
        requests_per_batch=round(per_batch, 1),
    )


def model_cpu_ms_per_image(ort: OrtModel, batch: int, min_s: float = 1.0) -> float:
    """onnxruntime's CPU time per image for batched encoder runs, from this process's CPU
    clock (every onnxruntime thread counts; no load runs while this measures)."""
    run = ort.call("Encode", batch)
    run()
    images = 0
    start_wall, start_cpu = time.monotonic(), time.process_time()
    while time.monotonic() - start_wall < min_s:
        run()
        images += batch
    return 1000 * (time.process_time() - start_cpu) / images


def measure_overhead(
    server: ServerProcess,
    ort: OrtModel,
    encode_request: bytes,
    *,
    concurrency: int = 64,
    rounds: int = 3,
    warmup_s: float = 0.5,
    duration_s: float = 2.0,
    load: LoadGenerator | None = None,
    metrics_port: int = 0,
    log: Callable[[str], None] = print,
) -> OverheadResult:
    """`rounds` times health checks then single-image Encode, interleaved so that both see
    the same machine load; then the model in-process (see the module docstring). Each
    figure is the median over the rounds. `metrics_port`: the server's, for error counts
    and batch sizes."""
    health_request = health_pb2.HealthCheckRequest(service="").SerializeToString()
    runs: dict[str, list[CpuPerCall]] = {"HealthCheck": [], "Encode": []}
    for _ in range(rounds):
        for rpc, message in (("HealthCheck", health_request), ("Encode", encode_request)):
            m = measure_cpu_per_call(
                server,
                rpc,
                message,
                concurrency=concurrency,
                warmup_s=warmup_s,
                duration_s=duration_s,
                load=load,
                metrics_port=metrics_port,
            )
            runs[rpc].append(m)
            log(
                f"  cpu per call {rpc:<11} c={concurrency} ({m.driver}): "
                f"{m.cpu_ms_per_call:.3f} ms ({m.calls_per_s:,.0f} calls/s, server "
                f"{m.server_cpu_cores:.2f} cores"
                + (f", {m.requests_per_batch:g} requests per batch" if m.requests_per_batch else "")
                + ")"
            )
    health, encode = _median_run(runs["HealthCheck"]), _median_run(runs["Encode"])
    # The batches the server ran; as many as the callers when its metrics are not read.
    batch = max(1, round(encode.requests_per_batch)) if encode.requests_per_batch else concurrency
    # The least disturbed of three: on a shared machine, noise only ever adds CPU time.
    model_ms = min(model_cpu_ms_per_image(ort, batch, 0.5) for _ in range(3))
    overhead = encode.cpu_ms_per_call - health.cpu_ms_per_call - model_ms
    log(
        f"  medians of {rounds}: health {health.cpu_ms_per_call:.3f} ms, Encode "
        f"{encode.cpu_ms_per_call:.3f} ms, model {model_ms:.3f} ms/image (batch {batch}); "
        f"serving overhead {overhead:.3f} ms per call (target <= {OVERHEAD_TARGET_MS} ms)"
    )
    return OverheadResult(health, encode, batch, round(model_ms, 4), round(overhead, 4))


def _median_run(runs: list[CpuPerCall]) -> CpuPerCall:
    """One CpuPerCall whose figures are the medians over `runs` (counts summed)."""
    errors: dict[str, int] = {}
    for r in runs:
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
    first = runs[0]
    return CpuPerCall(
        rpc=first.rpc,
        driver=first.driver,
        concurrency=first.concurrency,
        calls=sum(r.calls for r in runs),
        calls_per_s=statistics.median(r.calls_per_s for r in runs),
        server_cpu_cores=statistics.median(r.server_cpu_cores for r in runs),
        cpu_ms_per_call=statistics.median(r.cpu_ms_per_call for r in runs),
        errors=errors,
        requests_per_batch=statistics.median(r.requests_per_batch for r in runs),
        rounds_ms=[r.cpu_ms_per_call for r in runs],
    )


def run_overhead(
    models_dir: Path,
    model: str,
    *,
    server_flags: tuple[str, ...] = (),
    intra_op_threads: int = 1,
    concurrency: int = 64,
    rounds: int = 3,
    warmup_s: float = 0.5,
    duration_s: float = 2.0,
    log: Callable[[str], None] = print,
) -> OverheadResult:
    """Start a batching-on server and measure (h2load, or the Python load generator)."""
    metrics_port = _free_port()
    flags = [
        "--intra-op-threads",
        str(intra_op_threads),
        "--metrics-port",
        str(metrics_port),
        *server_flags,
    ]
    ort = OrtModel(models_dir / model, intra_op_threads=intra_op_threads)
    request = request_bytes("Encode", model, 1, ort.manifest)
    with ServerProcess(models_dir, flags, name="overhead") as server:
        kwargs: dict[str, Any] = {
            "concurrency": concurrency,
            "rounds": rounds,
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "metrics_port": metrics_port,
            "log": log,
        }
        if h2load.available():
            return measure_overhead(server, ort, request, **kwargs)
        log("  h2load not found (Debian: nghttp2-client); using the Python load generator")
        with LoadGenerator(2) as load:
            return measure_overhead(server, ort, request, load=load, **kwargs)


def _free_port() -> int:
    """A free loopback port for the server's metrics (0 there means off, not any port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))
