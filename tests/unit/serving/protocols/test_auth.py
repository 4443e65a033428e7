"""The one bearer-token check that gRPC, REST and the explorer share."""

from __future__ import annotations

from serving.protocols.auth import HTTP_CREDENTIALS, TokenCheck


def test_no_tokens_accepts_anything():
    assert TokenCheck([]).refusal(None, HTTP_CREDENTIALS) is None
    assert TokenCheck([]).refusal("Basic abc", HTTP_CREDENTIALS) is None


def test_accepts_any_configured_token_case_insensitive_scheme():
    check = TokenCheck(["old", "new"])
    assert check.refusal("Bearer new", HTTP_CREDENTIALS) is None
    assert check.refusal("bearer  old ", HTTP_CREDENTIALS) is None
    assert check.refusal(b"BEARER old", HTTP_CREDENTIALS) is None


def test_missing_names_what_to_send_and_wrong_is_invalid():
    check = TokenCheck(["secret"])
    missing = check.refusal(None, HTTP_CREDENTIALS)
    assert missing is not None and "Authorization: Bearer <token>" in missing
    assert check.refusal("Bearer nope", HTTP_CREDENTIALS) == "invalid bearer token"
    assert check.refusal("Basic secret", HTTP_CREDENTIALS) == "invalid bearer token"
    assert check.refusal("secret", HTTP_CREDENTIALS) == "invalid bearer token"


def test_values_that_are_not_utf8_are_refused_not_raised():
    check = TokenCheck(["secret"])
    assert check.refusal(b"Bearer \xff\xfe", HTTP_CREDENTIALS) == "invalid bearer token"
    assert check.refusal("Bearer \udcff", HTTP_CREDENTIALS) == "invalid bearer token"
