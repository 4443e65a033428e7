"""Benchmark scenario `workers`: one server process against several on one port.

For each setting of `--workers` (1, 2 and auto) one server is started on 127.0.0.1 (all
three side by side), and single-image Encode, then Decode, calls are sent at 64 concurrent
streams, to each server in turn, for a few rounds (the order rotates each round), so that
the machine's changing background load hits every setting alike. The load comes
from h2load (Debian's nghttp2-client, a C HTTP/2 client that costs the cores almost nothing)
over 16 connections of 4 streams: SO_REUSEPORT spreads connections, not calls, so the load
needs several connections to reach every worker. Without h2load the Python load generator
runs instead (16 processes would be 16 connections; it uses `client_processes`, one
connection each, and shares the cores with the server, so its figures are lower bounds).

Measured per run, all from the server's side:

- calls: the increase of the server's own latentserve_requests_total for the RPC, and
  errors the increase of latentserve_request_errors_total (h2load cannot read gRPC
  trailers, so its "succeeded" only means HTTP 200);
- CPU-seconds: utime + stime from /proc/PID/stat, summed over every process of the server
  (the supervisor and each worker), read just before and just after the load;
- CPU per call = CPU-seconds / calls, over the same interval (warm-up included on both sides);
- projected calls/s on a C-core machine = C / CPU per call: what the server would reach if
  every core were its own and the cost per call stayed flat (no shared bottleneck). The
  figure "2 workers within 10% of 1 worker's CPU per call" checks that premise here;
- calls/s: h2load's rate over its measured window (after its warm-up);
- RSS of each server process once warm, before the load, from /proc/PID/status.

Linux only (reads /proc). The machine is shared: read the ratios within one run.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latentbench import h2load
from latentbench.loadgen import SERVICE, LoadGenerator
from latentbench.serverproc import ServerProcess, cpu_seconds, rss_bytes
from latentbench.suite import request_bytes
from latentserve.manifest import read_manifest

SETTINGS = ("1", "2", "auto")
RPCS = ("Encode", "Decode")
STREAMS = 64
H2LOAD_CONNECTIONS = 16
# Figures of issue 16.
CPU_PER_CALL_TOLERANCE = 0.10
SPEEDUP_TARGET = 1.3
PROJECTED_CORES = (2, 16, 64)


@dataclass
class WorkersRun:
    workers: str  # the flag: "1", "2" or "auto"
    processes: int  # server processes measured (supervisor + workers, or the one server)
    rpc: str
    driver: str  # "h2load" or "python"
    calls: int  # counted by the server
    errors: int  # counted by the server, less the calls h2load cut at its end
    calls_per_s: float
    cpu_s: float
    cpu_ms_per_call: float
    projected_calls_per_s: dict[str, float]
    calls_per_worker: dict[str, float] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)  # as the server counted them
    cut_at_end: int = 0  # calls in flight when h2load stopped (CANCELLED, at most STREAMS)
    round: int = 0
    requests_per_batch: float = 0.0  # mean over the run, from the server's histogram


@dataclass
class WorkersSummary:
    workers: str
    rpc: str
    driver: str
    calls_per_s: float  # median over the rounds
    calls_per_s_rounds: list[float]
    cpu_ms_per_call: float  # all rounds' CPU-seconds over all rounds' calls
    errors: int
    projected_calls_per_s: dict[str, float]
    calls_per_worker: dict[str, float]
    requests_per_batch: float  # mean of the rounds' means


@dataclass
class WorkersResult:
    runs: list[WorkersRun]
    summary: list[WorkersSummary]
    rss_mb: dict[str, list[float]]  # setting -> RSS of each server process once warm
    cores: int
    figures: dict[str, Any]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def server_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (the supervisor's workers), from /proc."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children", encoding="ascii") as f:
                queue.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def counters(metrics_port: int, rpc: str) -> dict[str, float]:
    """The server's request and error counts for `rpc`, and requests per worker."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    sums: dict[str, float] = {"requests": 0.0, "errors": 0.0}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
        if name == "latentserve_requests_total" and f'method="{rpc}"' in line:
            sums["requests"] += value
        elif name == "latentserve_request_errors_total" and f'method="{rpc}"' in line:
            sums["errors"] += value
            code = line.split('code="', 1)[1].split('"', 1)[0]
            sums[f"code {code}"] = sums.get(f"code {code}", 0.0) + value
        elif name in ("latentserve_batch_requests_sum", "latentserve_batch_requests_count"):
            # Requests merged per onnxruntime run, all graphs: how well each worker batches.
            key = "batched" if name.endswith("_sum") else "batches"
            sums[key] = sums.get(key, 0.0) + value
        elif name == "latentserve_worker_requests_total":
            worker = line.split('worker="', 1)[1].split('"', 1)[0]
            sums[f"worker {worker}"] = value
    return sums


def python_load(
    load: LoadGenerator, target: str, rpc: str, message: bytes, warmup_s: float, duration_s: float
) -> float:
    agg = load.run(
        target,
        rpc,
        message,
        1,
        STREAMS,
        warmup_s=warmup_s,
        duration_s=duration_s,
        max_requests=10_000_000,
    )
    return len(agg.latencies_s) / agg.window_s if agg.window_s else 0.0


def measure(
    server: ServerProcess,
    setting: str,
    metrics_port: int,
    rpc: str,
    message: bytes,
    warmup_s: float,
    duration_s: float,
    load: LoadGenerator | None,
) -> WorkersRun:
    pids = server_pids(server.pid)
    before = counters(metrics_port, rpc)
    cpu_before = cpu_seconds(*pids)
    rate, driver = _drive(server, rpc, message, warmup_s, duration_s, load)
    cpu = cpu_seconds(*pids) - cpu_before
    after = counters(metrics_port, rpc)
    calls = int(after["requests"] - before["requests"])
    per_call_s = cpu / calls if calls else float("nan")
    codes = {
        k.removeprefix("code "): int(after[k] - before.get(k, 0.0))
        for k in after
        if k.startswith("code ") and after[k] > before.get(k, 0.0)
    }
    per_worker = {
        k.removeprefix("worker "): after[k] - before.get(k, 0.0)
        for k in after
        if k.startswith("worker ")
    }
    batches = after.get("batches", 0.0) - before.get("batches", 0.0)
    batched = after.get("batched", 0.0) - before.get("batched", 0.0)
    return WorkersRun(
        workers=setting,
        processes=len(pids),
        rpc=rpc,
        driver=driver,
        calls=calls,
        # h2load's -D stops with up to STREAMS calls in flight and resets them: the server
        # counts those CANCELLED. They are the load's end, not the server's errors.
        errors=sum(n for c, n in codes.items() if c != "CANCELLED")
        + max(0, codes.get("CANCELLED", 0) - STREAMS),
        cut_at_end=min(codes.get("CANCELLED", 0), STREAMS) if load is None else 0,
        error_codes=codes,
        calls_per_s=round(rate, 1),
        cpu_s=round(cpu, 3),
        cpu_ms_per_call=round(1000 * per_call_s, 4),
        projected_calls_per_s={str(c): round(c / per_call_s) for c in PROJECTED_CORES},
        calls_per_worker=per_worker,
        requests_per_batch=round(batched / batches, 1) if batches else 0.0,
    )


def _drive(
    server: ServerProcess,
    rpc: str,
    message: bytes,
    warmup_s: float,
    duration_s: float,
    load: LoadGenerator | None,
) -> tuple[float, str]:
    """Calls/s at STREAMS streams, and which driver made them: h2load, or the Python load
    generator where h2load is missing."""
    if load is None:
        rate = h2load.run(
            server.target,
            SERVICE + rpc,
            message,
            streams=STREAMS,
            connections=H2LOAD_CONNECTIONS,
            warmup_s=warmup_s,
            duration_s=duration_s,
        ).calls_per_s
        return rate, "h2load"
    return python_load(load, server.target, rpc, message, warmup_s, duration_s), "python"


def run_workers(
    models_dir: Path,
    model: str = "mnist-vae",
    *,
    settings: tuple[str, ...] = SETTINGS,
    rounds: int = 3,
    warmup_s: float = 1.0,
    duration_s: float = 3.0,
    server_flags: tuple[str, ...] = (),
    client_processes: int = 4,
    channels: int = 4,
    log: Callable[[str], None] = print,
) -> WorkersResult:
    """Every setting x RPC, `rounds` times (see the module docstring). The servers run side by
    side (idle ones cost nothing) and the settings take turns within each round, in a
    rotating order, so a change in the machine's background load hits them alike."""
    from serving.process.supervisor import usable_cores

    manifest = read_manifest(models_dir / model)
    messages = {rpc: request_bytes(rpc, model, 1, manifest) for rpc in RPCS}
    notes: list[str] = []
    use_h2load = h2load.available()
    if not use_h2load:
        notes.append(
            "h2load not found (Debian: apt-get install nghttp2-client); the Python load "
            f"generator ran instead ({client_processes} processes x {channels} channels, "
            "one connection each), "
            "sharing the cores with the server: calls/s are lower bounds"
        )
    runs: list[WorkersRun] = []
    rss: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[ServerProcess, int]] = {}
        for setting in settings:
            servers[setting] = _start_server(stack, models_dir, setting, server_flags)
            pids = server_pids(servers[setting][0].pid)
            rss[setting] = [round(rss_bytes(p) / 2**20, 1) for p in pids]
            log(f"workers={setting}: {len(pids)} processes, RSS MB {rss[setting]}")
        load = (
            stack.enter_context(LoadGenerator(client_processes, channels))
            if not use_h2load
            else None
        )
        for round_ in range(rounds):
            for rpc in RPCS:
                order = settings[round_ % len(settings) :] + settings[: round_ % len(settings)]
                for setting in order:
                    server, metrics_port = servers[setting]
                    run = measure(
                        server, setting, metrics_port, rpc, messages[rpc], warmup_s, duration_s,
                        load,
                    )  # fmt: skip
                    run.round = round_
                    runs.append(run)
                    log(_describe(run))
    summary = summarise(runs, settings)
    return WorkersResult(runs, summary, rss, usable_cores(), _figures(summary), notes)


def _start_server(
    stack: contextlib.ExitStack, models_dir: Path, setting: str, server_flags: tuple[str, ...]
) -> tuple[ServerProcess, int]:
    """A `--workers setting` server, stopped when `stack` closes, and its metrics port."""
    metrics_port = _free_port()
    flags = ["--workers", setting, "--metrics-port", str(metrics_port)]
    # h2load does not reconnect after a GOAWAY: no connection age during its window.
    flags += ["--max-connection-age-ms", "0", *server_flags]
    server = ServerProcess(models_dir, flags, name=f"server[workers={setting}]")
    return stack.enter_context(server), metrics_port


def _describe(run: WorkersRun) -> str:
    return (
        f"  round {run.round} workers={run.workers} {run.rpc} c={STREAMS} ({run.driver}): "
        f"{run.calls_per_s:,.0f} calls/s, {run.cpu_ms_per_call:.3f} ms CPU "
        f"per call, {run.requests_per_batch:g} requests per batch, errors "
        f"{run.errors} (server counted "
        f"{run.error_codes or 0}), per worker {run.calls_per_worker or '-'}"
    )


def summarise(runs: list[WorkersRun], settings: tuple[str, ...]) -> list[WorkersSummary]:
    """Per setting and RPC: median calls/s over the rounds, CPU per call pooled over them."""
    rows = []
    for rpc in RPCS:
        for setting in settings:
            mine = [r for r in runs if r.rpc == rpc and r.workers == setting]
            if not mine:
                continue
            calls, cpu = sum(r.calls for r in mine), sum(r.cpu_s for r in mine)
            per_call_s = cpu / calls if calls else float("nan")
            spread: dict[str, float] = {}
            for r in mine:
                for worker, n in r.calls_per_worker.items():
                    spread[worker] = spread.get(worker, 0.0) + n
            rows.append(
                WorkersSummary(
                    workers=setting,
                    rpc=rpc,
                    driver=mine[0].driver,
                    calls_per_s=round(statistics.median(r.calls_per_s for r in mine), 1),
                    calls_per_s_rounds=[r.calls_per_s for r in mine],
                    cpu_ms_per_call=round(1000 * per_call_s, 4),
                    errors=sum(r.errors for r in mine),
                    projected_calls_per_s={str(c): round(c / per_call_s) for c in PROJECTED_CORES},
                    calls_per_worker=spread,
                    requests_per_batch=round(
                        statistics.mean(r.requests_per_batch for r in mine), 1
                    ),
                )
            )
    return rows


def _figures(summary: list[WorkersSummary]) -> dict[str, Any]:
    """Issue 16's two figures per RPC: CPU per call and calls/s of 2 workers against 1."""
    figures: dict[str, Any] = {}
    for rpc in RPCS:
        one = next((r for r in summary if r.rpc == rpc and r.workers == "1"), None)
        two = next((r for r in summary if r.rpc == rpc and r.workers == "2"), None)
        if one is None or two is None:
            continue
        cpu_ratio = two.cpu_ms_per_call / one.cpu_ms_per_call
        speedup = two.calls_per_s / one.calls_per_s
        figures[rpc] = {
            "cpu_per_call_2_vs_1": round(cpu_ratio, 3),
            "cpu_per_call_within_10pct": abs(cpu_ratio - 1) <= CPU_PER_CALL_TOLERANCE,
            "calls_per_s_2_vs_1": round(speedup, 3),
            "speedup_at_least_1_3": speedup >= SPEEDUP_TARGET,
        }
    figures["errors"] = sum(r.errors for r in summary)
    return figures


def render_markdown(result: WorkersResult, command: str) -> str:
    """benchmarks/workers.md: the table, the figures and how the projection is computed."""
    lines = [
        "# latent-bench workers: one server process vs several on one port",
        "",
        f"Command: `{command}`. Usable cores here: {result.cores}. The machine is shared with "
        "other jobs, so absolute numbers move between runs; compare within this run.",
        "",
        "| workers | RPC | load | calls/s (median; each round) | server CPU per call (ms) | "
        "requests per batch | errors | calls per worker | projected calls/s on 16 / 64 cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.summary:
        spread = ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(r.calls_per_worker.items()))
        each = ", ".join(f"{x:,.0f}" for x in r.calls_per_s_rounds)
        p = r.projected_calls_per_s
        lines.append(
            f"| {r.workers} | {r.rpc} | {r.driver} c={STREAMS} | {r.calls_per_s:,.0f} ({each}) | "
            f"{r.cpu_ms_per_call:.3f} | {r.requests_per_batch:g} | {r.errors} | {spread or '-'} | "
            f"{p['16']:,.0f} / {p['64']:,.0f} |"
        )
    lines += ["", "| RPC | CPU per call, 2 vs 1 worker | calls/s, 2 vs 1 worker |", "|---|---|---|"]
    for rpc in RPCS:
        f = result.figures.get(rpc)
        if f:
            lines.append(
                f"| {rpc} | {f['cpu_per_call_2_vs_1']:.2f} (target within 10%: "
                f"{'met' if f['cpu_per_call_within_10pct'] else 'missed'}) | "
                f"{f['calls_per_s_2_vs_1']:.2f}x (target >= 1.3x: "
                f"{'met' if f['speedup_at_least_1_3'] else 'missed'}) |"
            )
    lines += ["", "RSS of each server process once warm, before load (MB):", ""]
    for setting, sizes in result.rss_mb.items():
        lines.append(f"- workers={setting}: {sizes}")
    lines += [
        "",
        "How it is measured: calls and errors are the increase of the server's own "
        "`latentserve_requests_total` and `latentserve_request_errors_total` over the run "
        "(h2load cannot read gRPC trailers). h2load's fixed duration ends with up to 64 calls "
        "in flight, which it resets and the server counts CANCELLED: those (at most 64 per "
        "run) are not counted as errors, every other code is. Server CPU-seconds are utime + stime from "
        "`/proc/PID/stat` summed over every server process (supervisor and workers), read "
        "just before and after the load; CPU per call is their ratio, pooled over the rounds. "
        "Calls/s is h2load's rate in its measured window, the median of the rounds; the "
        "servers run side by side and take turns in each round (rotating order). The projected "
        "throughput on a C-core machine is C / (CPU per call): the rate if each of C cores "
        "did nothing but this server's work at the measured cost per call. It holds only "
        "while the cost per call does not grow with the number of workers, which the "
        "'CPU per call, 2 vs 1' column checks.",
        *(f"\nNote: {n}" for n in result.notes),
        "",
    ]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main_workers(args: Any, command: str, log: Callable[[str], None] = print) -> int:
    """`latent-bench --scenario workers`: run, write benchmarks/workers.{json,md}."""
    flags = tuple(f for flag in args.server_flag for f in flag.split("=", 1))
    result = run_workers(
        args.models_dir,
        args.model,
        warmup_s=args.warmup if args.warmup is not None else 1.0,
        duration_s=args.duration if args.duration is not None else 3.0,
        server_flags=flags,
        client_processes=args.client_processes,
        channels=args.channels or 4,
        log=log,
    )
    out = args.json or Path("benchmarks/workers.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, **result.to_dict()}, indent=2) + "\n")
    markdown = out.with_suffix(".md")
    markdown.write_text(render_markdown(result, command))
    log(f"wrote {out} and {markdown}")
    log(json.dumps(result.figures, indent=2))
    return 0 if result.figures["errors"] == 0 else 1


# -- choosing max_connection_age ------------------------------------------------------------


@dataclass
class AgeRun:
    max_connection_age_ms: int
    calls_per_s: float
    errors: dict[str, int]
    cpu_ms_per_call: float
    calls_per_worker: dict[str, float]


def measure_connection_ages(
    models_dir: Path,
    ages_ms: tuple[int, ...] = (0, 1000, 5000, 30000),
    *,
    model: str = "mnist-vae",
    clients: int = 16,
    duration_s: float = 8.0,
    log: Callable[[str], None] = print,
) -> list[AgeRun]:
    """What a maximum connection age costs: 2 workers, `clients` Python gRPC channels (own
    connections, which reconnect after GOAWAY, unlike h2load) sending single-image Decode in
    a closed loop for `duration_s`; client-seen errors, calls/s and server CPU per call."""
    message = request_bytes("Decode", model, 1, read_manifest(models_dir / model))
    runs = []
    for age in ages_ms:
        metrics_port = _free_port()
        flags = ["--workers", "2", "--metrics-port", str(metrics_port)]
        flags += ["--max-connection-age-ms", str(age)]
        with ServerProcess(models_dir, flags, name=f"server[age={age}]") as server:
            errors: Counter[str] = Counter()
            ok = [0] * clients
            stop = threading.Event()
            args = (server.target, message, stop, ok, errors)
            pids = server_pids(server.pid)
            before = counters(metrics_port, "Decode")
            cpu0, t0 = cpu_seconds(*pids), time.monotonic()
            threads = [
                threading.Thread(target=_closed_loop_client, args=(*args, i))
                for i in range(clients)
            ]
            for t in threads:
                t.start()
            time.sleep(duration_s)
            stop.set()
            for t in threads:
                t.join(60)
            wall, cpu = time.monotonic() - t0, cpu_seconds(*pids) - cpu0
            after = counters(metrics_port, "Decode")
            calls = after["requests"] - before["requests"]
            run = AgeRun(
                age,
                round(sum(ok) / wall, 1),
                dict(errors),
                round(1000 * cpu / calls, 4) if calls else float("nan"),
                {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("worker ")},
            )
            runs.append(run)
            log(f"  max_connection_age_ms={age}: {asdict(run)}")
    return runs


def _closed_loop_client(
    target: str,
    message: bytes,
    stop: threading.Event,
    ok: list[int],
    errors: Counter[str],
    i: int,
) -> None:
    """One channel with its own connection (local subchannel pool), one call at a time."""
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(SERVICE + "Decode", None, None)  # bytes in, bytes out
        while not stop.is_set():
            try:
                call(message, timeout=30)
                ok[i] += 1
            except grpc.RpcError as e:
                errors[e.code().name] += 1
