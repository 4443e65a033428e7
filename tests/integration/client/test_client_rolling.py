"""A rolling restart under load with the client's own balancing (issue 22): three replicas
started as the docs say (`latent-serve`, shipped models, no flags beyond host and ports),
16 callers sharing one `AsyncLatentClient` on an `ipv4:` list of them (round robin and the
library's retry policy, both defaults). One replica is SIGKILLed, 3 s later another gets
SIGTERM, then both are restarted; no call may fail. With `--workers 2`, the first victim is
the worker holding the most calls.

One short round in the default suite; `pytest -m rolling` runs 5 full rounds of at least
20,000 calls for 1 and 2 workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from latentbench.replicas import stop_all
from latentbench.rolling import (
    CallerLoad,
    DocsReplica,
    ipv4_target,
    rolling_restart,
    start_docs_replicas,
)

CALLERS = 16
FULL_RUN_CALLS = 20_000
SHORT_RUN_CALLS = 6_000


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def replicas(request: pytest.FixtureRequest) -> Iterator[list[DocsReplica]]:
    extra = [] if request.param == 1 else ["--workers", str(request.param)]
    running = start_docs_replicas(extra=extra)
    yield running
    stop_all(running)


def _run(replicas: list[DocsReplica], calls: int) -> None:
    result = rolling_restart(
        replicas,
        CallerLoad(ipv4_target(replicas), CALLERS, client="latentclient"),
        path="client",
        min_calls=calls,
    )
    assert result.calls >= calls
    assert result.sigterm_exit_code == 0
    if result.failed:
        print("\n".join(result.failures))
    assert result.failed == 0, (result.line(), result.failures)


@pytest.mark.parametrize("replicas", [1], indirect=True, ids=["1-worker"])
def test_short_rolling_restart_client_side_loses_nothing(replicas):
    _run(replicas, SHORT_RUN_CALLS)


def _in_turn(replicas: list[DocsReplica], run: int) -> list[DocsReplica]:
    """The replicas rotated by `run`, so the victims change from run to run: five worker
    kills in one replica within 60 s would be a crash loop, which its supervisor ends."""
    shift = run % len(replicas)
    return replicas[shift:] + replicas[:shift]


@pytest.mark.rolling
@pytest.mark.parametrize("run", range(1, 6))
def test_rolling_restart_client_side_loses_nothing(replicas, run):
    _run(_in_turn(replicas, run), FULL_RUN_CALLS)
