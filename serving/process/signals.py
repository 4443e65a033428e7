"""What a stop signal asks for: the first SIGTERM or SIGINT drains the server (NOT_SERVING,
`drain_delay_s` of serving on, then the grace period for calls in flight); a second one, or
Ctrl-C at a terminal, hurries that drain: a developer's server in a terminal has no balancer
to wait for, while Docker, Kubernetes and systemd send SIGTERM and get the full drain.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence


def at_a_terminal() -> bool:
    """The server runs in the foreground of a terminal (stdin is a TTY)."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def hurry_wanted(signals: Sequence[int]) -> bool:
    """`signals` received so far (first first) ask to skip the rest of the drain."""
    return len(signals) > 1 or (list(signals[:1]) == [signal.SIGINT] and at_a_terminal())
