"""No credential reaches a log line (issue 22): the formatter scrubs bearer and basic
credentials and Authorization header values, whatever logged them, in text and JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest

from serving.process.logs import JsonFormatter, TextFormatter, redact
from serving.protocols.auth import TokenCheck

TOKEN = "s3cr3t-T0ken.value_42"


@pytest.mark.parametrize(
    "text",
    [
        f"b'Authorization: Bearer {TOKEN}\\x00'",
        f"Invalid encoding on b'Bearer \\xff\\xfe{TOKEN}'",
        f"authorization: bearer {TOKEN}",
        f'{{"authorization": "{TOKEN}"}}',
        f"Authorization: Basic {TOKEN}",
        f"header Authorization={TOKEN}",
    ],
)
def test_credentials_are_redacted(text: str) -> None:
    assert TOKEN not in redact(text)
    assert "<redacted>" in redact(text)


def test_ordinary_lines_are_left_alone() -> None:
    line = "listening on 127.0.0.1:50051 (TLS, bearer token auth on (1 tokens))"
    assert redact(line) == line


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_formatters_redact_messages_and_tracebacks(formatter: logging.Formatter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test-redaction")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"bad header b'Authorization: Bearer {TOKEN}\\x00'")
        except ValueError:
            logger.exception("Error handling request with %s", f"Bearer {TOKEN}")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert TOKEN not in out and "<redacted>" in out
    if isinstance(formatter, JsonFormatter):
        json.loads(out)


def test_undecodable_token_is_refused_not_raised() -> None:
    """grpc hands non-UTF-8 metadata over with surrogates; encoding them used to raise
    UnicodeEncodeError, answered INTERNAL."""
    checker = TokenCheck([TOKEN])
    assert checker.accepts("\udcff\udcfe" + TOKEN) is False
    assert checker.accepts(TOKEN) is True
