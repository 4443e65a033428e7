"""configure_tracing: off unless OTEL_TRACES_EXPORTER asks, a clear start-up error otherwise."""

from __future__ import annotations

import logging
import sys

import pytest

from serving.process.logs import TraceIdFilter
from serving.process.settings import StartupError
from serving.process.tracing import Tracing, configure_tracing


@pytest.mark.parametrize(
    "environ", [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " "}]
)
def test_off_by_default(environ: dict[str, str]) -> None:
    assert configure_tracing(environ) is None


def test_an_unknown_exporter_names_the_allowed_ones() -> None:
    with pytest.raises(StartupError, match="unknown exporter zipkin; use otlp, console"):
        configure_tracing({"OTEL_TRACES_EXPORTER": "console,zipkin"})


def test_without_the_sdk_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    with pytest.raises(StartupError, match=r"pip install 'latentserve\[serve,otel\]'"):
        configure_tracing({"OTEL_TRACES_EXPORTER": "console"})


def test_an_unsupported_otlp_protocol_is_refused() -> None:
    pytest.importorskip("opentelemetry.sdk")
    with pytest.raises(StartupError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        configure_tracing(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )


def test_console_turns_it_on_and_log_records_get_trace_ids() -> None:
    pytest.importorskip("opentelemetry.sdk")
    handlers = logging.getLogger().handlers
    before = [list(h.filters) for h in handlers]
    try:
        tracing = configure_tracing({"OTEL_TRACES_EXPORTER": "console"})
        assert isinstance(tracing, Tracing)
        added = [f for h in handlers for f in h.filters if isinstance(f, TraceIdFilter)]
        assert len(added) == len(handlers)
        tracing.shutdown()
    finally:
        for handler, filters in zip(handlers, before, strict=True):
            handler.filters[:] = filters
