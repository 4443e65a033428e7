"""The HTTP port: one aiohttp application, run in the server's own event loop.

It serves the routes the server wiring hands to :func:`build_app`: the Open Inference
Protocol's REST API (serving/protocols/v2/rest.py) and the explorer page
(serving/protocols/explorer/routes.py, whose ``routes(context)`` takes an
:class:`HttpContext`). The app
shares the gRPC side's limits (request bodies up to ``max_message_bytes``: larger ones get
413), bearer tokens (every /v2 path but /v2/health/*; other routes, such as the static
explorer page, are public), TLS files and drain (the CallTracker refuses new calls with 503;
`HttpServer.stop` then closes the port). Every error answers ``{"error": "..."}`` JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware

from serving.core.repository import ModelRepository
from serving.process.settings import ServerSettings
from serving.protocols.auth import HTTP_CREDENTIALS, TokenCheck
from serving.protocols.http_guard import ConnectionGuard
from serving.protocols.v2.inference import V2Api

log = logging.getLogger(__name__)

PUBLIC_PREFIXES = ("/v2/health/",)
PROTECTED_PREFIX = "/v2"
# gRPC status -> HTTP status. RESOURCE_EXHAUSTED is 413 for a request too large and 429
# for a full queue (rest.py tells them apart); FAILED_PRECONDITION is a refused model folder.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class HttpContext:
    """What route providers may use: the v2 API, the registry and the settings."""

    api: V2Api
    registry: ModelRepository
    settings: ServerSettings


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": message}).encode("utf-8"),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, wrong method, body too large) as JSON."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        if e.status == 404:
            message = (
                f"no such path {request.path!r}; the Open Inference Protocol's REST API serves "
                "GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}, "
                "/v2/models/{name}/ready and POST /v2/models/{name}/infer"
            )
        elif e.status == 405:
            message = f"{request.method} is not allowed on {request.path}; use {e.headers.get('Allow', '')}"
        elif e.status == 413:
            message = (
                f"request body too large: more than the server's max_message_bytes "
                f"({request.app[MAX_BODY_KEY]}); split the request"
            )
        keep = {k: v for k, v in e.headers.items() if k.lower() == "allow"}
        return json_error(e.status, message, keep)


def bearer_auth(tokens: Sequence[str]) -> Middleware:
    """Middleware: /v2 paths (except health) need ``Authorization: Bearer <token>``."""
    check = TokenCheck(tokens)

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith(PROTECTED_PREFIX) or path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        message = check.refusal(request.headers.get("Authorization"), HTTP_CREDENTIALS)
        if message is None:
            return await handler(request)
        return json_error(401, message, {"WWW-Authenticate": "Bearer"})

    return auth


MAX_BODY_KEY = web.AppKey("max_body_bytes", int)


def build_app(
    context: HttpContext,
    routes: Iterable[web.AbstractRouteDef],
    tokens: Sequence[str] = (),
) -> web.Application:
    """The application: `routes` (the v2 REST API and any extra ones) behind the JSON error
    and auth middlewares, request bodies limited to max_message_bytes."""
    middlewares: list[Middleware] = [errors_as_json]
    if tokens:
        middlewares.append(bearer_auth(tokens))
    limit = context.settings.max_message_bytes
    app = web.Application(middlewares=middlewares, client_max_size=limit)
    app[MAX_BODY_KEY] = limit
    app.add_routes(list(routes))
    return app


def ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """TLS from the same PEM files as gRPC (mutual TLS with tls_client_ca_file), or None."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file is not None:
        context.load_verify_locations(settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HttpServer:
    """The app on a socket: `await start(sock)`, then `await stop()` after the drain.

    Connections go through a ConnectionGuard (http_guard.py): at most max_http_connections
    open, a request head within http_header_timeout_s; idle keep-alive connections close
    after http_keepalive_s (aiohttp's own timer). `on_close(reason)` counts the closed ones."""

    def __init__(
        self,
        app: web.Application,
        settings: ServerSettings,
        on_close: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._settings = settings
        # Signals are the server's (server.py drains both ports); the access log would cost
        # a formatted line per call.
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=settings.grace_period_s,
            keepalive_timeout=settings.http_keepalive_s,
        )
        self.guard = ConnectionGuard(
            lambda: self._runner.server(),  # type: ignore[misc]
            max_connections=settings.max_http_connections,
            header_timeout_s=settings.http_header_timeout_s,
            on_close=on_close,
        )
        # Outermost, so every request marks its connection, even one refused by auth.
        app.middlewares.insert(0, self.guard.middleware())
        self._listener: asyncio.Server | None = None
        self.port = 0

    async def start(self, sock: socket.socket) -> None:
        await self._runner.setup()
        self._listener = await asyncio.get_running_loop().create_server(
            self.guard, sock=sock, ssl=ssl_context(self._settings)
        )
        self.port = int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, let running handlers finish (up to the grace period), close."""
        if self._listener is not None:
            self._listener.close()
        await self._runner.cleanup()
        await self.guard.close()
