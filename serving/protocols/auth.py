"""Optional bearer-token authentication: a server interceptor and where tokens come from.

When tokens are configured (`auth_token`, i.e. LATENTSERVE_AUTH_TOKEN, and/or
`auth_token_file`, one token per line so a new one can be added before the old one is
removed), every call must carry the metadata ``authorization: Bearer <token>``; anything
else ends with UNAUTHENTICATED before the request is parsed or reaches the servicer.
grpc.health.v1 stays open, because load balancers and orchestrators probe it without
credentials and it reveals nothing but up/down. Tokens are compared in constant time.
A token on a plaintext connection can be read by anyone on the path: use it with TLS.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from serving.process.settings import ServerSettings, read_token_file

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
SCHEME = "bearer "


def tokens_from_settings(settings: ServerSettings) -> list[str]:
    """Every accepted token; empty means authentication is off. (Settings refuse a token
    file that holds no token, so auth is never silently off.)"""
    tokens = []
    if settings.auth_token is not None and settings.auth_token.get_secret_value().strip():
        tokens.append(settings.auth_token.get_secret_value().strip())
    if settings.auth_token_file is not None:
        tokens += read_token_file(settings.auth_token_file)
    return tokens


def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if text[: len(SCHEME)].lower() == SCHEME:
                return text[len(SCHEME) :].strip()
            return ""
    return None


def _denied(handler: Handler, message: str) -> Handler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED, unparsed."""

    # The status is set, not raised with context.abort: grpc.aio keeps an AbortError in a
    # reference cycle with the request's bytes until the cyclic GC runs (see calls._answer).
    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        context.set_details(message)

    async def deny_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        context.set_details(message)
        return
        yield  # pragma: no cover - the yield makes this an async generator

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


class BearerTokenInterceptor(Interceptor):
    def __init__(self, tokens: Sequence[str], exempt: Sequence[str] = EXEMPT_PREFIXES) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._tokens = [t.encode("utf-8") for t in tokens]
        self._exempt = tuple(exempt)

    def accepts(self, token: str | None) -> bool:
        if not token:
            return False
        try:
            given = token.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes in the header: no token of ours
            return False
        # Check every token (no early exit) so timing does not reveal which one was close.
        matches = [hmac.compare_digest(given, t) for t in self._tokens]
        return any(matches)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        if handler_call_details.method.startswith(self._exempt):
            return await continuation(handler_call_details)
        token = _bearer_token(handler_call_details.invocation_metadata)
        if self.accepts(token):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if token is None:
            message = (
                "missing credentials: this server requires the metadata "
                "'authorization: Bearer <token>'"
            )
        else:
            message = "invalid bearer token"
        log.debug("refused %s: %s", handler_call_details.method, message)
        return _denied(handler, message)
