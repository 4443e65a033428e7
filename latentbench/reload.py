"""Benchmark scenario `reload`: hot reload under load, in poll mode (issue 21).

A copy of the model folder is a one-model repository (flat: version 1). A server polls it
(`--model-control poll`, `--poll-interval-s` 0.5) with 1, then 2, worker processes, while
64 closed-loop callers decode one latent each: half over the native gRPC API (on 8
connections, so both workers get some), half as v2 REST JSON calls. After a steady phase
with no change, a new version is published every 2 s (latentserve.publish: staging folder,
then rename) for the publishing phase. Every call is recorded with its start, its latency,
the version that answered and its outcome.

Reported per worker count:

- failed calls (any non-OK answer or transport error), steady and while publishing;
- p99 latency in the steady phase, and in the swap windows (from each publish until half a
  second after the first call the new version answered: loading, warm-up, swap, and the old
  version's drain and release all fall inside), and their ratio;
- time from each publish to the first call answered by the new version (median, max);
- the server's RSS (all its processes) before and after the publishing phase.

Then, on a separate server in explicit mode: RSS after 5 unload/load cycles of the model
(the start) and after 100 more, over the v2 REST repository API.

The load generator shares the machine's 2 cores with the server: read ratios within one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np

from latentbench.serverproc import ServerProcess, rss_bytes
from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve.publish import publish
from latentserve.tensors import array_to_tensor

CALLERS = 64
NATIVE_CONNECTIONS = 8
POLL_INTERVAL_S = 0.5
PUBLISH_EVERY_S = 2.0
SWAP_TAIL_S = 0.5
CYCLES = 100


@dataclass
class Call:
    kind: str  # "native" or "rest"
    started: float  # time.monotonic()
    latency: float
    version: str
    error: str = ""


@dataclass
class RunResult:
    workers: int
    steady_s: float
    publishing_s: float
    calls: int
    failed: int
    failures: list[str]
    steady_p50_ms: float
    swap_p50_ms: float
    steady_p99_ms: float
    swap_p99_ms: float
    p99_ratio: float
    publishing_p99_ms: float
    p99_by_kind_ms: dict[str, dict[str, float]]  # {"native": {"steady": .., "swaps": ..}, ...}
    publishes: int
    versions_answered: int
    publish_to_first_call_s: list[float]
    rss_before_mib: float
    rss_after_mib: float
    load_average: float  # the machine's 1-minute load average at the end (2 cores)


@dataclass
class ReloadResult:
    model: str
    runs: list[RunResult] = field(default_factory=list)
    cycles: dict[str, float] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _p99(values: list[float], q: float = 99) -> float:
    return float(np.percentile(values, q)) * 1000.0 if values else float("nan")


def _ok(calls: list[Call], kind: str = "") -> list[float]:
    return [c.latency for c in calls if not c.error and (not kind or c.kind == kind)]


def _server_rss(server: ServerProcess) -> int:
    """RSS of the server and its worker processes (children, from /proc)."""
    pids = [server.pid]
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # a worker that just exited
            total += rss_bytes(pid)
    return total


def _rest_body(latent_dim: int) -> bytes:
    tensor = {"name": "latents", "datatype": "FP32", "shape": [1, latent_dim]}
    return json.dumps({"inputs": [{**tensor, "data": [0.0] * latent_dim}]}).encode()


async def _native_caller(
    method: Any, request: pb.DecodeRequest, stop: asyncio.Event, calls: list[Call]
) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await method(request, timeout=30)
            version, error = response.model_version, ""
        except grpc.aio.AioRpcError as e:
            version, error = "", f"{e.code().name}: {e.details()}"
        calls.append(Call("native", started, time.monotonic() - started, version, error))


async def _rest_caller(
    session: aiohttp.ClientSession, url: str, body: bytes, stop: asyncio.Event, calls: list[Call]
) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            async with session.post(url, data=body) as response:
                raw = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {raw[:200]!r}")
            version, error = str(json.loads(raw)["model_version"]), ""
        except (aiohttp.ClientError, RuntimeError, OSError) as e:
            version, error = "", str(e)
        calls.append(Call("rest", started, time.monotonic() - started, version, error))


async def _load(
    target: str, http: str, model: str, latent_dim: int, stop: asyncio.Event, calls: list[Call]
) -> None:
    """CALLERS closed-loop callers until `stop`: half native Decode (over
    NATIVE_CONNECTIONS connections), half v2 REST JSON."""
    latents = np.zeros((1, latent_dim), dtype=np.float32)
    request = pb.DecodeRequest(model=model, latents=array_to_tensor(latents))
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(NATIVE_CONNECTIONS)
    ]
    methods = [
        c.unary_unary(
            "/latentserve.v1.Autoencoder/Decode",
            request_serializer=pb.DecodeRequest.SerializeToString,
            response_deserializer=pb.DecodeResponse.FromString,
        )
        for c in channels
    ]
    url, body = f"{http}/v2/models/{model}-decoder/infer", _rest_body(latent_dim)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), headers={"content-type": "application/json"}
    ) as session:
        tasks = [
            _native_caller(methods[i % len(methods)], request, stop, calls)
            for i in range(CALLERS // 2)
        ]
        tasks += [
            _rest_caller(session, url, body, stop, calls) for _ in range(CALLERS - CALLERS // 2)
        ]
        await asyncio.gather(*tasks)
    for c in channels:
        await c.close(None)


@dataclass
class _Timeline:
    """What one poll run recorded: calls, publishes and the phase boundaries."""

    calls: list[Call] = field(default_factory=list)
    publishes: list[tuple[float, int]] = field(default_factory=list)  # (time, version)
    steady_from: float = 0.0
    publishing_from: float = 0.0
    publishing_to: float = 0.0
    rss_before: int = 0
    rss_after: int = 0


async def _scenario(
    server: ServerProcess,
    http: str,
    source: Path,
    repo: Path,
    model: str,
    latent_dim: int,
    steady_s: float,
    publishing_s: float,
) -> _Timeline:
    t = _Timeline()
    stop = asyncio.Event()
    load = asyncio.create_task(_load(server.target, http, model, latent_dim, stop, t.calls))
    await asyncio.sleep(2.0)  # connections up, caches warm: not measured
    t.steady_from = time.monotonic()
    await asyncio.sleep(steady_s)
    t.publishing_from = time.monotonic()
    t.rss_before = _server_rss(server)
    while time.monotonic() - t.publishing_from < publishing_s:
        published = await asyncio.to_thread(publish, source, repo, model)
        t.publishes.append((time.monotonic(), int(published.name)))
        await asyncio.sleep(PUBLISH_EVERY_S)
    t.publishing_to = time.monotonic()
    await asyncio.sleep(1.0)  # the last swap finishes
    stop.set()
    await load
    return t


def run_poll(
    source: Path,
    model: str,
    latent_dim: int,
    workers: int,
    steady_s: float,
    publishing_s: float,
    log: Callable[[str], None],
) -> RunResult:
    """One poll-mode server with `workers` processes: steady load, then publishing."""
    with tempfile.TemporaryDirectory(prefix="latentbench-reload-") as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(source, repo / model)
        http_port = _free_port()
        flags = ["--model-control", "poll", "--poll-interval-s", str(POLL_INTERVAL_S)]
        flags += ["--workers", str(workers), "--http-port", str(http_port)]
        flags += ["--default-model", model, "--max-connection-age-ms", "0"]
        with ServerProcess(repo, flags, name=f"reload-{workers}w") as server:
            http = f"http://127.0.0.1:{http_port}"
            timeline = asyncio.run(
                _scenario(server, http, source, repo, model, latent_dim, steady_s, publishing_s)
            )
            time.sleep(1.0)
            timeline.rss_after = _server_rss(server)
    result = _summarise(workers, timeline)
    firsts = result.publish_to_first_call_s
    log(
        f"{workers} worker(s): {result.calls} calls, {result.failed} failed, p99 steady "
        f"{result.steady_p99_ms} ms, during swaps {result.swap_p99_ms} ms "
        f"({result.p99_ratio}x), publish -> first call median "
        f"{statistics.median(firsts) if firsts else float('nan'):.2f} s"
    )
    return result


def _summarise(workers: int, t: _Timeline) -> RunResult:
    steady = [c for c in t.calls if t.steady_from <= c.started < t.publishing_from]
    during = [c for c in t.calls if t.publishing_from <= c.started]
    firsts: list[float] = []
    windows: list[tuple[float, float]] = []
    for at, version in t.publishes:
        answered = [c.started + c.latency for c in during if c.version == str(version)]
        if answered:
            firsts.append(min(answered) - at)
            windows.append((at, min(answered) + SWAP_TAIL_S))
    swap = [c for c in during if any(a <= c.started < b for a, b in windows)]
    failures = [c.error for c in t.calls if c.error and t.steady_from <= c.started]
    steady_p99, swap_p99 = _p99(_ok(steady)), _p99(_ok(swap))
    return RunResult(
        workers=workers,
        steady_s=round(t.publishing_from - t.steady_from, 2),
        publishing_s=round(t.publishing_to - t.publishing_from, 2),
        calls=len(steady) + len(during),
        failed=len(failures),
        failures=sorted(set(failures))[:10],
        steady_p50_ms=round(_p99(_ok(steady), 50), 2),
        swap_p50_ms=round(_p99(_ok(swap), 50), 2),
        steady_p99_ms=round(steady_p99, 2),
        swap_p99_ms=round(swap_p99, 2),
        p99_ratio=round(swap_p99 / steady_p99, 2),
        publishing_p99_ms=round(_p99(_ok(during)), 2),
        p99_by_kind_ms={
            kind: {
                "steady": round(_p99(_ok(steady, kind)), 2),
                "swaps": round(_p99(_ok(swap, kind)), 2),
            }
            for kind in ("native", "rest")
        },
        publishes=len(t.publishes),
        versions_answered=len(firsts),
        publish_to_first_call_s=[round(f, 3) for f in firsts],
        rss_before_mib=round(t.rss_before / 2**20, 1),
        rss_after_mib=round(t.rss_after / 2**20, 1),
        load_average=round(os.getloadavg()[0], 1),
    )


def run_cycles(
    source: Path, model: str, cycles: int, log: Callable[[str], None]
) -> dict[str, float]:
    """RSS of an explicit-mode server after 5, then after `cycles` more, unload/load cycles."""
    with tempfile.TemporaryDirectory(prefix="latentbench-cycles-") as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(source, repo / model)
        http_port = _free_port()
        flags = ["--model-control", "explicit", "--http-port", str(http_port)]
        flags += ["--default-model", model]
        with ServerProcess(repo, flags, name="cycles") as server:
            base = f"http://127.0.0.1:{http_port}/v2/repository/models/{model}"

            def cycle(n: int) -> None:
                for _ in range(n):
                    for action in ("unload", "load"):
                        request = urllib.request.Request(
                            f"{base}/{action}", data=b"{}", method="POST"
                        )
                        with urllib.request.urlopen(request, timeout=60) as answer:
                            assert answer.status == 200

            cycle(5)
            start = server.rss()
            started = time.monotonic()
            cycle(cycles)
            took = time.monotonic() - started
            end = server.rss()
    figures = {
        "cycles": cycles,
        "rss_start_mib": round(start / 2**20, 1),
        "rss_end_mib": round(end / 2**20, 1),
        "ratio": round(end / start, 3),
        "seconds_per_cycle": round(took / cycles, 3),
    }
    log(
        f"{cycles} unload/load cycles: RSS {figures['rss_start_mib']} -> {figures['rss_end_mib']} MiB ({figures['ratio']}x)"
    )
    return figures


def render_markdown(result: ReloadResult, command: str) -> str:
    lines = [
        "# Hot reload under load (latent-bench --reload)",
        "",
        f"`{command}`",
        "",
        f"Model `{result.model}`; {CALLERS} callers (half native Decode, half v2 REST JSON), "
        f"poll interval {POLL_INTERVAL_S} s, a new version every {PUBLISH_EVERY_S} s.",
        "",
        "| workers | calls | failed | p50 steady / swaps (ms) | p99 steady (ms) | p99 during swaps (ms) "
        "| p99 ratio (target <= 2) | p99 native, REST: steady / swaps (ms) "
        "| publish -> first call by the new version (median / max s) | published versions that answered "
        "| RSS before -> after (MiB) | load average |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.runs:
        firsts = r.publish_to_first_call_s
        median = statistics.median(firsts) if firsts else float("nan")
        worst = max(firsts) if firsts else float("nan")
        kinds = r.p99_by_kind_ms
        lines.append(
            f"| {r.workers} | {r.calls} | {r.failed} | {r.steady_p50_ms} / {r.swap_p50_ms} | "
            f"{r.steady_p99_ms} | {r.swap_p99_ms} | {r.p99_ratio} | "
            f"{kinds['native']['steady']} / {kinds['native']['swaps']}, "
            f"{kinds['rest']['steady']} / {kinds['rest']['swaps']} | "
            f"{median:.2f} / {worst:.2f} | {r.versions_answered} of {r.publishes} | "
            f"{r.rss_before_mib} -> {r.rss_after_mib} | {r.load_average} |"
        )
    c = result.cycles
    if c:
        lines += [
            "",
            f"RSS over {c['cycles']:.0f} unload/load cycles (explicit mode, one process): "
            f"{c['rss_start_mib']} -> {c['rss_end_mib']} MiB, ratio {c['ratio']} "
            f"(target <= 1.10); {c['seconds_per_cycle']} s per cycle.",
        ]
    return "\n".join(lines) + "\n"


def main_reload(args: Any, command: str, log: Callable[[str], None] = print) -> int:
    """`latent-bench --reload`: run, write benchmarks/reload.{json,md}."""
    source = args.models_dir / args.model
    manifest = json.loads((source / "model.json").read_text())
    latent_dim = int(manifest["latent_dim"])
    publishing_s = args.duration if args.duration is not None else 60.0
    steady_s = args.warmup if args.warmup is not None else 10.0
    result = ReloadResult(args.model)
    for workers in (1, 2):
        result.runs.append(
            run_poll(source, args.model, latent_dim, workers, steady_s, publishing_s, log)
        )
    result.cycles = run_cycles(source, args.model, CYCLES, log)
    out = args.json or Path("benchmarks/reload.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, **asdict(result)}, indent=2) + "\n")
    markdown = out.with_suffix(".md")
    markdown.write_text(render_markdown(result, command))
    log(f"wrote {out} and {markdown}")
    return 0 if all(r.failed == 0 for r in result.runs) else 1
