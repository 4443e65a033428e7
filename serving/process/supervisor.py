"""The process model for `--workers N`: one supervisor process and N worker processes that
share the gRPC port, so one server uses N cores.

The supervisor holds no gRPC object and never touches a request: it only starts, watches and
stops workers, and serves the one /metrics endpoint. The kernel spreads incoming
connections over the workers (SO_REUSEPORT, as in grpc's examples/python/multiprocessing);
nothing dispatches calls, so there is no shared bottleneck in the data path. What that does
and does not balance is in docs/deployment.md, "Scaling on one machine".

- Workers are started with the "spawn" method: a fresh interpreter each, so no gRPC or
  onnxruntime state is ever inherited across fork. Each loads and warms up every model,
  then binds the port with grpc.so_reuseport=1. The supervisor first checks that the port is
  free with a plain bind (serving/process/startup.py), then keeps a reservation socket bound to it
  with SO_REUSEPORT but not SO_REUSEADDR for its whole life: our workers can join it, while
  another latent-serve's check fails, so the port is shared with our own workers only. With
  --port 0 the reservation is also how every worker gets the same port.
- Ready: a worker binds only once warm (a restarted worker takes no connection it cannot
  serve), and reports the whole server NOT_SERVING until the supervisor tells it (SIGUSR1)
  that every worker is warm; so a health probe on the shared port, whichever worker answers
  it, says SERVING only when all are. A worker restarted later announces itself as soon as
  it is warm.
- A worker that dies is restarted after a logged backoff (0.5 s doubling to 8 s). Five deaths
  within 60 s are a crash loop: the supervisor says so, stops the others and exits 1. A
  worker that fails before the first ready stops the start-up: its reason is logged once,
  exit 2 for a configuration problem (no servable model), 1 otherwise.
- SIGTERM or SIGINT: every worker gets SIGTERM and drains as a single server does (health
  NOT_SERVING, in-flight calls finish within grace_period_s); the supervisor exits 0 once all
  have exited 0. Workers ignore SIGINT, so a Ctrl-C on the terminal's process group drains
  them through the supervisor too.
- Metrics: prometheus_client's multiprocess mode, in a temporary PROMETHEUS_MULTIPROC_DIR
  that the supervisor creates before the first worker and deletes at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from latentserve.wording import counted
from serving.process.ports import port_error, reserve_port
from serving.process.settings import ServerSettings, StartupError
from serving.process.signals import hurry_wanted
from serving.process.startup import EXIT_STARTUP_ERROR, NO_MODEL_FIX

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

EXIT_WORKER_FAILED = 1
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW_S = 60.0
# After SIGTERM, how long past a worker's own drain time (drain delay + grace) the
# supervisor waits before it kills that worker.
STOP_MARGIN_S = 10.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")  # "0::/path" is the cgroup v2 membership


# -- how many workers -----------------------------------------------------------------------


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (cpu.max, as Docker's --cpus and Kubernetes CPU limits set it; a fractional quota rounds
    down, since a worker on a partial core is throttled rather than faster)."""
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return cores


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, membership: Path = PROC_CGROUP) -> float | None:
    """The tightest cgroup v2 cpu.max quota (in cores) on this process's cgroup path, or None."""
    try:
        lines = membership.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    paths = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    if not paths:
        return None
    folder = root / paths[0].lstrip("/")
    quotas = []
    while True:
        quota = read_cpu_max(folder / "cpu.max")
        if quota is not None:
            quotas.append(quota)
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return min(quotas) if quotas else None


def read_cpu_max(path: Path) -> float | None:
    """cpu.max holds "<quota> <period>" in microseconds, or "max <period>" for no limit."""
    try:
        quota, period = path.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def resolve_workers(settings: ServerSettings) -> int:
    return usable_cores() if settings.workers == "auto" else int(settings.workers)


def worker_settings(settings: ServerSettings, port: int, workers: int) -> ServerSettings:
    """What each worker runs with: the shared port, no metrics port of its own (the
    supervisor serves the aggregate), and onnxruntime threads so workers x threads <= cores."""
    threads = settings.intra_op_threads or max(1, usable_cores() // workers)
    if workers * threads > usable_cores():
        log.warning(
            "%d workers x %d onnxruntime threads (--intra-op-threads) exceed the %s; "
            "they will compete for them",
            workers,
            threads,
            counted(usable_cores(), "usable core"),
        )
    return settings.model_copy(
        update={"port": port, "metrics_port": 0, "intra_op_threads": threads}
    )


# -- the supervisor ---------------------------------------------------------------------------


@dataclass
class Worker:
    index: int
    process: BaseProcess
    conn: Connection
    warm: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0


@dataclass
class Supervisor:
    settings: ServerSettings
    workers: int
    running: dict[int, Worker] = field(default_factory=dict)
    deaths: list[float] = field(default_factory=list)
    restarts_due: dict[int, float] = field(default_factory=dict)
    all_ready: bool = False
    stopping: bool = False
    stop_deadline: float = 0.0
    exit_code: int = 0
    signals: list[int] = field(default_factory=list)
    restarts: int = 0  # workers restarted after dying (latentserve_worker_restarts_total)
    hurried: bool = False

    def run(self) -> int:
        reservations = [reserve_port(self.settings.host, self.settings.port, "port")]
        port = int(reservations[0].getsockname()[1])
        http_port = getattr(self.settings, "http_port", 0)
        if http_port:  # 0 means no HTTP: nothing to share
            reservations.append(reserve_port(self.settings.host, http_port, "http_port"))
        metrics_dir = tempfile.mkdtemp(prefix="latentserve-metrics-")
        self._metrics_dir = metrics_dir
        # Read by prometheus_client when each (spawned) worker imports it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        stop_metrics: Callable[[], None] | None = None
        wake_read, wake_write = socket.socketpair()
        try:
            if self.settings.metrics_port:
                stop_metrics = serve_aggregate_metrics(
                    self.settings.host, self.settings.metrics_port, metrics_dir, self
                )
            self._child_settings = worker_settings(self.settings, port, self.workers)
            self._context = multiprocessing.get_context("spawn")
            wake_read.setblocking(False)
            wake_write.setblocking(False)
            signal.set_wakeup_fd(wake_write.fileno())
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
            log.info(
                "starting %d workers on %s:%d (%d onnxruntime threads each)",
                self.workers,
                self.settings.host,
                port,
                self._child_settings.intra_op_threads,
            )
            for index in range(self.workers):
                self._start(index)
            self._loop(wake_read)
            if self.exit_code == 0:
                log.info("stopped: every worker drained and exited")
        finally:
            signal.set_wakeup_fd(-1)
            wake_read.close()
            wake_write.close()
            for worker in self.running.values():  # only after a failure: kill what is left
                worker.process.kill()
                worker.process.join(5)
            if stop_metrics is not None:
                stop_metrics()
            for reservation in reservations:
                reservation.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return self.exit_code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def _start(self, index: int, announce_at_once: bool = False) -> None:
        parent_end, child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_worker,
            args=(self._child_settings, index, child_end, announce_at_once, self._metrics_dir),
            name=f"latentserve-worker-{index}",
        )
        process.start()
        child_end.close()
        self.running[index] = Worker(index, process, parent_end)

    def _loop(self, wake: socket.socket) -> None:
        while self.running or (self.restarts_due and not self.stopping):
            ready = wait(
                [wake, *(w.conn for w in self.running.values()), *self._sentinels()],
                self._timeout(),
            )
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(64)
            if self.signals and not self.stopping:
                self._stop(f"received {signal.Signals(self.signals[0]).name}")
            if self.stopping and not self.hurried and hurry_wanted(self.signals):
                self._hurry()
            for worker in list(self.running.values()):
                if worker.conn in ready:
                    self._read_message(worker)
                if worker.process.sentinel in ready:
                    self._reap(worker)
            self._restart_due()
            if self.stopping and time.monotonic() > self.stop_deadline:
                for worker in self.running.values():
                    log.error("worker %d (pid %d) did not stop in time; killing it", *_id(worker))
                    worker.process.kill()
                self.exit_code = self.exit_code or EXIT_WORKER_FAILED
                self.stop_deadline = math.inf

    def _sentinels(self) -> list[int]:
        return [w.process.sentinel for w in self.running.values()]

    def _timeout(self) -> float | None:
        deadlines = [] if self.stopping else list(self.restarts_due.values())
        if self.stopping and self.stop_deadline != math.inf:
            deadlines.append(self.stop_deadline)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _read_message(self, worker: Worker) -> None:
        try:
            message: tuple[Any, ...] = worker.conn.recv()
        except (EOFError, OSError):
            return  # it died; the sentinel says so
        if message[0] == "failed" and not self.stopping:
            # A configuration problem (no servable model, port taken): the same in every
            # worker, so say it once and stop.
            log.error("%s", message[1])
            self.exit_code = EXIT_STARTUP_ERROR
            self._stop("a worker could not start", quiet=True)
        elif message[0] == "warm" and not self.stopping:  # never SERVING once stopping
            worker.warm = True
            if self.all_ready:
                log.info("worker %d (pid %d) is back and serving", *_id(worker))
            elif all(w.warm for w in self.running.values()) and len(self.running) == self.workers:
                self.all_ready = True
                for w in self.running.values():
                    with contextlib.suppress(ProcessLookupError):  # died meanwhile: reaped next
                        os.kill(w.pid, signal.SIGUSR1)
                _, models, default = message[1:]
                log.info(
                    "ready: serving %s (default %s) on %d workers (pids %s)",
                    ", ".join(models),
                    default or "none",
                    self.workers,
                    ", ".join(str(w.pid) for w in self.running.values()),
                )

    def _reap(self, worker: Worker) -> None:
        worker.process.join()
        worker.conn.close()
        del self.running[worker.index]
        mark_worker_dead(worker.pid)
        # Its version states no longer hold anyone back (serving/process/shared_repository.py).
        Path(self._metrics_dir, "repository", f"{worker.pid}.json").unlink(missing_ok=True)
        code = worker.process.exitcode
        how = describe_exit(code)
        if self.stopping:
            # -SIGTERM, -SIGUSR2: a worker still starting up, before its handlers existed.
            if code not in (0, -signal.SIGTERM, -signal.SIGUSR2) and self.exit_code == 0:
                log.warning("worker %d (pid %d) %s while stopping", *_id(worker), how)
                self.exit_code = EXIT_WORKER_FAILED
            return
        if not self.all_ready:
            log.error(
                "worker %d (pid %d) %s before it was ready (see its log above); stopping",
                *_id(worker),
                how,
            )
            self.exit_code = EXIT_WORKER_FAILED
            self._stop("start-up failed", quiet=True)
            return
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < CRASH_LOOP_WINDOW_S] + [now]
        if len(self.deaths) >= CRASH_LOOP_DEATHS:
            log.error(
                "crash loop: workers died %d times within %.0f s (last: worker %d, pid %d, %s); "
                "stopping the server, see the workers' log above for the cause",
                len(self.deaths),
                CRASH_LOOP_WINDOW_S,
                *_id(worker),
                how,
            )
            self.exit_code = EXIT_WORKER_FAILED
            self._stop("crash loop", quiet=True)
            return
        backoff = RESTART_BACKOFF_S[min(len(self.deaths), len(RESTART_BACKOFF_S)) - 1]
        log.warning(
            "worker %d (pid %d) %s; restarting it in %.1f s (%d deaths in the last %.0f s, "
            "%d make a crash loop)",
            *_id(worker),
            how,
            backoff,
            len(self.deaths),
            CRASH_LOOP_WINDOW_S,
            CRASH_LOOP_DEATHS,
        )
        self.restarts_due[worker.index] = now + backoff

    def _restart_due(self) -> None:
        if self.stopping:
            self.restarts_due.clear()
            return
        now = time.monotonic()
        for index, due in list(self.restarts_due.items()):
            if due <= now:
                del self.restarts_due[index]
                self.restarts += 1
                self._start(index, announce_at_once=True)

    def _stop(self, why: str, quiet: bool = False) -> None:
        self.stopping = True
        s = self.settings
        self.stop_deadline = (
            time.monotonic() + s.grace_period_s + getattr(s, "drain_delay_s", 0.0) + STOP_MARGIN_S
        )
        if not quiet:
            log.info(
                "%s: stopping %s (each drains its calls)", why, counted(len(self.running), "worker")
            )
        for worker in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)

    def _hurry(self) -> None:
        """Tell every worker to skip the rest of its drain (SIGUSR2, see run_worker)."""
        self.hurried = True
        log.info("skipping the rest of the drain")
        for worker in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGUSR2)


def _id(worker: Worker) -> tuple[int, int]:
    return worker.index, worker.pid


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def supervise(settings: ServerSettings, workers: int) -> int:
    """Run the server as `workers` processes until SIGTERM/SIGINT; the exit code."""
    try:
        return Supervisor(settings, workers).run()
    except StartupError as e:
        log.error("%s", e)
        return EXIT_STARTUP_ERROR


class _SupervisorCollector:
    """The supervisor's own series: a collector reading its fields at each scrape (a
    Counter here would be written to the workers' multiprocess folder, or not, depending on
    when prometheus_client was imported)."""

    def __init__(self, supervisor: Supervisor | None) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        restarts = self._supervisor.restarts if self._supervisor is not None else 0
        yield CounterMetricFamily(
            "latentserve_worker_restarts",
            "Worker processes the supervisor restarted after they died",
            value=restarts,
        )


def serve_aggregate_metrics(
    host: str, port: int, metrics_dir: str, supervisor: Supervisor | None = None
) -> Callable[[], None]:
    """/metrics for the whole server, summed over every worker's files; returns its stopper."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    registry.register(_SupervisorCollector(supervisor))
    try:
        httpd, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise port_error("metrics_port", host, port, e) from None
    log.info("metrics on http://%s:%d/metrics (all workers)", host, httpd.server_port)

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    return stop


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay: totals never go backwards)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# -- inside a worker --------------------------------------------------------------------------


class _WorkerTag(logging.Filter):
    """Marks every log record with the worker index (a field in JSON logs)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def run_worker(
    settings: ServerSettings,
    index: int,
    conn: Connection,
    announce_at_once: bool,
    metrics_dir: str = "",
) -> None:
    """A worker process's entry point (spawned): one LatentServer on the shared port.
    `metrics_dir`: the supervisor's Prometheus multiprocess folder, where the workers also
    share their statistics (serving/process/shared_statistics.py) and version states
    (serving/process/shared_repository.py)."""
    # Ctrl-C reaches the whole process group; the supervisor turns it into one SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from serving.process.logs import TextFormatter, configure_logging
    from serving.process.memory import keep_large_buffers_out_of_heap

    configure_logging(settings.log_level, settings.log_format)
    handler = logging.getLogger().handlers[0]
    handler.addFilter(_WorkerTag(index))
    if settings.log_format == "text":
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)-7s worker %(worker)s %(name)s: %(message)s")
        )
    keep_large_buffers_out_of_heap()
    code = asyncio.run(_serve_worker(settings, index, conn, announce_at_once, metrics_dir))
    conn.close()
    sys.exit(code)


async def _serve_worker(
    settings: ServerSettings,
    index: int,
    conn: Connection,
    announce_at_once: bool,
    metrics_dir: str = "",
) -> int:
    from serving.process.server import LatentServer
    from serving.process.tracing import configure_tracing

    try:
        tracing = configure_tracing(os.environ)
    except StartupError as e:
        conn.send(("failed", str(e)))
        return EXIT_STARTUP_ERROR
    statistics_dir = Path(metrics_dir, "statistics") if metrics_dir else None
    server = LatentServer(
        settings,
        shared_port=True,
        worker=index,
        statistics_dir=statistics_dir,
        tracing=tracing,
        repository_dir=Path(metrics_dir, "repository") if metrics_dir else None,
    )
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    announcing: set[asyncio.Task[None]] = set()

    def announce() -> None:
        task = loop.create_task(server.announce_ready())
        announcing.add(task)
        task.add_done_callback(announcing.discard)

    loop.add_signal_handler(signal.SIGTERM, stop_requested.set)
    loop.add_signal_handler(signal.SIGUSR1, announce)
    # The supervisor's word that a developer wants out now (a second signal, Ctrl-C).
    loop.add_signal_handler(signal.SIGUSR2, server.hurry)
    try:
        await server.start_warm()
    except StartupError as e:
        conn.send(("failed", str(e)))
        await server.stop(0)
        return EXIT_STARTUP_ERROR
    if not server.registry.ready_names and settings.model_control == "none":
        conn.send(("failed", f"no servable model in {settings.models_dir}: {NO_MODEL_FIX}"))
        await server.stop(0)
        return EXIT_STARTUP_ERROR
    if announce_at_once:
        await server.announce_ready()
    conn.send(("warm", os.getpid(), server.registry.ready_names, server.registry.default_model))
    await stop_requested.wait()
    await server.stop()
    if tracing is not None:
        tracing.shutdown()
    return 0
