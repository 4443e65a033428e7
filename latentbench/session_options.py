"""Which onnxruntime session options suit these graphs on this machine: one subprocess per
candidate (so memory is measured cleanly), each timing Encode at batch 1 and 256 and Decode
at batch 256, then the process RSS after a batch-4096 run (memory arena kept or released).

    python -m latentbench.session_options --models-dir models --model mnist-vae

This is how the defaults in serving/core/runtime.py were chosen; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CANDIDATES: dict[str, dict[str, Any]] = {
    "onnxruntime defaults (2 threads, spinning, arena)": {},
    "2 threads, no spinning": {"spin": False},
    "1 thread": {"threads": 1},
    "2 threads, no spinning, no arena": {"spin": False, "arena": False},
    "2 threads, no spinning, arena released after each run": {"spin": False, "shrink": True},
    "2 threads, no spinning, basic graph optimisation": {"spin": False, "opt": "basic"},
    "shipped: 2 threads, no spinning, arena, 64-row slices": {"spin": False, "slice": 64},
}


def _measure(folder: Path, options: dict[str, Any], seconds: float) -> dict[str, float]:
    import os

    import onnxruntime as ort

    from latentbench.serverproc import rss_bytes
    from latentserve.manifest import load_model_folder

    manifest = load_model_folder(folder)
    so, run_options = _ort_options(options)
    providers = ["CPUExecutionProvider"]
    enc = ort.InferenceSession(str(folder / manifest.encoder.file), so, providers=providers)
    dec = ort.InferenceSession(str(folder / manifest.decoder.file), so, providers=providers)
    rng = np.random.default_rng(0)
    out: dict[str, float] = {"rss_loaded_mib": rss_bytes(os.getpid()) / 2**20}

    step = options.get("slice", 1 << 30)

    def run(session: Any, x: np.ndarray) -> None:
        name = session.get_inputs()[0].name
        # Sliced like serving.core.runtime.GraphSession (output assembly omitted: one memcpy).
        for start in range(0, len(x), step):
            session.run(None, {name: x[start : start + step]}, run_options)

    def timed(session: Any, x: np.ndarray) -> list[float]:
        run(session, x)
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            t = time.perf_counter()
            run(session, x)
            times.append(time.perf_counter() - t)
        return times

    image, latent = manifest.image_shape, manifest.latent_shape
    one = timed(enc, rng.random((1, *image), dtype=np.float32))
    out["encode_b1_p50_ms"] = float(np.median(one) * 1e3)
    big = timed(enc, rng.random((256, *image), dtype=np.float32))
    out["encode_b256_img_s"] = 256 / float(np.median(big))
    z = rng.standard_normal((256, *latent)).astype(np.float32)
    dz = timed(dec, z)
    out["decode_b256_img_s"] = 256 / float(np.median(dz))
    run(enc, rng.random((4096, *image), dtype=np.float32))
    run(dec, rng.standard_normal((4096, *latent)).astype(np.float32))
    time.sleep(0.2)
    out["rss_after_4096_mib"] = rss_bytes(os.getpid()) / 2**20
    return out


def _ort_options(options: dict[str, Any]) -> tuple[Any, Any]:
    """onnxruntime's SessionOptions and RunOptions (None: the default) for one variant."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if "threads" in options:
        so.intra_op_num_threads = options["threads"]
    if not options.get("spin", True):
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not options.get("arena", True):
        so.enable_cpu_mem_arena = False
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so.graph_optimization_level = levels[options.get("opt", "all")]
    run_options = None
    if options.get("shrink"):
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return so, run_options


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentbench.session_options")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="mnist-vae")
    p.add_argument("--seconds", type=float, default=2.0, help="per timed configuration")
    p.add_argument("--rounds", type=int, default=2, help="alternate candidates this often")
    p.add_argument("--only", action="append", help="run just these candidates (repeatable)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    folder = args.models_dir / args.model
    if args.child:
        print(json.dumps(_measure(folder, CANDIDATES[args.child], args.seconds)))
        return 0
    names = args.only or list(CANDIDATES)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    # Rounds alternate the candidates so that a burst of load elsewhere hits all of them.
    for _ in range(args.rounds):
        for name in names:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "latentbench.session_options",
                    "--child",
                    name,
                    "--models-dir",
                    str(args.models_dir),
                    "--model",
                    args.model,
                    "--seconds",
                    str(args.seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = list(next(iter(results.values()))[0])
    print("| options | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, runs in results.items():
        best = {k: (min if k.endswith(("_ms", "_mib")) else max)(r[k] for r in runs) for k in keys}
        print(
            f"| {name} | "
            + " | ".join(f"{best[k]:.1f}" if best[k] >= 10 else f"{best[k]:.3f}" for k in keys)
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
