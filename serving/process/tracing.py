"""OpenTelemetry tracing: set-up from the standard OTEL_* environment variables, and the
spans of a call.

Off unless OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`, or both, comma
separated; `none` or unset: off). Then OTEL_SERVICE_NAME (default "latentserve"),
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_PROPAGATORS and the
OTEL_EXPORTER_OTLP_* variables apply as the OpenTelemetry SDK defines them. Off, nothing
here imports opentelemetry and a call pays one `is None` test.

Spans (docs/operations.md, "Tracing"):
- the call (SERVER kind, named for its method: Decode, ModelInfer, RestInfer, ...), a child
  of the client's span when the request carries a W3C `traceparent` (gRPC metadata or HTTP
  header); the tracker of serving/protocols/calls.py opens and closes it;
- per request that ran on a graph, its `queue wait` (child of the call);
- per run of a graph, one `batch` span (child of the first traced call in it, linked to
  every call in it) with its `onnxruntime run` span (model, version, graph, batch size).
The batcher records the last two after each run through :class:`BatchTracer`, from the
times it took anyway, so nothing crosses into the onnxruntime threads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from serving.process.settings import StartupError

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext, Tracer

log = logging.getLogger(__name__)

SERVICE_NAME = "latentserve"
EXPORTERS = ("otlp", "console", "none")
INSTALL_HINT = "pip install 'latentserve[serve,otel]'"


def configure_tracing(environ: Mapping[str, str]) -> Tracing | None:
    """Tracing as the OTEL_* variables in `environ` ask, or None when it is off. A bad
    value or a missing package is a StartupError naming the fix."""
    names = [
        n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()
    ]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise StartupError(
            f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']!r}: unknown exporter "
            f"{', '.join(unknown)}; use otlp, console (or both, comma separated) or none"
        )
    names = [n for n in names if n != "none"]
    if not names:
        return None
    try:
        provider = _provider(names, environ)
    except ImportError as e:
        raise StartupError(
            f"OTEL_TRACES_EXPORTER={','.join(names)} needs the OpenTelemetry SDK ({e.name} is "
            f"missing): {INSTALL_HINT}, or unset OTEL_TRACES_EXPORTER"
        ) from None
    tracing = Tracing(provider)
    from serving.process.logs import add_trace_ids

    add_trace_ids(tracing.trace_id)
    log.info("tracing on: exporting spans to %s", ", ".join(names))
    return tracing


def _provider(names: Sequence[str], environ: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG) when none is given here.
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "console":
            # At once, span by span: the console exporter is for reading along.
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
    return provider


def _otlp_exporter(environ: Mapping[str, str]) -> Any:
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )
        except ImportError:
            raise StartupError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs "
                "opentelemetry-exporter-otlp-proto-http (pip install it), or use grpc"
            ) from None
        return HttpExporter()
    raise StartupError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc or http/protobuf"
    )


def _wall_ns_offset() -> int:
    """Add to a time.monotonic() value in ns to get the epoch time spans take."""
    return time.time_ns() - time.monotonic_ns()


class Tracing:
    """The tracer of one server process (or worker)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, propagate, trace

        self._provider = provider
        self._tracer: Tracer = provider.get_tracer("latentserve")
        self._context = context
        self._propagate = propagate
        self._trace = trace

    def start_call(self, method: str, carrier: Iterable[tuple[str, Any]] | None) -> object:
        """Open the call's span (the client's span its parent when `carrier`, gRPC metadata
        or HTTP headers, holds a traceparent) and make it current; the handle for end_call."""
        headers = {}
        for key, value in carrier or ():
            if key.lower() in ("traceparent", "tracestate"):
                headers[key.lower()] = value.decode() if isinstance(value, bytes) else value
        parent = self._propagate.extract(headers) if headers else None
        span = self._tracer.start_span(
            method,
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={"rpc.method": method},
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def end_call(self, handle: object, model: str, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        span, token = cast("tuple[Span, Token[Context]]", handle)
        span.set_attribute("latentserve.model", model)
        span.set_attribute("rpc.grpc.status_code", code)
        if code != "OK":
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()
        # A call may end in another context than it began (a cancelled stream).
        with contextlib.suppress(ValueError):
            self._context.detach(token)

    def trace_id(self) -> str | None:
        """The current span's trace id (32 hex digits), if a sampled span is current."""
        context = self._trace.get_current_span().get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else None

    def batch_tracer(self, model: str, version: str, graph: str) -> BatchTracer:
        return BatchTracer(self._tracer, model, version, graph)

    def shutdown(self) -> None:
        """Export what is still buffered."""
        self._provider.shutdown()


class BatchTracer:
    """serving.core.batching's tracing hooks for one graph (see the module docstring)."""

    def __init__(self, tracer: Tracer, model: str, version: str, graph: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Link, NonRecordingSpan

        self._tracer = tracer
        self._trace = trace
        self._link = Link
        self._non_recording = NonRecordingSpan
        self._attributes = {
            "latentserve.model": model,
            "latentserve.model_version": version,
            "latentserve.graph": graph,
        }

    def current(self) -> object | None:
        """The caller's span context, if it is traced (sampled)."""
        context = self._trace.get_current_span().get_span_context()
        return context if context.is_valid and context.trace_flags.sampled else None

    def ran(
        self,
        rows: int,
        calls: Sequence[tuple[object | None, float]],
        gathered: float,
        start: float,
        done: float,
    ) -> None:
        """A run of `rows` rows for `calls` ((current() handle, time.monotonic() when
        queued) each): queue wait spans, the batch span and its onnxruntime run span."""
        traced = [(cast("SpanContext", c), t) for c, t in calls if c is not None]
        if not traced:
            return
        offset = _wall_ns_offset()

        def wall(t: float) -> int:
            return int(t * 1e9) + offset

        attributes = self._attributes
        for context, queued in traced:
            wait = self._tracer.start_span(
                "queue wait",
                context=self._parent(context),
                start_time=wall(queued),
                attributes=attributes,
            )
            wait.end(end_time=wall(gathered))
        batch = self._tracer.start_span(
            "batch",
            context=self._parent(traced[0][0]),
            links=[self._link(context) for context, _ in traced],
            start_time=wall(gathered),
            attributes={
                **attributes,
                "latentserve.batch.rows": rows,
                "latentserve.batch.calls": len(calls),
            },
        )
        run = self._tracer.start_span(
            "onnxruntime run",
            context=self._trace.set_span_in_context(batch),
            start_time=wall(start),
            attributes={**attributes, "latentserve.batch_size": rows},
        )
        run.end(end_time=wall(done))
        batch.end(end_time=wall(done))

    def _parent(self, context: SpanContext) -> Any:
        span: Span = self._non_recording(context)
        return self._trace.set_span_in_context(span)
