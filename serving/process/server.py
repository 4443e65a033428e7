"""Wiring: the grpc.aio server with the Autoencoder servicer, grpc.health.v1 health, server
reflection, Prometheus metrics and signal handling.

Start-up order: bind and start listening (health NOT_SERVING, so probes get an answer),
load and warm up every model, then mark the server and each READY model SERVING.
Health service names: "" (the whole server: SERVING once loading is done and at least one
model is ready), "latentserve.v1.Autoencoder" (same), and each model's name (e.g.
"mnist-vae": SERVING when that model is READY).
With `model_control` poll, a task rescans the repository every `poll_interval_s`
(serving.core.repository); with explicit, the v2 repository API loads and unloads. Health
per model follows its versions: SERVING while one is READY.
On SIGTERM/SIGINT: every health status goes NOT_SERVING, new calls are still served for
`drain_delay_s` (so balancers notice first), then get UNAVAILABLE, in-flight calls get
`grace_period_s` to finish, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The asyncio health servicer is public API (grpc examples use it) but absent from the stubs.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from latentserve._proto.inference import grpc_predict_v2_pb2_grpc as v2_pb_grpc
from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2_grpc as pb_grpc
from latentserve.wording import counted
from serving.core.registry import ModelState
from serving.core.repository import ModelRepository
from serving.process.metrics import Metrics
from serving.process.ports import listening_socket, port_error
from serving.process.settings import ServerSettings, StartupError
from serving.process.shared_repository import SharedRepository
from serving.process.shared_statistics import SharedStatistics
from serving.process.signals import hurry_wanted
from serving.process.startup import EXIT_STARTUP_ERROR, NO_MODEL_FIX
from serving.process.tracing import Tracing, configure_tracing
from serving.protocols import explorer
from serving.protocols.auth import EXEMPT_PREFIXES, BearerTokenInterceptor, tokens_from_settings
from serving.protocols.calls import CallTracker
from serving.protocols.http_app import (
    HttpContext,
    HttpServer,
    build_app,
)
from serving.protocols.native.service import AutoencoderServicer
from serving.protocols.request_guard import MalformedRequestInterceptor
from serving.protocols.v2 import rest
from serving.protocols.v2.grpc_servicer import PUBLIC_METHODS as V2_PUBLIC_METHODS
from serving.protocols.v2.grpc_servicer import SERVICE_NAME as V2_SERVICE_NAME
from serving.protocols.v2.grpc_servicer import InferenceServicer
from serving.protocols.v2.inference import V2Api

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Autoencoder"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class LatentServer:
    """One server instance: `await start()`, `await load_models()`, ..., `await stop()`."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        shared_port: bool = False,
        worker: int | None = None,
        statistics_dir: Path | None = None,
        tracing: Tracing | None = None,
        repository_dir: Path | None = None,
    ) -> None:
        """`shared_port`: one of the supervisor's workers, which bind the same port with
        SO_REUSEPORT; otherwise the port is this server's alone (grpc would share it with
        any other server on it by default). `worker`: its index, a label on the metrics.
        `statistics_dir`: where the workers share their statistics (shared_statistics.py).
        `tracing`: OpenTelemetry spans of each call and run (tracing.py), or None.
        `repository_dir`: where the workers share their version states
        (shared_repository.py), so the index and readiness answer for all of them."""
        self.settings = settings
        self.shared_port = shared_port
        self.metrics = Metrics(worker=worker)
        self._executor = ThreadPoolExecutor(
            max_workers=settings.inference_workers, thread_name_prefix="inference"
        )
        where = f"pid {os.getpid()}" if worker is None else f"worker {worker} (pid {os.getpid()})"
        self.registry = ModelRepository(
            settings,
            self._executor,
            self.metrics.batch_observer,
            tracing.batch_tracer if tracing is not None else None,
            settled=lambda: self.calls.settled(),
            where=where,
            on_event=self.metrics.model_event,
        )
        self.registry.listeners.append(self._states_changed)
        self._shared_statistics = (
            None
            if statistics_dir is None
            else SharedStatistics(self.registry.statistics, statistics_dir)
        )
        # One call tracker for every front end: shared drain state, metrics, error mapping.
        self.calls = CallTracker(self.metrics, lambda: self.registry.default_model, tracing)
        self.servicer = AutoencoderServicer(self.registry, settings, self.calls)
        # The Open Inference Protocol (KServe v2): gRPC on the same port, REST on http_port.
        self.v2 = V2Api(self.registry, settings, self.calls)
        self._shared_repository = (
            None
            if repository_dir is None
            else SharedRepository(self.registry, repository_dir, where)
        )
        if self._shared_repository is not None:
            self.v2.peers, self.v2.label = self._shared_repository.peers, where
        self.v2_servicer = InferenceServicer(self.v2)
        self.http: HttpServer | None = None
        self.health = health_aio.HealthServicer()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        self._overall = NOT_SERVING
        self._announced_serving = False  # drain_delay_s only matters once balancers saw SERVING
        self._loaded = False  # start-up loading done: health follows the repository from then
        self._may_announce = False  # the whole server's health may follow the models
        self._publishing: asyncio.Task[None] | None = None
        self._published: set[tuple[str, str]] = set()  # (model, version) with a ready gauge
        self._poller: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # set by `hurry`: end the drain now

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Bind, start answering (health NOT_SERVING until `load_models` finishes)."""
        self.registry.scan()
        await self._set_all_not_serving()
        await self._listen()

    async def start_warm(self) -> None:
        """A worker's start: load and warm up every model first, then bind, so a worker
        (re)started beside running ones takes no connection it cannot serve yet. The whole
        server's health ("" and the service) stays NOT_SERVING until `announce_ready`: the
        supervisor calls that once every worker is warm."""
        self.registry.scan()
        await self._set_all_not_serving()
        await self.load_models(announce=False)
        await self._listen()

    async def _set_all_not_serving(self) -> None:
        for service in ("", SERVICE_NAME, *(e.name for e in self.registry.entries)):
            await self.health.set(service, NOT_SERVING)

    async def _listen(self) -> None:
        if self._shared_statistics is not None:
            self._shared_statistics.start()
        if self._shared_repository is not None:
            self._shared_repository.start()
        s = self.settings
        tokens = tokens_from_settings(s)
        server = grpc.aio.server(
            options=self._grpc_options(),
            interceptors=_interceptors(tokens),
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
        )
        pb_grpc.add_AutoencoderServicer_to_server(self.servicer, server)
        v2_pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.v2_servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                V2_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        credentials = server_credentials(s)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(f"{s.host}:{s.port}")
            else:
                self.port = server.add_secure_port(f"{s.host}:{s.port}", credentials)
        except RuntimeError:  # grpc >= 1.60 raises instead of returning 0
            self.port = 0
        if self.port == 0:
            raise port_error("port", s.host, s.port)
        await server.start()
        self._server = server
        transport = (
            "mutual TLS" if s.tls_client_ca_file else "TLS" if s.tls else "plaintext, no TLS"
        )
        auth = f"bearer token auth on ({len(tokens)} tokens)" if tokens else "no auth"
        log.info("listening on %s (%s, %s)", self.address, transport, auth)
        if s.http_port:
            await self._serve_http(tokens)
        if s.metrics_port:
            try:
                self.metrics.serve_http(s.host, s.metrics_port)
            except OSError as e:
                raise port_error("metrics_port", s.host, s.metrics_port, e) from None

    def _grpc_options(self) -> list[tuple[str, Any]]:
        s = self.settings
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 1 if self.shared_port else 0),
        ]
        if s.max_connection_age_ms:
            # gRFC A9: GOAWAY after the age (grpc adds +-10% jitter), then the grace for the
            # calls in flight; clients reconnect, and SO_REUSEPORT places the new connection.
            options.append(("grpc.max_connection_age_ms", s.max_connection_age_ms))
            if s.max_connection_age_grace_ms:  # else grpc's default: no limit
                options.append(("grpc.max_connection_age_grace_ms", s.max_connection_age_grace_ms))
        return options

    async def _serve_http(self, tokens: list[str]) -> None:
        """The HTTP port (v2 REST, the explorer page), in this event loop; shared by the
        workers (SO_REUSEPORT) like the gRPC port."""
        s = self.settings
        sock = listening_socket(s.host, s.http_port, "http_port", reuse_port=self.shared_port)
        context = HttpContext(self.v2, self.registry, s)
        app = build_app(context, [*rest.routes(self.v2), *explorer.routes(context)], tokens)
        self.http = HttpServer(
            app, s, lambda reason: self.metrics.http_connections_closed.labels(reason).inc()
        )
        await self.http.start(sock)
        log.info("HTTP on %s:%d (Open Inference Protocol REST)", s.host, self.http.port)

    async def load_models(self, announce: bool = True) -> None:
        """Load and warm up every model, then report SERVING for what is ready (the whole
        server only with `announce`; otherwise `announce_ready` does that later). With
        model_control poll, the repository is rescanned from then on."""
        await self.registry.load_all()
        # What exists now (modules, sessions, settings) lives as long as the process: keep it
        # out of the cyclic collector's full passes, which otherwise walk all of it again and
        # again under load (about 10% of the server's CPU per Encode call at 64 streams).
        gc.freeze()
        self._loaded = True
        await self._publish_states()
        ready_names = self.registry.ready_names
        if announce:
            await self.announce_ready()
        if self.settings.model_control == "poll" and self._poller is None:
            self._poller = asyncio.create_task(self._poll_forever())
        failed = [e.name for e in self.registry.entries if e.state is ModelState.FAILED]
        refused = f"; refused {', '.join(failed)}" if failed else ""
        if not ready_names:
            log.info("loading done: no model is ready%s", refused)
            return
        log.info(
            "%s: serving %s (default %s)%s",
            "ready" if announce else "warmed up",
            self.registry.loaded_summary(),
            self.registry.default_model,
            refused,
        )

    async def _poll_forever(self) -> None:
        interval = self.settings.poll_interval_s
        log.info("polling %s for model changes every %.1f s", self.settings.models_dir, interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.registry.poll()
            except Exception:  # a bad scan must not end polling
                log.exception("polling the model repository failed; retrying")

    def _states_changed(self) -> None:
        """The repository changed a version's state: health and metrics follow (coalesced)."""
        if not self._loaded or self._stopped.is_set():
            return
        if self._publishing is None or self._publishing.done():
            self._publishing = asyncio.get_running_loop().create_task(self._publish_states())

    async def _publish_states(self) -> None:
        seen: set[tuple[str, str]] = set()
        serving = not self.calls.draining and not self._stopped.is_set()
        for slot in self.registry.slots:
            ready = bool(slot.ready_versions())
            for number, entry in slot.versions.items():
                seen.add((slot.name, str(number)))
                gauge = self.metrics.model_ready.labels(slot.name, str(number))
                gauge.set(1 if entry.ready else 0)
            if serving:
                await self.health.set(slot.name, SERVING if ready else NOT_SERVING)
        # Versions and models that left the repository: not ready, not serving.
        for name, version in self._published - seen:
            self.metrics.model_ready.labels(name, version).set(0)
        names = {name for name, _ in seen}
        for name in {name for name, _ in self._published} - names:
            if serving:
                await self.health.set(name, NOT_SERVING)
        self._published = seen
        self._overall = SERVING if self.registry.ready_names else NOT_SERVING
        if self._may_announce:
            await self.announce_ready()

    async def announce_ready(self) -> None:
        """The whole server's health follows the models: SERVING if at least one is ready."""
        self._may_announce = True
        if not self._stopped.is_set() and not self.calls.draining:
            await self.health.set("", self._overall)
            await self.health.set(SERVICE_NAME, self._overall)
            self._announced_serving = self._overall == SERVING

    def hurry(self) -> None:
        """End the drain now: skip what is left of the drain delay and the grace period (a
        second signal, or Ctrl-C at a terminal, where nobody balances over this server)."""
        self._hurry.set()

    async def _unless_hurried(self, waiting: Awaitable[Any], timeout: float) -> None:
        """Wait for `waiting` (at most `timeout` s), or until `hurry` is called."""
        hurried = asyncio.ensure_future(self._hurry.wait())
        task = asyncio.ensure_future(asyncio.wait_for(waiting, timeout))
        try:
            await asyncio.wait({hurried, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (hurried, task):
                pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await task

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING everywhere, refuse new calls, let in-flight ones finish."""
        if self._stopped.is_set():
            return
        grace = self.settings.grace_period_s if grace is None else grace
        started = time.monotonic()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        log.info(
            "shutting down: draining %s (grace %.1fs)",
            counted(self.calls.in_flight, "in-flight call"),
            grace,
        )
        # Health says NOT_SERVING first and keeps answering while accepted calls finish
        # (new ones get UNAVAILABLE), so probes and load balancers see the drain; only
        # then does the server stop taking connections.
        await self.health.enter_graceful_shutdown()
        # Behind a balancer, NOT_SERVING alone changes nothing until its next health check:
        # keep serving for drain_delay_s so it moves traffic away before anything is refused.
        # A server that never said SERVING (start-up failure, stop while loading) has no
        # traffic to move away.
        delay = self.settings.drain_delay_s
        if delay > 0 and self._announced_serving and not self._hurry.is_set():
            log.info(
                "NOT_SERVING; still serving for drain_delay_s=%.1fs (signal again to skip)", delay
            )
            await self._unless_hurried(asyncio.sleep(delay), delay + 1)
        if self._hurry.is_set():
            grace = 0.0
        await self._unless_hurried(self.calls.drain(grace), grace + 1)
        if self.calls.in_flight:
            log.warning(
                "grace period over with %s still running; cancelling them",
                counted(self.calls.in_flight, "call"),
            )
        if self._server is not None:
            remaining = 0.0 if self._hurry.is_set() else grace - (time.monotonic() - started)
            await self._server.stop(max(0.0, remaining))
        if self.http is not None:
            await self.http.stop()
        await self.registry.close()
        if self._shared_statistics is not None:
            await self._shared_statistics.stop()
        if self._shared_repository is not None:
            await self._shared_repository.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.metrics.shutdown()
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _interceptors(tokens: list[str]) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    if tokens:
        interceptors.append(
            BearerTokenInterceptor(tokens, exempt=(*EXEMPT_PREFIXES, *V2_PUBLIC_METHODS))
        )
    # Last: it caches the handlers it wraps, so interceptors after it would be skipped.
    interceptors.append(MalformedRequestInterceptor())
    return interceptors


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files, or None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _log_loading_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loading models failed; serving nothing", exc_info=task.exception())


def on_stop_signal(
    sig: int, received: list[int], server: LatentServer, stop_requested: asyncio.Event
) -> None:
    """The first SIGTERM/SIGINT starts the drain; a second one, or Ctrl-C at a terminal,
    hurries it (serving/process/signals.py)."""
    received.append(sig)
    if hurry_wanted(received):
        if len(received) > 1:
            log.info("%s again: skipping the rest of the drain", signal.Signals(sig).name)
        server.hurry()
    stop_requested.set()


async def serve(settings: ServerSettings) -> int:
    """One server process (workers=1): run until SIGTERM/SIGINT, then drain. The exit code:
    0 after a drain, EXIT_STARTUP_ERROR (with one log line naming the fix) when it cannot
    start: its port is taken, or no model in the models folder can be served."""
    try:
        tracing = configure_tracing(os.environ)
    except StartupError as e:
        log.error("%s", e)
        return EXIT_STARTUP_ERROR
    try:
        return await _serve(settings, tracing)
    finally:
        if tracing is not None:
            tracing.shutdown()


async def _serve(settings: ServerSettings, tracing: Tracing | None) -> int:
    server = LatentServer(settings, tracing=tracing)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig, received, server, stop_requested)
    try:
        await server.start()
    except StartupError as e:
        log.error("%s", e)
        await server.stop(0)
        return EXIT_STARTUP_ERROR
    loading = asyncio.create_task(server.load_models())
    # A crash while loading must be visible, not a forever NOT_SERVING server with no clue.
    loading.add_done_callback(_log_loading_failure)
    stopping = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and not server.registry.ready_names and settings.model_control == "none":
        # Refuse rather than sit NOT_SERVING: a server that can serve nothing is a
        # misconfiguration, and an exit is what supervisors and orchestrators report. With
        # poll or explicit model control, models may still arrive: it waits for them.
        log.error("no servable model in %s: %s", settings.models_dir, NO_MODEL_FIX)
        stopping.cancel()
        await server.stop(0)
        return EXIT_STARTUP_ERROR
    await stopping
    if not loading.done():
        loading.cancel()
    await server.stop()
    return 0
