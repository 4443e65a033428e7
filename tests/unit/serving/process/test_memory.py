"""serving.process.memory: the glibc mmap threshold is fixed on Linux, and an explicit
MALLOC_MMAP_THRESHOLD_ from the environment is left alone."""

from __future__ import annotations

import platform
import sys

import pytest

from serving.process.memory import keep_large_buffers_out_of_heap


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)
def test_threshold_is_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert keep_large_buffers_out_of_heap() is True


def test_explicit_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_large_buffers_out_of_heap() is False
