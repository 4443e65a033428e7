"""Replicas for scale-out tests and the `replicas` benchmark: `python -m serving` processes,
each on its own loopback address (127.0.0.2, 127.0.0.3, ... act as separate hosts without
any setup) and a port picked at random in 20000-40000, so it can restart on the same
address after a SIGKILL; each counts its calls in its own Prometheus metrics.
"""

from __future__ import annotations

import functools
import random
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentbench.serverproc import READY, ServerProcess
from latentserve.manifest import read_manifest

if TYPE_CHECKING:
    from latentbench.envoyproc import EnvoyProcess
    from latentbench.loadgen import Aggregate, LoadGenerator

REPLICA_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PORT_RANGE = (20000, 40000)


def pick_port(host: str, taken: set[int] | None = None) -> int:
    """A port in PORT_RANGE that is free on `host` right now (TCP bind test)."""
    taken = taken if taken is not None else set()
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE} on {host}")


class Replica(ServerProcess):
    """One server on (host, port) with its metrics on (host, metrics_port)."""

    def __init__(
        self,
        models_dir: Path,
        host: str,
        flags: Sequence[str] = (),
        port: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        taken: set[int] = set()
        self.host = host
        chosen = port if port is not None else pick_port(host, taken)
        self.metrics_port = metrics_port if metrics_port is not None else pick_port(host, taken)
        # Later flags win in argparse: these replace ServerProcess's 127.0.0.1 / port 0.
        super().__init__(
            models_dir,
            [
                *flags,
                "--host",
                host,
                "--port",
                str(chosen),
                "--metrics-port",
                str(self.metrics_port),
            ],
            name=f"replica {host}:{chosen}",
        )
        self.port = chosen
        self._listening = re.compile(rf"listening on {re.escape(host)}:(\d+)")

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def wait_ready(self, timeout: float = 60.0) -> Replica:
        self._wait_for(self._listening, timeout)
        self._wait_for(READY, timeout)
        with grpc.insecure_channel(self.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"{self.name} is up but not SERVING")
        return self

    def restart(self) -> Replica:
        """A new process on the same address (after kill or stop); call wait_ready after."""
        self.lines = []
        self.start()
        return self

    def kill(self) -> None:
        """SIGKILL our own child: a crash, nothing drained."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM our own child (the server drains); see `wait`."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout)

    def requests(self, method: str) -> int:
        """latentserve_requests_total for `method` (all models), from this replica's metrics.
        0 once the process is gone."""
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0
        pattern = re.compile(
            r'^latentserve_requests_total\{[^}]*method="' + re.escape(method) + r'"[^}]*\} (\S+)$',
            re.M,
        )
        return int(sum(float(v) for v in pattern.findall(text)))


def start_replicas(
    models_dir: Path,
    flags: Sequence[str] = (),
    hosts: Sequence[str] = REPLICA_HOSTS,
    timeout: float = 90.0,
) -> list[Replica]:
    """Start one replica per host at once, wait for all; stop them all on any failure."""
    return start_all([Replica(models_dir, host, flags) for host in hosts], timeout)


R = TypeVar("R", bound=ServerProcess)


def start_all(replicas: list[R], timeout: float) -> list[R]:
    """Start every replica at once, then wait for each to be ready; on any failure stop
    them all."""
    try:
        for replica in replicas:
            replica.start()
        end = time.monotonic() + timeout
        for replica in replicas:
            replica.wait_ready(max(1.0, end - time.monotonic()))
    except BaseException:
        stop_all(replicas)
        raise
    return replicas


def stop_all(replicas: Sequence[ServerProcess]) -> None:
    for replica in replicas:
        replica.stop()


# -- the `replicas` benchmark scenario -------------------------------------------------------

BENCH_RPC = "Encode"  # single-image Encode: the call whose cost is mostly transport


@dataclass(frozen=True)
class ReplicasConfig:
    models_dir: Path
    model: str = "mnist-vae"
    warmup_s: float = 1.0
    duration_s: float = 4.0
    # c=1 latency alternates direct / through Envoy this many times, so both see the same load.
    rounds: int = 3
    client_processes: int = 2
    envoy_concurrency: int = 1  # Envoy worker threads (--concurrency); the machine has 2 cores
    max_requests: int = 200_000
    # The rolling restart under load (latentbench.rolling): calls per path, 0 = skip it.
    rolling_calls: int = 20_000


@dataclass
class ReplicasResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _encode_request(model: str, image_shape: tuple[int, ...]) -> bytes:
    from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
    from latentserve.tensors import array_to_tensor

    images = np.zeros((1, *image_shape), np.float32)
    return pb.EncodeRequest(model=model, images=array_to_tensor(images)).SerializeToString()


def run_replicas(
    config: ReplicasConfig, workdir: Path, log: Callable[[str], None] = print
) -> ReplicasResult:
    """Direct vs through Envoy at c=1 and c=64, 1 replica vs 3; Envoy's CPU per call."""
    from latentbench.loadgen import LoadGenerator
    from latentbench.suite import machine_info

    started = time.monotonic()
    request = _encode_request(
        config.model, read_manifest(config.models_dir / config.model).image_shape
    )
    result = ReplicasResult(
        config={**asdict(config), "models_dir": str(config.models_dir)}, machine=machine_info()
    )
    replicas = start_replicas(config.models_dir, ["--default-model", config.model])
    envoys: list[EnvoyProcess] = []
    try:
        for name, members in (("envoy-1", replicas[:1]), ("envoy-3", replicas)):
            envoy = _envoy_for(name, members, workdir, config)
            envoys.append(envoy.start())
            envoy.wait_hosts({r.address for r in members})
        envoy1, envoy3 = envoys
        with LoadGenerator(config.client_processes) as gen:
            phases = _ReplicasPhases(config, gen, request, result, log)
            phases.c1_latency_alternating(replicas[0], envoy1)
            phases.c1_single_rounds(replicas[0], envoy1)
            phases.c64_throughput(replicas[0], envoy1, envoy3)
            result.summary["errors"] = sum(r["errors"] for r in result.rows)
    finally:
        for envoy in envoys:
            envoy.stop()
        stop_all(replicas)
    if config.rolling_calls:
        measure_rolling_restarts(config, workdir, result, log)
    result.seconds = time.monotonic() - started
    return result


def _envoy_for(
    name: str, members: Sequence[Replica], workdir: Path, config: ReplicasConfig
) -> EnvoyProcess:
    """An Envoy (not started yet) on 127.0.0.1 balancing over `members`."""
    from latentbench.envoyproc import EnvoyProcess, render_config

    rendered = render_config(
        [r.address for r in members],
        listen=("127.0.0.1", pick_port("127.0.0.1")),
        admin=("127.0.0.1", pick_port("127.0.0.1")),
    )
    return EnvoyProcess(rendered, workdir / name, concurrency=config.envoy_concurrency)


@dataclass
class _ReplicasPhases:
    """The scenario's measurements, in the order run_replicas takes them; each adds its rows
    and summary figures to `result`."""

    config: ReplicasConfig
    gen: LoadGenerator
    request: bytes
    result: ReplicasResult
    log: Callable[[str], None]

    def c1_latency_alternating(self, replica: Replica, envoy: EnvoyProcess) -> None:
        self.log("c=1, one replica: direct vs through Envoy (alternating rounds)")
        direct: list[float] = []
        proxied: list[float] = []
        for _ in range(self.config.rounds):
            direct += self.load(replica.target, 1).latencies_s
            proxied += self.load(envoy.target, 1).latencies_s
        d = np.percentile(np.asarray(direct) * 1e3, [50, 99])
        p = np.percentile(np.asarray(proxied) * 1e3, [50, 99])
        summary = self.result.summary
        summary["c1_direct_p50_ms"] = float(d[0])
        summary["c1_envoy_p50_ms"] = float(p[0])
        summary["envoy_added_p50_ms_c1"] = float(p[0] - d[0])
        summary["envoy_added_p99_ms_c1"] = float(p[1] - d[1])
        self.log(
            f"  direct p50 {d[0]:.3f} ms p99 {d[1]:.3f} ms; Envoy p50 {p[0]:.3f} ms "
            f"p99 {p[1]:.3f} ms; added p50 {p[0] - d[0]:.3f} ms, p99 {p[1] - d[1]:.3f} ms"
        )

    def c1_single_rounds(self, replica: Replica, envoy: EnvoyProcess) -> None:
        self.log("single rounds for the table:")
        self.row("direct", 1, 1, self.load(replica.target, 1))
        self.through_envoy(envoy, 1, 1)

    def c64_throughput(self, replica: Replica, envoy1: EnvoyProcess, envoy3: EnvoyProcess) -> None:
        self.log("c=64: throughput, 1 replica vs 3")
        c64_direct = self.row("direct", 1, 64, self.load(replica.target, 64))
        self.through_envoy(envoy1, 1, 64)
        self.through_envoy(envoy3, 3, 64)
        rows, summary = self.result.rows, self.result.summary
        summary["c64_direct_1_calls_per_s"] = c64_direct["images_per_s"]
        summary["c64_envoy_3_calls_per_s"] = rows[-1]["images_per_s"]
        summary["c64_envoy_cpu_us_per_call"] = rows[-1]["envoy_cpu_us_per_call"]

    def load(self, target: str, concurrency: int) -> Aggregate:
        return self.gen.run(
            target,
            BENCH_RPC,
            self.request,
            1,
            concurrency,
            warmup_s=self.config.warmup_s,
            duration_s=self.config.duration_s,
            max_requests=self.config.max_requests,
            min_requests=10,
        )

    def through_envoy(self, envoy: EnvoyProcess, replicas_n: int, concurrency: int) -> Aggregate:
        calls0 = envoy.counter("cluster.latentserve.upstream_rq_total")
        cpu0 = envoy.cpu_seconds()
        agg = self.load(envoy.target, concurrency)
        calls = envoy.counter("cluster.latentserve.upstream_rq_total") - calls0
        cpu = envoy.cpu_seconds() - cpu0
        self.row(
            "envoy",
            replicas_n,
            concurrency,
            agg,
            envoy_cpu_us_per_call=1e6 * cpu / max(calls, 1),
            envoy_calls=calls,
        )
        return agg

    def row(
        self, path: str, replicas_n: int, concurrency: int, agg: Aggregate, **extra: Any
    ) -> dict[str, Any]:
        from latentbench.stats import Measurement, summarise

        m = summarise(
            Measurement("replicas", path, BENCH_RPC, 1, concurrency),
            agg.latencies_s,
            agg.window_s,
            agg.errors,
        )
        entry = {**m.to_dict(), "replicas": replicas_n, **extra}
        self.result.rows.append(entry)
        self.log(
            f"  {path:<14} replicas={replicas_n} c={concurrency:<3} "
            f"{m.images_per_s:8.0f} calls/s  p50 {m.p50_ms:.3f} ms  p99 {m.p99_ms:.3f} ms"
            f"  errors {m.errors}"
            + (f"  envoy {extra['envoy_cpu_us_per_call']:.0f} us CPU/call" if extra else "")
        )
        return entry


def measure_rolling_restarts(
    config: ReplicasConfig, workdir: Path, result: ReplicasResult, log: Callable[[str], None]
) -> None:
    """Failed calls in a rolling restart under load (16 callers; one replica SIGKILLed, one
    SIGTERMed 3 s later, both restarted), through the shipped Envoy config and with
    client-side round robin, replicas started as the docs say (latentbench.rolling)."""
    from latentbench.rolling import (
        CallerLoad,
        ipv4_target,
        rolling_restart,
        start_docs_replicas,
        start_envoy,
    )

    log("rolling restart under load: SIGKILL one replica, SIGTERM another 3 s later, restart")
    rolling: list[dict[str, Any]] = []
    for path in ("envoy", "client"):
        replicas = start_docs_replicas(
            None if config.models_dir == Path("models") else config.models_dir
        )
        try:
            if path == "envoy":
                with start_envoy(replicas, workdir / "envoy-rolling") as envoy:
                    load = CallerLoad(envoy.target, 16, client="raw")
                    outcome = rolling_restart(
                        replicas,
                        load,
                        path=path,
                        min_calls=config.rolling_calls,
                        wait_ready=functools.partial(
                            envoy.wait_hosts, {r.address for r in replicas}, 60
                        ),
                        log=log,
                    )
            else:
                load = CallerLoad(ipv4_target(replicas), 16, client="latentclient")
                outcome = rolling_restart(
                    replicas, load, path=path, min_calls=config.rolling_calls, log=log
                )
        finally:
            stop_all(replicas)
        rolling.append(outcome.to_dict())
    result.summary["rolling_restart"] = rolling
    result.summary["rolling_failed_calls"] = sum(r["failed"] for r in rolling)


def write_markdown(result: ReplicasResult, path: Path) -> None:
    s = result.summary
    lines = [
        "# latent-bench `replicas`: direct vs through Envoy, 1 replica vs 3",
        "",
        f"Command: `{result.config.get('command', '')}`  ",
        f"Machine: {result.machine.get('cpu')}, {result.machine.get('cores')} cores, load "
        f"average at start {result.machine.get('load_average_at_start')}; "
        f"{result.seconds:.0f} s. Single-image `{BENCH_RPC}` of `{result.config['model']}`; "
        f"replicas on 127.0.0.2-4, Envoy (--concurrency {result.config['envoy_concurrency']}) "
        "on 127.0.0.1, all on this one machine's cores.",
        "",
        f"- Envoy's added latency at c=1: p50 **{s['envoy_added_p50_ms_c1']:.3f} ms** "
        f"(direct {s['c1_direct_p50_ms']:.3f}, through Envoy {s['c1_envoy_p50_ms']:.3f}), "
        f"p99 {s['envoy_added_p99_ms_c1']:.3f} ms (target: p50 < 0.3 ms)",
        f"- Envoy's CPU per call at c=64 over 3 replicas: {s['c64_envoy_cpu_us_per_call']:.0f} us",
        "",
        "| path | replicas | callers | calls/s | p50 ms | p99 ms | errors | Envoy CPU us/call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        cpu = r.get("envoy_cpu_us_per_call")
        lines.append(
            f"| {r['path']} | {r['replicas']} | {r['concurrency']} | {r['images_per_s']:.0f} | "
            f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} | "
            f"{'' if cpu is None else f'{cpu:.0f}'} |"
        )
    lines += rolling_markdown(s.get("rolling_restart", []))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def rolling_markdown(rolling: Sequence[dict[str, Any]]) -> list[str]:
    """The rolling-restart table: failed calls per path."""
    if not rolling:
        return []
    lines = [
        "",
        "Rolling restart under load: 3 replicas started as the docs say (`latent-serve`, "
        "defaults), 16 callers of single-image Decode, one replica SIGKILLed, another "
        "SIGTERMed 3 s later, both restarted.",
        "",
        "| path | calls | failed | by status | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in rolling:
        path = "Envoy (shipped config)" if r["path"] == "envoy" else "client-side round robin"
        lines.append(
            f"| {path} | {r['calls']:,} | {r['failed']} | {r['outcomes']} | {r['seconds']:.1f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latentbench.replicas` (or `latent-bench --replicas`)."""
    import argparse
    import json
    import shlex
    import sys
    import tempfile

    p = argparse.ArgumentParser(prog="latent-bench --replicas")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="mnist-vae")
    p.add_argument("--duration", type=float, default=ReplicasConfig.duration_s)
    p.add_argument("--warmup", type=float, default=ReplicasConfig.warmup_s)
    p.add_argument("--rounds", type=int, default=ReplicasConfig.rounds)
    p.add_argument("--envoy-concurrency", type=int, default=ReplicasConfig.envoy_concurrency)
    p.add_argument("--client-processes", type=int, default=ReplicasConfig.client_processes)
    p.add_argument(
        "--rolling-calls",
        type=int,
        default=ReplicasConfig.rolling_calls,
        help="calls per rolling-restart run (through Envoy, then client-side); 0 skips it",
    )
    p.add_argument("--results-dir", type=Path, default=Path("benchmarks"))
    args = p.parse_args(argv)
    config = ReplicasConfig(
        models_dir=args.models_dir,
        model=args.model,
        warmup_s=args.warmup,
        duration_s=args.duration,
        rounds=args.rounds,
        client_processes=args.client_processes,
        envoy_concurrency=args.envoy_concurrency,
        rolling_calls=args.rolling_calls,
    )
    with tempfile.TemporaryDirectory(prefix="latent-bench-replicas-") as tmp:
        result = run_replicas(config, Path(tmp))
    given = sys.argv[1:] if argv is None else list(argv)
    result.config["command"] = "python -m latentbench.replicas " + shlex.join(given)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "replicas.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    write_markdown(result, args.results_dir / "replicas.md")
    print(f"wrote {args.results_dir / 'replicas.json'} and replicas.md")
    failed = result.summary.get("errors", 0) + result.summary.get("rolling_failed_calls", 0)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
