"""Logging set-up for the server: plain text for people, or one JSON object per line for log
collectors (`--log-format json`). Called once by the CLI; library code only uses
`logging.getLogger(__name__)`. With tracing on (serving/process/tracing.py), a line logged
during a traced call carries its trace id (`trace_id`: a JSON field, or appended to text).

Every line is scrubbed of credentials before it is written: a malformed request can make a
library log the raw header (aiohttp logs a header line with a NUL byte at ERROR, token and
all), so the formatter, not each call site, is where a token is kept out.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else was passed via `extra=` and is kept.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


# "Bearer <credential>" / "Basic <credential>" anywhere (but not the server's own words
# "bearer token auth on"), and whatever follows an
# Authorization header name; the credential ends at whitespace or a quote (escapes such as
# \\xff in a repr are part of it).
_CREDENTIAL = re.compile(
    r"(?i)(\b(?:bearer|basic)\s+(?!(?:token|tokens|auth)\b)"
    r"|\bauthorization\b['\"]?\s*[:=,]\s*['\"]?(?!\s*(?:bearer|basic)\b))"
    r"[^\s'\"]+"
)
REDACTED = "<redacted>"


def redact(text: str) -> str:
    """`text` with every credential replaced by <redacted>."""
    return _CREDENTIAL.sub(lambda m: m.group(1) + REDACTED, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The plain-text line, credentials redacted, with ` trace_id=...` at the end when the
    record has one."""

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        trace_id = getattr(record, "trace_id", None)
        return f"{line} trace_id={trace_id}" if trace_id else line


class TraceIdFilter(logging.Filter):
    """Adds the current trace id (from `trace_id()`) to each record logged inside a trace."""

    def __init__(self, trace_id: Callable[[], str | None]) -> None:
        super().__init__()
        self._trace_id = trace_id

    def filter(self, record: logging.LogRecord) -> bool:
        trace_id = self._trace_id()
        if trace_id:
            record.trace_id = trace_id
        return True


def add_trace_ids(trace_id: Callable[[], str | None]) -> None:
    """Make every handler of the root logger mark records with the current trace id."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(TraceIdFilter(trace_id))


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
