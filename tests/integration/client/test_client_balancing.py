"""Client-side balancing without a proxy: one LatentClient with an `ipv4:` target over three
real replicas (`python -m serving` on 127.0.0.2/.3/.4), gRPC's round_robin policy and its
retry policy on UNAVAILABLE (latentserve.channels):

- one client's calls spread evenly over the replicas (each replica's own request counter),
  from one caller and from 8 threads sharing the client;
- SIGKILL one replica during a 16-thread load: no call fails (the calls in flight on it are
  retried on another replica, then round_robin skips its broken connection); once restarted
  on the same address it gets calls again;
- SIGTERM one during load, with no drain delay: no call fails either.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures.balancing import METHOD, assert_even, request_counts, spread

from latentbench.replicas import Replica, start_replicas, stop_all
from latentserve.client import LatentClient, LatentServeError

# The balancing client (round_robin service config + retry policy) lives here.
pytest.importorskip("latentserve.channels", reason="client without round_robin/retry support")

LATENTS = np.zeros((1, 2), np.float32)
FLAGS = ["--default-model", "tiny-vae"]


@pytest.fixture(scope="module")
def replicas(tiny_models_dir: Path) -> Iterator[list[Replica]]:
    running = start_replicas(tiny_models_dir, FLAGS)
    yield running
    stop_all(running)


def ipv4_target(replicas: list[Replica]) -> str:
    return "ipv4:" + ",".join(r.target for r in replicas)


class ThreadLoad:
    """`threads` callers sharing one LatentClient until stopped (bounded by max_calls)."""

    def __init__(self, client: LatentClient, threads: int, max_calls: int = 50_000) -> None:
        self.client = client
        self.max_calls = max_calls
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())

    def _work(self) -> None:
        while not self._stop.is_set() and self.calls < self.max_calls:
            try:
                self.client.decode(LATENTS)
                outcome = "OK"
            except LatentServeError as e:
                outcome = e.code.name
                if len(self.failures) < 20:
                    self.failures.append(str(e))
            with self._lock:
                self.outcomes[outcome] += 1

    def wait_calls(self, more: int, timeout: float = 30.0) -> None:
        goal, end = self.calls + more, time.monotonic() + timeout
        while self.calls < goal and time.monotonic() < end:
            time.sleep(0.02)

    def __enter__(self) -> ThreadLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def _all_connected(client: LatentClient, replicas: list[Replica]) -> None:
    """round_robin connects to every address in the background: wait until each answered."""
    before = request_counts(replicas)
    for _ in range(200):
        client.decode(LATENTS)
        if all(n > 0 for n in spread(before, request_counts(replicas))):
            return
        time.sleep(0.01)
    raise AssertionError(f"not every replica answered: {spread(before, request_counts(replicas))}")


def test_one_client_spreads_evenly(replicas):
    with LatentClient(ipv4_target(replicas), timeout=10) as client:
        _all_connected(client, replicas)
        before = request_counts(replicas)
        for _ in range(600):
            client.decode(LATENTS)
        sequential = spread(before, request_counts(replicas))
        before = request_counts(replicas)
        with ThreadLoad(client, threads=8, max_calls=600) as load:
            load.wait_calls(600)
        threaded = spread(before, request_counts(replicas))
    print(f"ipv4 round_robin per replica: c=1 {sequential}, 8 threads {threaded}")
    assert sum(sequential) == 600
    assert_even(sequential)
    assert load.outcomes["OK"] >= 600 and load.calls == load.outcomes["OK"], load.failures
    assert_even(threaded)


def test_sigkill_under_load_loses_nothing_and_rejoins(replicas):
    victim, others = replicas[0], replicas[1:]
    with LatentClient(ipv4_target(replicas), timeout=10) as client:
        _all_connected(client, replicas)
        with ThreadLoad(client, threads=16) as load:
            load.wait_calls(300)
            victim.kill()
            after_kill = request_counts(others)
            load.wait_calls(500)
            assert sum(spread(after_kill, request_counts(others))) >= 500
            victim.restart().wait_ready()
            # The channel reconnects with backoff: bounded by calls, ~20 s at most.
            rejoin_started = time.monotonic()
            for _ in range(200):
                if victim.requests(METHOD) > 0:
                    break
                load.wait_calls(100)
            rejoined_s = time.monotonic() - rejoin_started
            assert victim.requests(METHOD) > 0, "the restarted replica got no calls"
    print(f"client-side SIGKILL: {dict(load.outcomes)}; rejoined after {rejoined_s:.2f}s")
    assert load.calls == load.outcomes["OK"], (load.outcomes, load.failures)


def test_sigterm_without_drain_delay_loses_nothing(replicas):
    """Client-side, no drain delay is needed (these replicas run with the default, 0): the
    draining replica refuses new calls with UNAVAILABLE, gRPC retries them on another one,
    and round_robin drops the replica once it closes its connection."""
    victim, others = replicas[1], [replicas[0], replicas[2]]
    with LatentClient(ipv4_target(replicas), timeout=10) as client:
        _all_connected(client, replicas)
        with ThreadLoad(client, threads=16) as load:
            load.wait_calls(300)
            victim.terminate()
            assert victim.wait(30) == 0
            after = request_counts(others)
            load.wait_calls(300)
            assert sum(spread(after, request_counts(others))) >= 300
        victim.restart().wait_ready()
    print(f"client-side SIGTERM: {dict(load.outcomes)}")
    assert load.calls == load.outcomes["OK"], (load.outcomes, load.failures)
