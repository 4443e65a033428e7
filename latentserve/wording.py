"""Counts in messages: "1 image", "2 images", so no user reads "1 images"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun, singular for exactly one: counted(1, "value") -> "1 value"."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
