"""latent-bench scenario `v2`: the same Decode through each protocol the server speaks.

One server (a subprocess on 127.0.0.1, HTTP port on), one model, and closed-loop callers in
spawned worker processes (like loadgen.py: requests serialised once up front, responses kept
as bytes, only the first one parsed and checked). Paths, all decoding the same latents:

- ``native``: latentserve.v1.Autoencoder/Decode over gRPC;
- ``v2-grpc``: inference.GRPCInferenceService/ModelInfer on ``<model>-decoder``, raw contents;
- ``v2-rest-binary``: POST /v2/models/<model>-decoder/infer, binary tensor data extension
  both ways;
- ``v2-rest-json``: the same with JSON tensors both ways.

Configurations: batch 1 and 256 at one caller, and single-row calls at 64 callers. Each
configuration alternates the paths over `rounds` short rounds, so every path sees the same
machine load, and reports the median round's throughput; the headline is v2 gRPC / native
at batch 256 (target >= 0.9). Every run is bounded in time and count and talks to loopback
only.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import socket
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from latentbench.serverproc import ServerProcess, cpu_seconds
from latentbench.stats import Measurement, summarise
from latentserve._proto.inference import grpc_predict_v2_pb2 as v2pb
from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve.manifest import ModelManifest, load_model_folder
from latentserve.tensors import array_to_tensor

PATHS = ("native", "v2-grpc", "v2-rest-binary", "v2-rest-json")
CONFIGS = ((1, 1), (256, 1), (1, 64))  # (batch, concurrency)
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_MESSAGE = 256 << 20
PORT_RANGE = (20000, 40000)


@dataclass(frozen=True)
class CallSpec:
    """How one path sends one request: a gRPC method or an HTTP URL, and its body."""

    path: str
    target: str  # host:port (gRPC) or http://host:port/... (REST)
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    method: str = ""  # gRPC method path
    image_shape: tuple[int, ...] = ()  # C x H x W of the images each answer must hold


@dataclass(frozen=True)
class LoadSpec:
    call: CallSpec
    rows: int
    concurrency: int
    warmup_s: float
    duration_s: float
    max_requests: int
    start_at: float
    timeout_s: float = 30.0


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    window_start: float = 0.0
    window_end: float = 0.0
    problem: str = ""
    completed: int = 0  # every answered call, warm-up and checking call included


def build_calls(
    manifest: ModelManifest, rows: int, grpc_target: str, http_base: str
) -> dict[str, CallSpec]:
    model, name, image = manifest.name, manifest.decoder_input, manifest.image_shape
    shape = [rows, *manifest.latent_shape]
    latents = np.random.default_rng(rows).normal(0, 1, shape).astype(np.float32)
    native = pb.DecodeRequest(model=model, latents=array_to_tensor(latents))
    v2 = v2pb.ModelInferRequest(
        model_name=f"{model}-decoder",
        inputs=[v2pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=shape)],
        raw_input_contents=[latents.tobytes()],
    )
    url = f"{http_base}/v2/models/{model}-decoder/infer"
    tensor = {"name": name, "datatype": "FP32", "shape": shape}
    head = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": latents.nbytes}}],
            "outputs": [{"name": manifest.decoder_output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    as_json = json.dumps({"inputs": [{**tensor, "data": latents.ravel().tolist()}]}).encode()
    return {
        "native": CallSpec(
            "native",
            grpc_target,
            native.SerializeToString(),
            method="/latentserve.v1.Autoencoder/Decode",
            image_shape=image,
        ),
        "v2-grpc": CallSpec(
            "v2-grpc",
            grpc_target,
            v2.SerializeToString(),
            method="/inference.GRPCInferenceService/ModelInfer",
            image_shape=image,
        ),
        "v2-rest-binary": CallSpec(
            "v2-rest-binary",
            url,
            head + latents.tobytes(),
            ((HEADER_LENGTH, str(len(head))),),
            image_shape=image,
        ),
        "v2-rest-json": CallSpec(
            "v2-rest-json",
            url,
            as_json,
            (("Content-Type", "application/json"),),
            image_shape=image,
        ),
    }


def check_response(
    path: str, data: bytes, headers: dict[str, str], rows: int, image_shape: tuple[int, ...]
) -> str:
    """'' when the response holds `rows` decoded images of `image_shape`, else what is wrong."""
    if path == "native":
        shape = list(pb.DecodeResponse.FromString(data).images.shape)
    elif path == "v2-grpc":
        shape = list(v2pb.ModelInferResponse.FromString(data).outputs[0].shape)
    else:
        n = int(headers.get(HEADER_LENGTH, len(data)))
        shape = json.loads(data[:n])["outputs"][0]["shape"]
    return (
        ""
        if shape == [rows, *image_shape]
        else f"{path}: images shape {shape}, expected {[rows, *image_shape]}"
    )


Send = Callable[[], Awaitable[tuple[bytes, dict[str, str]]]]


async def _run(spec: LoadSpec) -> LoadResult:
    result = LoadResult()
    errors: Counter[str] = Counter()
    once, close = _connect(spec)
    try:
        first, first_headers = await once()
        result.problem = check_response(
            spec.call.path, first, first_headers, spec.rows, spec.call.image_shape
        )
        result.completed += 1
        await asyncio.sleep(max(0.0, spec.start_at - time.time()))
        await _callers(spec, once, result, errors)
    finally:
        await close()
    result.errors = dict(errors)
    return result


def _connect(spec: LoadSpec) -> tuple[Send, Callable[[], Awaitable[None]]]:
    """One call of `spec` (the response bytes and headers) and how to close the connection."""
    import aiohttp

    call = spec.call
    if call.method:
        channel = grpc.aio.insecure_channel(
            call.target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ],
        )
        stub = channel.unary_unary(call.method, None, None)

        async def once() -> tuple[bytes, dict[str, str]]:
            return await stub(call.body, timeout=spec.timeout_s), {}

        return once, lambda: channel.close(None)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=spec.concurrency),
        timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
    )
    headers = dict(call.headers)

    async def post() -> tuple[bytes, dict[str, str]]:
        async with session.post(call.target, data=call.body, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            return body, dict(response.headers)

    return post, session.close


async def _callers(spec: LoadSpec, once: Send, result: LoadResult, errors: Counter[str]) -> None:
    """`spec.concurrency` closed-loop callers until the window ends; calls that start inside
    the window (after the warm-up) are counted and timed."""
    import aiohttp

    measure_from = time.time() + spec.warmup_s
    stop_at = measure_from + spec.duration_s
    result.window_start = float("inf")
    started = 0

    async def caller() -> None:
        nonlocal started
        while True:
            now = time.time()
            if started >= spec.max_requests or now >= stop_at:
                return
            measured = now >= measure_from
            if measured:
                started += 1
                result.window_start = min(result.window_start, now)
            t0 = time.perf_counter()
            try:
                await once()
            except (grpc.aio.AioRpcError, RuntimeError, aiohttp.ClientError) as e:
                if measured:
                    code = e.code().name if isinstance(e, grpc.aio.AioRpcError) else str(e)
                    errors[code] += 1
                continue
            result.completed += 1
            if measured:
                result.latencies_s.append(time.perf_counter() - t0)
                result.window_end = time.time()

    await asyncio.gather(*(caller() for _ in range(spec.concurrency)))


def run_load(spec: LoadSpec) -> LoadResult:
    """Worker entry point (top level, so spawned processes can unpickle it)."""
    return asyncio.run(_run(spec))


def free_port(host: str) -> int:
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE} on {host}")


@dataclass
class V2Config:
    models_dir: Path
    model: str = "mnist-vae"
    rounds: int = 5
    warmup_s: float = 0.3
    duration_s: float = 1.5
    client_processes: int = 2
    max_requests: int = 200_000
    server_flags: tuple[str, ...] = ()


def run_v2_scenario(config: V2Config, log: Any = print) -> dict[str, Any]:
    """Measure every path in every configuration; the JSON-ready results and summary."""
    host = "127.0.0.1"
    http_port = free_port(host)
    manifest = load_model_folder(config.models_dir / config.model)
    flags = ("--http-port", str(http_port), *config.server_flags)
    measurements: list[Measurement] = []
    problems: list[str] = []
    # Server CPU (user + system, every thread of the server process) per image answered:
    # what a saturated server would pay, much less sensitive to other load than wall time.
    cpu_ms: dict[str, float] = {}
    with ServerProcess(config.models_dir, flags, name="v2-server") as server:
        pool = multiprocessing.get_context("spawn").Pool(config.client_processes)
        try:
            for rows, concurrency in CONFIGS:
                calls = build_calls(manifest, rows, server.target, f"http://{host}:{http_port}")
                rounds = _rounds(pool, config, server, calls, rows, concurrency)
                problems += rounds.problems
                for path in PATHS:
                    m = rounds.measurement(path, config.rounds)
                    cpu_ms[f"{path} batch{rows} c{concurrency}"] = round(
                        statistics.median(rounds.cpu[path]), 4
                    )
                    measurements.append(m)
                    log(
                        f"v2 batch {rows:>3} c{concurrency:<2} {path:<15} {m.images_per_s:>10,.0f} img/s "
                        f"p50 {m.p50_ms:6.2f} ms  server CPU "
                        f"{cpu_ms[f'{path} batch{rows} c{concurrency}']:.4f} ms/img  errors {m.errors}"
                    )
        finally:
            pool.close()
            pool.join()
    return {
        "measurements": [m.to_dict() for m in measurements],
        "server_cpu_ms_per_image": cpu_ms,
        "summary": summary(measurements, cpu_ms),
        "problems": problems,
    }


@dataclass
class _Rounds:
    """One configuration's rounds, per path: img/s and server CPU ms per image of each round,
    and every latency and error pooled."""

    rows: int
    concurrency: int
    rates: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    latencies: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    errors: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in PATHS})
    problems: list[str] = field(default_factory=list)

    def measurement(self, path: str, rounds: int) -> Measurement:
        """The path's latencies pooled over the rounds, its throughput the median round's."""
        m = summarise(
            Measurement("v2", path, "Decode", self.rows, self.concurrency),
            self.latencies[path],
            0.0,
            dict(self.errors[path]),
        )
        m.images_per_s = statistics.median(self.rates[path])
        each = ", ".join(f"{r:,.0f}" for r in self.rates[path])
        m.note = f"median of {rounds} rounds: {each} img/s"
        return m


def _rounds(
    pool: Any,
    config: V2Config,
    server: ServerProcess,
    calls: dict[str, CallSpec],
    rows: int,
    concurrency: int,
) -> _Rounds:
    """Every path, `config.rounds` times, the order reversed every other round."""
    out = _Rounds(rows, concurrency)
    for round_index in range(config.rounds):
        order = PATHS if round_index % 2 == 0 else tuple(reversed(PATHS))
        for path in order:
            cpu_before = cpu_seconds(server.pid)
            latencies, errors, window, problem, completed = _measure(
                pool, config, calls[path], rows, concurrency
            )
            cpu_s = cpu_seconds(server.pid) - cpu_before
            out.cpu[path].append(1e3 * cpu_s / (completed * rows) if completed else 0.0)
            if problem:
                out.problems.append(problem)
            out.rates[path].append(len(latencies) * rows / window if window > 0 else 0.0)
            out.latencies[path] += latencies
            out.errors[path].update(errors)
    return out


def _measure(
    pool: Any, config: V2Config, call: CallSpec, rows: int, concurrency: int
) -> tuple[list[float], dict[str, int], float, str, int]:
    workers = max(1, min(config.client_processes, concurrency))
    shares = [concurrency // workers + (i < concurrency % workers) for i in range(workers)]
    start_at = time.time() + (0.3 if workers > 1 else 0.0)
    specs = [
        LoadSpec(
            call,
            rows,
            share,
            config.warmup_s,
            config.duration_s,
            max(1, config.max_requests * share // concurrency),
            start_at,
        )
        for share in shares
    ]
    results: list[LoadResult] = pool.map_async(run_load, specs, chunksize=1).get(
        10 + config.warmup_s + 3 * config.duration_s + 60
    )
    latencies = [x for r in results for x in r.latencies_s]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    window = (
        max(r.window_end for r in results) - min(r.window_start for r in results)
        if latencies
        else 0.0
    )
    return (
        latencies,
        dict(errors),
        max(window, 0.0),
        "; ".join(r.problem for r in results if r.problem),
        sum(r.completed for r in results),
    )


def summary(measurements: list[Measurement], cpu_ms: dict[str, float]) -> dict[str, Any]:
    """Ratios to native Decode per configuration (same run, median rounds): throughput
    (path / native) and server CPU per image (native / path, so 1.0 = as cheap, higher is
    better in both)."""
    by = {(m.path, m.batch, m.concurrency): m for m in measurements}
    cpu_ratios: dict[str, float | None] = {}
    for rows, concurrency in CONFIGS:
        native_cpu = cpu_ms[f"native batch{rows} c{concurrency}"]
        for path in PATHS[1:]:
            value = cpu_ms[f"{path} batch{rows} c{concurrency}"]
            key = f"{path}/native batch{rows} c{concurrency}"
            cpu_ratios[key] = round(native_cpu / value, 3) if value else None
    ratios: dict[str, Any] = {}
    for rows, concurrency in CONFIGS:
        native = by[("native", rows, concurrency)].images_per_s
        for path in PATHS[1:]:
            value = by[(path, rows, concurrency)].images_per_s
            ratios[f"{path}/native batch{rows} c{concurrency}"] = (
                round(value / native, 3) if native else None
            )
    headline = ratios["v2-grpc/native batch256 c1"]
    return {
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "v2_grpc_vs_native_cpu_batch256": cpu_ratios["v2-grpc/native batch256 c1"],
        "v2_grpc_vs_native_batch256": headline,
        "target_v2_grpc_vs_native_batch256": 0.9,
        "target_met": headline is not None and headline >= 0.9,
        "errors": sum(m.errors for m in measurements),
    }


def markdown(result: dict[str, Any], command: str) -> str:
    rows = [
        "# latent-bench v2: native Decode vs the Open Inference Protocol",
        "",
        f"`{command}`. One server, the same latents on every path, paths alternated over",
        "rounds. Throughput: images per second, the median round. Server CPU: user + system",
        "seconds of the server process per image answered, the median round (robust to other",
        "load on the machine). Ratios compare with native Decode in the same configuration,",
        "so that 1.0 is parity and higher is better: throughput path / native, CPU native / path.",
        "",
        "| batch | callers | path | images/s | p50 ms | p99 ms | server CPU ms/img | errors "
        "| throughput vs native | CPU vs native |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    s = result["summary"]
    for m in result["measurements"]:
        where = f"batch{m['batch']} c{m['concurrency']}"
        key = f"{m['path']}/native {where}"
        native = m["path"] == "native"
        cpu = result["server_cpu_ms_per_image"][f"{m['path']} {where}"]
        rows.append(
            f"| {m['batch']} | {m['concurrency']} | {m['path']} | {m['images_per_s']:,.0f} | "
            f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
            f"{cpu:.4f} | {m['errors']} | "
            f"{'1' if native else s['ratios'][key]} | {'1' if native else s['cpu_ratios'][key]} |"
        )
    rows += [
        "",
        f"v2 gRPC / native at batch 256: throughput **{s['v2_grpc_vs_native_batch256']}**, "
        f"server CPU per image **{s['v2_grpc_vs_native_cpu_batch256']}** (target >= 0.9 on "
        f"throughput: {'met' if s['target_met'] else 'missed'}).",
        "",
    ]
    return "\n".join(rows)


def main_v2(args: Any, command: str) -> int:
    """Run the scenario from latent-bench's (or this module's) parsed arguments."""
    config = V2Config(
        models_dir=args.models_dir,
        model=args.model,
        client_processes=args.client_processes,
        server_flags=tuple(f for flag in args.server_flag for f in flag.split("=", 1)),
    )
    if args.duration is not None:
        config.duration_s = args.duration
    if args.warmup is not None:
        config.warmup_s = args.warmup
    if getattr(args, "rounds", None) is not None:
        config.rounds = args.rounds
    result = run_v2_scenario(config)
    result["config"] = {**asdict(config), "models_dir": str(config.models_dir), "command": command}
    out = args.json or Path("benchmarks") / "v2.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result, command))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0 if not result["problems"] and not result["summary"]["errors"] else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m latentbench.v2` (also `latent-bench --v2`)."""
    import argparse
    import shlex
    import sys

    p = argparse.ArgumentParser(
        prog="python -m latentbench.v2", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="mnist-vae")
    p.add_argument("--json", type=Path)
    p.add_argument("--duration", type=float, help="seconds per round and path")
    p.add_argument("--warmup", type=float)
    p.add_argument("--rounds", type=int)
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--server-flag", action="append", default=[], metavar="FLAG")
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    return main_v2(args, " ".join(["python -m latentbench.v2", shlex.join(given)]).strip())


if __name__ == "__main__":
    raise SystemExit(main())
