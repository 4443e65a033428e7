"""Bytes that are not a valid protobuf message get INVALID_ARGUMENT, not UNKNOWN.

grpc parses a request with the method's deserializer before any servicer code runs; when
that raises (garbage bytes, a truncated message, a string field holding invalid UTF-8),
grpc answers UNKNOWN "Unexpected DecodeError", which tells the client nothing it can act
on and looks like a server bug. :class:`MalformedRequestInterceptor` wraps every method's
deserializer (Autoencoder, health, reflection alike) so a parse failure yields a marker,
and the method's behaviour answers that marker with INVALID_ARGUMENT and the parser's
reason. Wrapped handlers are built once per method and cached: nothing extra per call
beyond one isinstance check.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor


class MalformedRequest:
    """Stands in for a request whose bytes could not be parsed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as e:
            return MalformedRequest(str(e))

    return parse


async def _refuse(request: MalformedRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request bytes are not a valid protobuf message ({request.reason}); send this "
        "method's request message, serialized (see protos/latentserve/v1/autoencoder.proto)",
    )


def guard_handler(handler: Handler) -> Handler:
    """The same handler, answering unparseable requests with INVALID_ARGUMENT."""
    deserializer = handler.request_deserializer
    if deserializer is None or handler.request_streaming:
        # No parsing to guard (raw bytes), or a client stream (the servicer has none).
        return handler
    safe = _safe(deserializer)
    inner: Any = handler.unary_stream if handler.response_streaming else handler.unary_unary
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, MalformedRequest):
                await _refuse(request, context)
            async for response in inner(request, context):
                yield response

        return handler._replace(  # type: ignore[attr-defined, no-any-return]
            request_deserializer=safe, unary_stream=stream
        )

    # A coroutine: unary, or streaming through context.write (the health Watch does that).
    async def call(request: Any, context: Any) -> Any:
        if isinstance(request, MalformedRequest):
            await _refuse(request, context)
        return await inner(request, context)

    behaviour = "unary_stream" if handler.response_streaming else "unary_unary"
    return handler._replace(  # type: ignore[attr-defined, no-any-return]
        request_deserializer=safe, **{behaviour: call}
    )


class MalformedRequestInterceptor(Interceptor):
    def __init__(self) -> None:
        self._cache: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        guarded = guard_handler(handler)
        self._cache[method] = guarded
        return guarded
