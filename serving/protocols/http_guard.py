"""Bounds on the HTTP port's connections: how many may be open, and how long one may take to
send a request's head. aiohttp has neither (its only timer is the keep-alive one, which it
also runs from the moment a connection opens, about an hour by default: 300 connections
trickling one header byte a second all stayed open).

:class:`ConnectionGuard` wraps aiohttp's protocol factory. Each connection gets a thin
protocol in front of aiohttp's own that passes everything through, and

- refuses (closes at once) a connection past `max_connections`;
- starts a head timer when the connection opens, and again when the first byte of the next
  request arrives after an answer; the app's middleware (:meth:`ConnectionGuard.middleware`)
  stops it once aiohttp has parsed a complete head and called the handler. A connection
  whose head is not complete within `header_timeout_s` is aborted by a sweep that runs once a
  second for all connections (one timer per server, not one per connection).

The request body has its own bound (`http_body_timeout_s`, applied where the body is read:
rest.read_body); an idle keep-alive connection is closed by aiohttp's keep-alive timer
(`http_keepalive_s`). Closed and refused connections are counted by reason
(`latentserve_http_connections_closed_total{reason}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard's bookkeeping."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self.transport: asyncio.Transport | None = None
        self.head_started: float | None = None  # loop time the pending head began
        self.busy = False  # a request is being handled (its head is complete)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self._guard.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.head_started = self._guard.now()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.head_started is None and not self.busy:
            self.head_started = self._guard.now()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guard.release(self):
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        header_timeout_s: float,
        on_close: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._factory = factory
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self._on_close = on_close
        self.open: dict[asyncio.BaseTransport, GuardedConnection] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self) -> GuardedConnection:
        """The protocol factory for loop.create_server."""
        return GuardedConnection(self, self._factory())

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def admit(self, connection: GuardedConnection) -> bool:
        if len(self.open) >= self.max_connections:
            self._on_close("limit")
            return False
        assert connection.transport is not None
        self.open[connection.transport] = connection
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return True

    def release(self, connection: GuardedConnection) -> bool:
        """Forget `connection`; True when it had been admitted."""
        return self.open.pop(connection.transport, None) is not None  # type: ignore[arg-type]

    async def _sweep(self) -> None:
        while self.open:
            await asyncio.sleep(min(SWEEP_INTERVAL_S, self.header_timeout_s / 4))
            deadline = self.now() - self.header_timeout_s
            late = [c for c in self.open.values() if c.head_started is not None]
            for connection in late:
                if connection.head_started is not None and connection.head_started < deadline:
                    self._on_close("header_timeout")
                    assert connection.transport is not None
                    connection.transport.abort()

    def middleware(self) -> Any:
        """Marks a connection busy while aiohttp handles one of its requests (its head was
        complete), and waiting for a new head after the answer."""

        @web.middleware
        async def mark(request: web.Request, handler: Handler) -> web.StreamResponse:
            connection = self.open.get(request.transport)  # type: ignore[arg-type]
            if connection is None:
                return await handler(request)
            connection.busy, connection.head_started = True, None
            try:
                return await handler(request)
            finally:
                connection.busy = False

        return mark

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
