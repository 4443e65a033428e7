"""Soak: many concurrent clients, every RPC, every response checked, memory watched.

    python -m latentbench.soak                       # 60 s, 32 clients, shipped models/
    python -m latentbench.soak --duration 600 --models-dir models --json soak.json
    python -m latentbench.soak --target host:50051   # an already running server (no RSS)

Before the load starts, a pool of distinct requests per model and RPC is answered one at a
time on the quiet server (the "goldens"), and when the model folders are at hand those
answers are checked against onnxruntime run in this process. Then `clients` tasks, each
with its own channel, send a weighted random mix (Encode with tensors and with PNG files,
Decode, SampleRandom, SampleRandomStream, ListModels, GetModel, health) for `duration_s`
seconds; every answer must equal its golden (so rows mixed up between batched requests
show), and any error at all counts as a failure. The server's RSS is sampled throughout;
growth is measured from the end of the warm-up (arenas and caches filled) to the end.

The tests run a short version (tests/integration/latentbench/test_soak.py); only loopback servers
started here, or a target you name, are ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from latentbench.serverproc import ServerProcess, rss_bytes
from latentserve.client import AsyncLatentClient, LatentServeError, ModelInfo
from latentserve.manifest import ModelManifest

ATOL = 1e-5  # batched runs may differ from single runs in the last float bits
STREAM_COUNT = 300
CHUNK = 64
MIX: dict[str, float] = {
    "Encode": 0.22,
    "EncodePNG": 0.06,
    "Decode": 0.22,
    "SampleRandom": 0.2,
    "SampleRandomStream": 0.1,
    "ListModels": 0.05,
    "GetModel": 0.05,
    "Health": 0.1,
}


@dataclass
class SoakConfig:
    duration_s: float = 60.0
    clients: int = 32
    warmup_s: float = 10.0
    goldens_per_rpc: int = 16
    seed: int = 0
    max_rss_growth: float = 0.10


@dataclass
class Golden:
    rpc: str
    model: str
    args: dict[str, Any]
    expected: dict[str, Any]


@dataclass
class SoakReport:
    target: str
    duration_s: float
    clients: int
    calls: dict[str, int] = field(default_factory=dict)
    checked: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_baseline_mib: float = 0.0
    rss_end_mib: float = 0.0
    rss_peak_mib: float = 0.0
    # (seconds since the load started, MiB), every few seconds: shows a plateau or a slope.
    rss_timeline_mib: list[tuple[float, float]] = field(default_factory=list)
    goldens_checked_against_onnxruntime: int = 0

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def rss_growth(self) -> float:
        if not self.rss_baseline_mib:
            return 0.0
        return (self.rss_end_mib - self.rss_baseline_mib) / self.rss_baseline_mib

    def passed(self, max_rss_growth: float) -> bool:
        return self.error_count == 0 and self.rss_growth < max_rss_growth

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_calls": self.total_calls, "rss_growth": self.rss_growth}

    def to_text(self) -> str:
        lines = [
            f"soak against {self.target}: {self.duration_s:.0f} s, {self.clients} clients, "
            f"{self.total_calls} calls ({self.total_calls / max(self.duration_s, 1e-9):.0f}/s), "
            f"{self.checked} responses checked, {self.error_count} errors",
            f"{'rpc':<20}{'calls':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}",
        ]
        for rpc, stats in sorted(self.latency_ms.items()):
            lines.append(
                f"{rpc:<20}{self.calls.get(rpc, self.total_calls):>8}{stats['p50']:>10.1f}"
                f"{stats['p99']:>10.1f}{stats['max']:>10.1f}"
            )
        if self.rss_baseline_mib:
            lines.append(
                f"server RSS: {self.rss_baseline_mib:.0f} MiB after warm-up -> "
                f"{self.rss_end_mib:.0f} MiB at the end ({100 * self.rss_growth:+.1f}%), "
                f"peak {self.rss_peak_mib:.0f} MiB"
            )
        lines += [f"error: {e}" for e in self.errors[:20]]
        return "\n".join(lines)


# -- goldens ----------------------------------------------------------------------------------


def _png(pixels: np.ndarray) -> bytes:
    """C x H x W uint8 -> a grey or RGB PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


async def build_goldens(
    client: AsyncLatentClient, models: dict[str, ModelInfo], per_rpc: int, seed: int
) -> list[Golden]:
    """Distinct requests per model and RPC, answered one at a time on a quiet server, shaped
    as each model's info says."""
    rng = np.random.default_rng(seed)
    goldens: list[Golden] = []
    for model, info in sorted(models.items()):
        image, latent = info.image_shape, info.latent_shape
        for _ in range(per_rpc):
            images = rng.random((int(rng.integers(1, 9)), *image), dtype=np.float32)
            enc = await client.encode(images, model=model)
            goldens.append(Golden("Encode", model, {"images": images}, {"latents": enc.latents}))
            pixels = rng.integers(0, 256, (int(rng.integers(1, 5)), *image), dtype=np.uint8)
            files = [_png(p) for p in pixels]
            enc_png = await client.encode(files, model=model)
            goldens.append(
                Golden(
                    "EncodePNG",
                    model,
                    {"files": files, "pixels": pixels},
                    {"latents": enc_png.latents},
                )
            )
            latents = rng.standard_normal((int(rng.integers(1, 17)), *latent)).astype(np.float32)
            dec = await client.decode(latents, model=model)
            goldens.append(Golden("Decode", model, {"latents": latents}, {"images": dec.images}))
            count, s = int(rng.integers(1, 33)), int(rng.integers(0, 2**31))
            sample = await client.sample(count, model=model, seed=s, return_latents=True)
            goldens.append(
                Golden(
                    "SampleRandom",
                    model,
                    {"count": count, "seed": s},
                    {"images": sample.images, "latents": sample.latents},
                )
            )
        for i in range(max(2, per_rpc // 4)):
            s = seed * 1000 + i
            # The unary answer is the golden: a stream must deliver exactly the same draws.
            sample = await client.sample(STREAM_COUNT, model=model, seed=s, return_latents=True)
            goldens.append(
                Golden(
                    "SampleRandomStream",
                    model,
                    {"count": STREAM_COUNT, "seed": s},
                    {"images": sample.images, "latents": sample.latents},
                )
            )
    return goldens


def check_goldens_with_onnxruntime(models_dir: Path, goldens: Sequence[Golden]) -> int:
    """Recompute Encode/Decode/sample goldens with onnxruntime in this process; returns how
    many were checked. Raises AssertionError on the first disagreement."""
    import onnxruntime as ort

    from latentserve.image_spec import from_graph_range, to_graph_range
    from latentserve.manifest import read_manifest

    sessions: dict[str, tuple[Any, Any, ModelManifest]] = {}
    for golden in goldens:
        if golden.model in sessions:
            continue
        folder = models_dir / golden.model
        manifest = read_manifest(folder)
        cpu = ["CPUExecutionProvider"]
        encoder = ort.InferenceSession(str(folder / manifest.encoder.file), providers=cpu)
        decoder = ort.InferenceSession(str(folder / manifest.decoder.file), providers=cpu)
        sessions[golden.model] = (encoder, decoder, manifest)

    def decode(decoder: Any, m: ModelManifest, latents: np.ndarray) -> np.ndarray:
        z = m.to_graph_latents(latents).astype(m.image.dtype)
        (y,) = decoder.run([m.decoder_output], {m.decoder_input: z})
        return from_graph_range(y.astype(np.float32), m.image.value_range)

    checked = 0
    for golden in goldens:
        encoder, decoder, m = sessions[golden.model]
        if golden.rpc in ("Encode", "EncodePNG"):
            if golden.rpc == "Encode":
                batch = golden.args["images"]
            else:
                batch = golden.args["pixels"].astype(np.float32) / np.float32(255.0)
            x = to_graph_range(batch.reshape(-1, *m.image_shape), m.image.value_range)
            first = encoder.run([m.encoder_outputs[0]], {m.encoder_input: x.astype(m.image.dtype)})
            served = m.to_served_latents(first[0].astype(np.float32))
            np.testing.assert_allclose(golden.expected["latents"], served, atol=ATOL)
        elif golden.rpc == "Decode":
            images = decode(decoder, m, golden.args["latents"])
            np.testing.assert_allclose(golden.expected["images"], images, atol=ATOL)
        else:
            images = decode(decoder, m, golden.expected["latents"])
            np.testing.assert_allclose(golden.expected["images"], images, atol=ATOL)
        checked += 1
    return checked


# -- load -------------------------------------------------------------------------------------


async def _call(client: AsyncLatentClient, golden: Golden) -> None:
    """Send the golden's request; raise AssertionError if the answer differs."""
    e = golden.expected
    if golden.rpc == "Encode":
        got = (await client.encode(golden.args["images"], model=golden.model)).latents
        np.testing.assert_allclose(got, e["latents"], atol=ATOL)
    elif golden.rpc == "EncodePNG":
        got = (await client.encode(golden.args["files"], model=golden.model)).latents
        np.testing.assert_allclose(got, e["latents"], atol=ATOL)
    elif golden.rpc == "Decode":
        images = (await client.decode(golden.args["latents"], model=golden.model)).images
        np.testing.assert_allclose(images, e["images"], atol=ATOL)
    else:  # SampleRandom and SampleRandomStream: the client streams above CHUNK
        result = await client.sample(
            golden.args["count"], model=golden.model, seed=golden.args["seed"]
        )
        np.testing.assert_allclose(result.images, e["images"], atol=ATOL)


async def run_load(
    target: str,
    goldens: Sequence[Golden],
    models: dict[str, ModelInfo],
    config: SoakConfig,
    report: SoakReport,
    client_options: dict[str, Any],
) -> None:
    by_rpc: dict[str, list[Golden]] = {}
    for g in goldens:
        by_rpc.setdefault(g.rpc, []).append(g)
    rpcs = list(MIX)
    weights = [MIX[r] for r in rpcs]
    latencies: dict[str, list[float]] = {r: [] for r in rpcs}
    end = time.monotonic() + config.warmup_s + config.duration_s
    model_names = sorted(models)

    async def simple(rpc: str, client: AsyncLatentClient, rng: random.Random) -> None:
        if rpc == "ListModels":
            listed = {m.name for m in await client.list_models() if m.state == "READY"}
            assert set(model_names) <= listed, f"ListModels lost models: {listed}"
        elif rpc == "GetModel":
            name = rng.choice(model_names)
            info = await client.get_model(name)
            assert info.state == "READY" and info.latent_dim == models[name].latent_dim, info
        else:
            status = await client.health(rng.choice(["", *model_names]))
            assert status == "SERVING", status

    async def one_client(index: int) -> None:
        rng = random.Random(config.seed * 7919 + index)
        async with AsyncLatentClient(
            target, timeout=60, max_unary_samples=CHUNK, chunk_size=CHUNK, **client_options
        ) as client:
            while time.monotonic() < end:
                rpc = rng.choices(rpcs, weights)[0]
                started = time.perf_counter()
                try:
                    if rpc in by_rpc:
                        await _call(client, rng.choice(by_rpc[rpc]))
                    else:
                        await simple(rpc, client, rng)
                    report.checked += 1
                except (LatentServeError, AssertionError) as e:
                    report.error_count += 1
                    if len(report.errors) < 100:
                        report.errors.append(f"{rpc}: {type(e).__name__}: {str(e)[:300]}")
                latencies[rpc].append(time.perf_counter() - started)
                report.calls[rpc] = report.calls.get(rpc, 0) + 1

    await asyncio.gather(*(one_client(i) for i in range(config.clients)))
    _record_latencies(report, latencies)


def _record_latencies(report: SoakReport, latencies: dict[str, list[float]]) -> None:
    """p50, p99 and max in ms per RPC, and over all calls."""
    for rpc, values in latencies.items():
        if values:
            ms = np.asarray(values) * 1000
            report.latency_ms[rpc] = {
                "p50": float(np.percentile(ms, 50)),
                "p99": float(np.percentile(ms, 99)),
                "max": float(ms.max()),
            }
    everything = np.concatenate([np.asarray(v) for v in latencies.values() if v]) * 1000
    report.latency_ms["all"] = {
        "p50": float(np.percentile(everything, 50)),
        "p99": float(np.percentile(everything, 99)),
        "max": float(everything.max()),
    }


async def _watch_rss(pid: int, config: SoakConfig, report: SoakReport, done: asyncio.Event) -> None:
    started = time.monotonic()
    baseline_at = started + config.warmup_s
    next_point = started
    while not done.is_set():
        mib = rss_bytes(pid) / (1 << 20)
        if time.monotonic() >= next_point:
            report.rss_timeline_mib.append((round(time.monotonic() - started, 1), round(mib, 1)))
            next_point += 5.0
        report.rss_peak_mib = max(report.rss_peak_mib, mib)
        if not report.rss_baseline_mib and time.monotonic() >= baseline_at:
            report.rss_baseline_mib = mib
        report.rss_end_mib = mib
        await asyncio.sleep(0.25)


async def soak(
    target: str,
    config: SoakConfig,
    server_pid: int | None = None,
    models_dir: Path | None = None,
    client_options: dict[str, Any] | None = None,
) -> SoakReport:
    """Run the whole soak against `target`; see the module docstring."""
    options = client_options or {}
    report = SoakReport(target, config.duration_s + config.warmup_s, config.clients)
    async with AsyncLatentClient(target, timeout=60, **options) as client:
        models = {m.name: m for m in await client.list_models() if m.state == "READY"}
        if not models:
            raise RuntimeError(f"{target} serves no READY model")
        goldens = await build_goldens(client, models, config.goldens_per_rpc, config.seed)
    if models_dir is not None:
        report.goldens_checked_against_onnxruntime = check_goldens_with_onnxruntime(
            models_dir, goldens
        )
    done = asyncio.Event()
    watcher = (
        asyncio.create_task(_watch_rss(server_pid, config, report, done)) if server_pid else None
    )
    try:
        await run_load(target, goldens, models, config, report, options)
    finally:
        done.set()
        if watcher is not None:
            await watcher
    return report


# -- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m latentbench.soak", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load [%(default)s]")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before RSS baseline")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients [%(default)s]")
    p.add_argument(
        "--models-dir",
        type=Path,
        help="model folders: served from here (default models/), and with --target used "
        "to check the goldens with onnxruntime",
    )
    p.add_argument("--target", help="soak a running server instead of starting one")
    p.add_argument("--max-rss-growth", type=float, default=0.10)
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    config = SoakConfig(
        duration_s=args.duration,
        clients=args.clients,
        warmup_s=args.warmup,
        seed=args.seed,
        max_rss_growth=args.max_rss_growth,
    )
    if args.target:
        report = asyncio.run(soak(args.target, config, models_dir=args.models_dir))
    else:
        models_dir = args.models_dir or Path("models")
        with ServerProcess(models_dir, name="soak") as server:
            report = asyncio.run(soak(server.target, config, server.pid, models_dir))
    print(report.to_text())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    ok = report.passed(config.max_rss_growth)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
