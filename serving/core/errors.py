"""The one error type the serving code raises for a request it cannot answer.

Validation happens at the edge (the servicer) and below it (the model API, the batcher);
each failure becomes a :class:`ServingError` carrying the gRPC status code the client will
see, and a message saying what was wrong and what is allowed. The servicer turns it into
``context.abort(code, message)``; nothing else needs to know about gRPC status handling.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """A request failure with the gRPC status code it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def resource_exhausted(message: str) -> ServingError:
    """The request itself is too large for the limits: sending it again will not help."""
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


class Overloaded(ServingError):
    """The server is too busy for this request now (a full queue, every stream slot taken): a
    retry later may pass. RESOURCE_EXHAUSTED on gRPC, like a request too large; HTTP tells
    the two apart (429, not 413)."""


def overloaded(message: str) -> Overloaded:
    return Overloaded(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def deadline_exceeded(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)
