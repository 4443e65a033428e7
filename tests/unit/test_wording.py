"""Counts in user-facing messages agree with their number."""

from __future__ import annotations

import pytest

from latentserve.wording import counted


@pytest.mark.parametrize(
    ("n", "expected"), [(0, "0 images"), (1, "1 image"), (2, "2 images"), (1024, "1024 images")]
)
def test_counted_is_singular_only_for_one(n, expected):
    assert counted(n, "image") == expected


def test_counted_takes_an_irregular_plural():
    assert counted(1, "is", "are") == "1 is"
    assert counted(3, "is", "are") == "3 are"
