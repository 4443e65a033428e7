"""Call accounting shared by every front end: drain state, in-flight count, request metrics
and the mapping from a failure to the status and message the client gets.

The server owns one :class:`CallTracker` and hands it to each servicer (the native gRPC
servicer, the Open Inference Protocol servicer, an HTTP handler), so they share one drain
state, one set of metrics and one error mapping. Its protocol-neutral core is two calls::

    call = tracker.begin("Encode", request_model)  # raises Refused while draining
    try:
        ...  # the work; set call.model once resolved, call.samples when answered
    except BaseException as error:
        status = tracker.end(call, error, time_remaining)
        if status is None:
            raise  # cancelled or already aborted: nothing to send
        ...  # answer status.code (a grpc.StatusCode) with status.message
    else:
        tracker.end(call)

`begin` admits a call (or refuses it with UNAVAILABLE while the server drains; the refusal
is already counted), `end` releases it from the drain count and records its metrics, before
the answer leaves, so a client that reads the metrics right after its answer sees its call.
An HTTP handler maps `status.code` to its own status line. For gRPC servicers,
:func:`unary` and :func:`stream` wrap a handler ``(self, request, context, call)`` into a
grpc.aio method ``(self, request, context)`` that does exactly the above, reading the
tracker from ``self.calls``; handlers then read straight through, with no error plumbing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from latentserve.tensors import TensorError
from serving.core.errors import ServingError
from serving.process.metrics import Metrics

if TYPE_CHECKING:
    from serving.process.tracing import Tracing

log = logging.getLogger(__name__)

UNKNOWN_MODEL_LABEL = "<unknown>"
# A call cancelled this close to its deadline was cancelled by it (see `CallTracker.end`).
DEADLINE_SLACK_S = 0.1
# Error messages stay well inside gRPC's default 8 KiB metadata limit, even percent-encoded.
MAX_ERROR_MESSAGE_BYTES = 2000
DRAINING_MESSAGE = "server is shutting down; retry on another instance"


@dataclass(frozen=True)
class Status:
    """What a failed call answers: a status code and a bounded message."""

    code: grpc.StatusCode
    message: str


class Refused(Exception):
    """A call refused before any work (the server drains); already counted."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.message)
        self.status = status


@dataclass
class Call:
    """One call in progress; the handler fills in `model` and `samples` as it learns them."""

    method: str
    model: str  # metric label: the request's model name until it is resolved
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)
    trace: object = None  # the call's span, when tracing is on
    version: str = ""  # metric label: the model version that answered, once resolved
    epoch: int = 0  # the tracker's epoch when the call began (see `CallTracker.settled`)


class CallTracker:
    def __init__(
        self,
        metrics: Metrics,
        default_model: Callable[[], str],
        tracing: Tracing | None = None,
    ) -> None:
        self._metrics = metrics
        self.tracing = tracing
        # The registry's default model is only known once loading is done.
        self._default_model = default_model
        self.draining = False
        # Calls accepted and not yet finished; shutdown waits for them (see `drain`).
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Calls in flight per epoch, and who waits for the epochs up to some number to empty.
        self._epoch = 0
        self._open: dict[int, int] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def settled(self) -> None:
        """Wait until every call admitted before now has ended (calls admitted later do not
        count). The repository retires a model version after this: once the version takes
        no new calls, the calls that may still hold it are exactly these."""
        epoch = self._epoch
        self._epoch += 1
        if not any(e <= epoch for e in self._open):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((epoch, waiter))
        await waiter

    def _wake_settled(self) -> None:
        oldest = min(self._open, default=self._epoch)
        pending = []
        for epoch, waiter in self._waiters:
            if epoch < oldest:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                pending.append((epoch, waiter))
        self._waiters = pending

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls (UNAVAILABLE) and wait up to `timeout` seconds for the accepted
        ones to finish; True when none is left."""
        self.draining = True
        if self._idle.is_set():
            # wait_for with a timeout of 0 gives up even on a set event: nothing to wait for.
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def begin(
        self, method: str, model: str, carrier: Iterable[tuple[str, Any]] | None = None
    ) -> Call:
        """Admit a call to `method` naming `model` (empty = the default model). With
        tracing on, its span opens, continuing the trace of a `traceparent` in `carrier`
        (the call's gRPC metadata or HTTP headers)."""
        if self.draining:
            # The model name is unchecked here: keep it out of the metric labels.
            call = Call(method, UNKNOWN_MODEL_LABEL)
            status = Status(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
            self._record(call, status.code.name)
            raise Refused(status)
        self.in_flight += 1
        self._idle.clear()
        epoch = self._epoch
        self._open[epoch] = self._open.get(epoch, 0) + 1
        call = Call(method, model or self._default_model() or UNKNOWN_MODEL_LABEL, epoch=epoch)
        if self.tracing is not None:
            call.trace = self.tracing.start_call(method, carrier)
        return call

    def end(
        self, call: Call, error: BaseException | None = None, time_remaining: float | None = None
    ) -> Status | None:
        """Finish `call`: release it and record its metrics. With an `error`, return the
        status to answer, or None when nothing is to be sent (the call was cancelled, or
        already aborted by the handler): the caller re-raises the error then.
        `time_remaining` (seconds to the call's deadline) tells a deadline from a cancel."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        left = self._open[call.epoch] - 1
        if left:
            self._open[call.epoch] = left
        else:
            del self._open[call.epoch]
            if self._waiters:
                self._wake_settled()
        if error is None:
            self._record(call, "OK")
            return None
        status: Status | None = None
        if isinstance(error, (ServingError, TensorError)):
            failure = error if isinstance(error, ServingError) else _invalid(error)
            if failure.code is grpc.StatusCode.NOT_FOUND:
                call.model = UNKNOWN_MODEL_LABEL  # keep label cardinality bounded
                call.version = ""
            code = failure.code.name
            status = Status(failure.code, bounded(failure.message))
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            # The client's own timer fires first and cancels the call a little before the
            # server's clock reaches the deadline; count that as the deadline it was.
            expired = time_remaining is not None and time_remaining <= DEADLINE_SLACK_S
            code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
        elif isinstance(error, grpc.aio.AbortError):
            code = "ABORTED"
        elif isinstance(error, Exception):
            log.error("%s failed", call.method, exc_info=error)
            code = "INTERNAL"
            status = Status(
                grpc.StatusCode.INTERNAL,
                bounded(f"internal error: {type(error).__name__}: {error}"),
            )
        else:  # KeyboardInterrupt, SystemExit: not ours to answer
            code = "CANCELLED"
        self._record(call, code)
        return status

    def _record(self, call: Call, code: str) -> None:
        self._metrics.observe_request(
            call.model,
            call.method,
            code,
            time.perf_counter() - call.start,
            call.samples,
            call.version,
        )
        if call.trace is not None and self.tracing is not None:
            self.tracing.end_call(call.trace, call.model, code)


def _invalid(error: TensorError) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error))


def bounded(message: str, limit: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """`message` cut to `limit` UTF-8 bytes. gRPC sends it percent-encoded in a trailer
    (up to 3 bytes per byte) and a client drops trailers over 16 KiB, turning a helpful
    NOT_FOUND that echoes a 100 kB model name into an opaque RESOURCE_EXHAUSTED."""
    data = message.encode("utf-8")
    if len(data) <= limit:
        return message
    # Keep both ends: the start says what was wrong, the end often says what is allowed.
    half = limit // 2
    head = data[:half].decode("utf-8", "ignore")
    tail = data[-half:].decode("utf-8", "ignore")
    return f"{head} ...[{len(data) - 2 * half} bytes cut]... {tail}"


# -- the gRPC decorators --------------------------------------------------------------------


class TrackedServicer(Protocol):
    calls: CallTracker


S = TypeVar("S", bound=TrackedServicer)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]
UnaryHandler = Callable[[S, Req, Context, Call], Awaitable[Resp]]
StreamHandler = Callable[[S, Req, Context, Call], AsyncIterator[Resp]]


ModelOf = Callable[[Any], str]


def native_model(request: Any) -> str:
    """The model a native request names (its `model` field; empty = the default model)."""
    return str(request.model)


def unresolved_model(request: Any) -> str:
    """For requests whose model name is only checked by the handler: the metric label stays
    UNKNOWN_MODEL_LABEL until the handler sets `call.model` to the resolved name."""
    return UNKNOWN_MODEL_LABEL


async def _admit(tracker: CallTracker, method: str, model: str, context: Context) -> Call:
    """The call begun, or the draining refusal sent (abort raises)."""
    metadata = context.invocation_metadata() if tracker.tracing is not None else None
    try:
        return tracker.begin(method, model, metadata)
    except Refused as refused:
        await context.abort(refused.status.code, refused.status.message)


# Statuses clients and Envoy retry. They must leave as a trailers-only response (what
# context.abort sends): once a response carries headers, gRPC's retry policy considers the
# call committed, and Envoy reads grpc-status from the headers only.
RETRIED_BY_CLIENTS = frozenset({grpc.StatusCode.UNAVAILABLE})


async def _answer(context: Context, status: Status) -> None:
    """Answer a failed call; the handler then returns without a response. Not through
    context.abort() unless a client must be able to retry it: grpc.aio keeps the AbortError
    in a reference cycle with the handler frames, and so with the request, until the cyclic
    GC runs, which it does by object counts, not bytes (100 refused 12 MB Encode calls grew
    RSS by 580 MiB)."""
    if status.code in RETRIED_BY_CLIENTS:
        await context.abort(status.code, status.message)
    context.set_code(status.code)
    context.set_details(status.message)


def _failed(tracker: CallTracker, call: Call, error: BaseException, context: Context) -> Status:
    """End `call` with `error`: the status to answer, or re-raise a cancellation."""
    status = tracker.end(call, error, context.time_remaining())
    if status is None:
        raise error
    return status


def unary(
    method: str, model_of: ModelOf = native_model
) -> Callable[[UnaryHandler[S, Req, Resp]], Callable[[S, Req, Context], Awaitable[Resp]]]:
    """A unary grpc.aio method from a handler that also gets the call's :class:`Call`;
    `model_of(request)` is the call's model label until the handler resolves it."""

    def decorate(
        handler: UnaryHandler[S, Req, Resp],
    ) -> Callable[[S, Req, Context], Awaitable[Resp]]:
        @functools.wraps(handler)
        async def rpc(self: S, request: Req, context: Context) -> Resp:
            tracker = self.calls
            call = await _admit(tracker, method, model_of(request), context)
            try:
                response = await handler(self, request, context, call)
            except BaseException as error:
                status = _failed(tracker, call, error, context)
            else:
                tracker.end(call)
                return response
            await _answer(context, status)
            return None  # type: ignore[return-value]  # the status says why

        return rpc

    return decorate


def stream(
    method: str, model_of: ModelOf = native_model
) -> Callable[[StreamHandler[S, Req, Resp]], Callable[[S, Req, Context], AsyncIterator[Resp]]]:
    """A response-streaming grpc.aio method from a handler that also gets its :class:`Call`."""

    def decorate(
        handler: StreamHandler[S, Req, Resp],
    ) -> Callable[[S, Req, Context], AsyncIterator[Resp]]:
        @functools.wraps(handler)
        async def rpc(self: S, request: Req, context: Context) -> AsyncIterator[Resp]:
            tracker = self.calls
            call = await _admit(tracker, method, model_of(request), context)
            try:
                async for response in handler(self, request, context, call):
                    yield response
            except BaseException as error:
                status = _failed(tracker, call, error, context)
            else:
                tracker.end(call)
                return
            await _answer(context, status)

        return rpc

    return decorate
