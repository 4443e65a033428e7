"""Progress bars are drawn only on a terminal: in a log file they are megabytes of redraws."""

from __future__ import annotations

import io
import sys

import pytest

from training import cli


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command", [["fit", "--out", "runs/x"], ["classifier"]])
def test_bars_only_on_a_terminal_and_never_with_no_progress(monkeypatch, command) -> None:
    parser = cli.build_parser()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not cli._progress_bars(parser.parse_args(command))
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert cli._progress_bars(parser.parse_args(command))
    assert not cli._progress_bars(parser.parse_args([*command, "--no-progress"]))
