"""Optional bearer-token authentication, for every protocol: where tokens come from, the one
check of an ``authorization`` value (:class:`TokenCheck`), and the gRPC interceptor that
applies it (the HTTP port applies the same check in serving/protocols/http_app.py).

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
GRPC_CREDENTIALS = "the metadata 'authorization: Bearer <token>'"
HTTP_CREDENTIALS = "the header 'Authorization: Bearer <token>'"


def tokens_from_settings(settings: ServerSettings) -> list[str]:
    """Every accepted token; empty means authentication is off. (Settings refuse a token
    file that holds no token, so auth is never silently off.)"""
    tokens = []
    if settings.auth_token is not None and settings.auth_token.get_secret_value().strip():
        tokens.append(settings.auth_token.get_secret_value().strip())
    if settings.auth_token_file is not None:
        tokens += read_token_file(settings.auth_token_file)
    return tokens


class TokenCheck:
    """Whether an ``authorization`` value (gRPC metadata or HTTP header) carries an accepted
    bearer token. With no tokens configured, everything is accepted."""

    def __init__(self, tokens: Sequence[str]) -> None:
        # Compared as UTF-8 bytes; a value that is not valid text cannot match any token.
        self._tokens = [t.encode("utf-8") for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def accepts(self, token: str) -> bool:
        given = token.encode("utf-8", "replace")
        # Check every token (no early exit) so timing does not reveal which one was close.
        matches = [hmac.compare_digest(given, t) for t in self._tokens]
        return any(matches)

    def refusal(self, authorization: str | bytes | None, credentials: str) -> str | None:
        """None if the call may go on; else why not, for UNAUTHENTICATED / 401.
        `credentials` names what the caller must send (GRPC_ or HTTP_CREDENTIALS)."""
        if not self._tokens:
            return None
        if authorization is None:
            return f"missing credentials: this server requires {credentials}"
        if isinstance(authorization, bytes):
            authorization = authorization.decode("utf-8", "replace")
        if authorization[: len(SCHEME)].lower() == SCHEME and self.accepts(
            authorization[len(SCHEME) :].strip()
        ):
            return None
        return "invalid bearer token"


def _authorization(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | bytes | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            return value
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
    """Applies the :class:`TokenCheck` to every gRPC method but the exempt ones."""

    def __init__(self, tokens: Sequence[str], exempt: Sequence[str] = EXEMPT_PREFIXES) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._check = TokenCheck(tokens)
        self._exempt = tuple(exempt)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        if handler_call_details.method.startswith(self._exempt):
            return await continuation(handler_call_details)
        authorization = _authorization(handler_call_details.invocation_metadata)
        message = self._check.refusal(authorization, GRPC_CREDENTIALS)
        handler = await continuation(handler_call_details)
        if message is None or handler is None:
            return handler
        log.debug("refused %s: %s", handler_call_details.method, message)
        return _denied(handler, message)
