"""The compute-heavy scenario (issue 20): a generated RGB 3 x 64 x 64 convolutional VAE, whose
graphs (about 20 M multiply-adds per image each way) dominate the cost of a call, unlike the
MNIST graphs, where the transport does.

For each server setting (onnxruntime intra-op threads x inference workers x server processes)
it measures, with the suite's own methods (latentbench/suite.py):

- Encode, Decode and SampleRandom at batch 64, one caller: gRPC against onnxruntime called
  in this process with the same threads, alternating in rounds (the ratio the issue asks
  >= 0.95 for);
- single-image Encode from 64 concurrent callers, batching on against off (the batching gain).

The model is built with onnx.helper (no torch) into a work folder; it is random-weight, as
only its cost matters here. Results go to benchmarks/heavy.json and heavy.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from latentbench.inprocess import OrtModel
from latentbench.loadgen import LoadGenerator
from latentbench.serverproc import ServerProcess
from latentbench.suite import RPCS, Suite, SuiteConfig, machine_info
from latentserve.manifest import (
    BoundingBox,
    FittedGaussian,
    GraphSpec,
    ImageSpec,
    LatentSpec,
    ModelManifest,
    PriorSpec,
    sha256_of,
    write_manifest,
)

MODEL = "heavy-vae-64"
IMAGE = (3, 64, 64)
LATENT_DIM = 64
CHANNELS = (32, 64, 128)  # after each stride-2 convolution: 32 x 32, 16 x 16, 8 x 8
BATCH = 64
CALLERS = 64
OPSET = 17

# name: (latent-serve flags, in-process intra-op threads, load-generator channels per process)
SETTINGS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "1 process, 1 intra-op thread": (("--intra-op-threads", "1"), 1, 1),
    "1 process, 2 intra-op threads": (("--intra-op-threads", "2"), 2, 1),
    "1 process, 2 threads, 1 inference worker": (
        ("--intra-op-threads", "2", "--inference-workers", "1"),
        2,
        1,
    ),
    "2 processes, 1 thread each": (("--workers", "2", "--intra-op-threads", "1"), 1, 4),
}


def _conv(
    name: str, x: str, cin: int, cout: int, rng: np.random.Generator, transpose: bool
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    scale = np.sqrt(2.0 / (cin * 16))
    shape = (cin, cout, 4, 4) if transpose else (cout, cin, 4, 4)
    inits = [
        numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), f"{name}_w"
        ),
        numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"),
    ]
    op = "ConvTranspose" if transpose else "Conv"
    node = helper.make_node(
        op, [x, f"{name}_w", f"{name}_b"], [name], kernel_shape=[4, 4], strides=[2, 2],
        pads=[1, 1, 1, 1],
    )  # fmt: skip
    return node, inits


def _save(
    nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any], path: Path
) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_heavy_model(root: Path, seed: int = 0) -> Path:
    """root/heavy-vae-64: encoder 3 stride-2 convs (ReLU) + two Gemms to mean and log-variance
    (64-D); decoder Gemm + 3 transposed convs (ReLU, Sigmoid). Returns the folder."""
    folder = root / MODEL
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _write_encoder(folder / "encoder.onnx", rng)
    _write_decoder(folder / "decoder.onnx", rng)
    write_manifest(folder, _manifest(folder, seed))
    return folder


FEATURES = CHANNELS[-1] * (IMAGE[1] // 8) * (IMAGE[2] // 8)
IMAGE_INFO = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *IMAGE])
LATENT_INFO = helper.make_tensor_value_info("latents", TensorProto.FLOAT, ["N", LATENT_DIM])


def _write_encoder(path: Path, rng: np.random.Generator) -> None:
    nodes: list[Any] = []
    inits: list[Any] = []
    x = "images"
    for i, (cin, cout) in enumerate(itertools.pairwise((IMAGE[0], *CHANNELS))):
        node, weights = _conv(f"enc{i}", x, cin, cout, rng, transpose=False)
        nodes += [node, helper.make_node("Relu", [f"enc{i}"], [f"enc{i}_relu"])]
        inits += weights
        x = f"enc{i}_relu"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    for head, scale in (("mean", 0.02), ("log_var", 0.002)):
        weight = (rng.standard_normal((FEATURES, LATENT_DIM)) * scale).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"{head}_w"),
                  numpy_helper.from_array(np.zeros(LATENT_DIM, np.float32), f"{head}_b")]  # fmt: skip
        nodes.append(helper.make_node("Gemm", ["flat", f"{head}_w", f"{head}_b"], [head]))
    heads = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", LATENT_DIM])
             for n in ("mean", "log_var")]  # fmt: skip
    _save(nodes, [IMAGE_INFO], heads, inits, path)


def _write_decoder(path: Path, rng: np.random.Generator) -> None:
    _, h, w = IMAGE
    weight = (rng.standard_normal((LATENT_DIM, FEATURES)) * 0.1).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "dec_w"),
        numpy_helper.from_array(np.zeros(FEATURES, np.float32), "dec_b"),
        numpy_helper.from_array(np.array([-1, CHANNELS[-1], h // 8, w // 8], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Gemm", ["latents", "dec_w", "dec_b"], ["dense"]),
        helper.make_node("Reshape", ["dense", "shape"], ["map"]),
    ]
    x = "map"
    ups = (*reversed(CHANNELS), IMAGE[0])
    for i, (cin, cout) in enumerate(itertools.pairwise(ups)):
        node, weights = _conv(f"dec{i}", x, cin, cout, rng, transpose=True)
        last = i == len(ups) - 2
        nodes += [node, helper.make_node("Sigmoid" if last else "Relu", [f"dec{i}"],
                                         ["images" if last else f"dec{i}_act"])]  # fmt: skip
        inits += weights
        x = f"dec{i}_act"
    _save(nodes, [LATENT_INFO], [IMAGE_INFO], inits, path)


def _manifest(folder: Path, seed: int) -> ModelManifest:
    d = LATENT_DIM
    return ModelManifest(
        name=MODEL,
        kind="vae",
        description="generated RGB 3 x 64 x 64 conv VAE for the compute-heavy benchmark "
        "(random weights)",
        image=ImageSpec(channels=3, height=IMAGE[1], width=IMAGE[2]),
        latent=LatentSpec(shape=(d,)),
        encoder=GraphSpec(
            file="encoder.onnx",
            sha256=sha256_of(folder / "encoder.onnx"),
            inputs=["images"],
            outputs=["mean", "log_var"],
            opset=OPSET,
        ),
        decoder=GraphSpec(
            file="decoder.onnx",
            sha256=sha256_of(folder / "decoder.onnx"),
            inputs=["latents"],
            outputs=["images"],
            opset=OPSET,
        ),
        prior=PriorSpec(
            default="standard_normal",
            fitted_gaussian=FittedGaussian(mean=[0.0] * d, covariance=np.eye(d).tolist()),
            bounding_box=BoundingBox(low=[-3.0] * d, high=[3.0] * d),
        ),
        provenance={"data": "none: random weights", "seed": seed},
    )


@dataclass(frozen=True)
class HeavyConfig:
    workdir: Path
    duration_s: float = 4.0
    warmup_s: float = 1.0
    rounds: int = 4
    client_processes: int = 2
    settings: tuple[str, ...] = tuple(SETTINGS)


def _measure_setting(config: HeavyConfig, name: str, log: Callable[[str], None]) -> dict[str, Any]:
    flags, threads, channels = SETTINGS[name]
    suite_config = SuiteConfig(
        models_dir=config.workdir,
        model=MODEL,
        batch_sizes=(BATCH,),
        concurrencies=(CALLERS,),
        warmup_s=config.warmup_s,
        duration_s=config.duration_s,
        rounds=config.rounds,
        client_processes=config.client_processes,
        channels=channels,
        server_flags=flags,
        intra_op_threads=threads,
        mode="heavy",
    )
    suite = Suite(suite_config, log)
    base = [*flags, "--default-model", MODEL]
    servers = {
        on: ServerProcess(config.workdir, [*base, "--batching", str(on).lower()], f"server[{on}]")
        for on in (True, False)
    }
    ort = OrtModel(config.workdir / MODEL, threads)
    try:
        for server in servers.values():
            server.start()
        with LoadGenerator(config.client_processes, channels) as load:
            for server in servers.values():
                server.wait_ready()
            suite.batch_sweep(ort, load, servers[True])
            suite.concurrency(load, servers, ort.manifest)
    finally:
        for server in servers.values():
            server.stop()
    found = suite.result.find
    out: dict[str, Any] = {"flags": list(flags), "measurements": [
        m.to_dict() for m in suite.result.measurements]}  # fmt: skip
    for rpc in RPCS:
        grpc = found(scenario="batch_sweep", path="grpc", rpc=rpc, batch=BATCH)
        inproc = found(scenario="batch_sweep", path="inprocess", rpc=rpc, batch=BATCH)
        if grpc and inproc and inproc.images_per_s:
            out[f"{rpc}_b{BATCH}"] = {
                "grpc_img_s": round(grpc.images_per_s, 1),
                "inprocess_img_s": round(inproc.images_per_s, 1),
                "grpc_over_inprocess": round(grpc.images_per_s / inproc.images_per_s, 3),
            }
    on = found(scenario="concurrency", rpc="Encode", concurrency=CALLERS, batching=True)
    off = found(scenario="concurrency", rpc="Encode", concurrency=CALLERS, batching=False)
    if on and off and off.images_per_s:
        out[f"batching_c{CALLERS}"] = {
            "on_img_s": round(on.images_per_s, 1),
            "off_img_s": round(off.images_per_s, 1),
            "gain": round(on.images_per_s / off.images_per_s, 2),
            "on_p50_ms": round(on.p50_ms, 2),
            "off_p50_ms": round(off.p50_ms, 2),
        }
    return out


def run_heavy(config: HeavyConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.perf_counter()
    machine = machine_info()
    machine["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    build_heavy_model(config.workdir)
    results = {}
    for name in config.settings:
        log(f"== {name}")
        results[name] = _measure_setting(config, name, log)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "machine": machine,
        "config": {k: str(v) for k, v in config.__dict__.items()},
        "model": {"name": MODEL, "image": list(IMAGE), "latent_dim": LATENT_DIM},
        "settings": results,
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(data: dict[str, Any], command: str) -> str:
    lines = [
        f"# Compute-heavy model: {MODEL} (RGB 3 x 64 x 64, 64-D VAE)",
        "",
        f"Command: `{command}`; {data['machine'].get('cores', '?')} cores, load average "
        f"{data['machine'].get('load_average_at_start', '?')} at the start and "
        f"{data['machine'].get('load_average_at_end', '?')} at the end (1, 5, 15 min).",
        "",
        f"| setting | Encode b{BATCH} gRPC / in-process | Decode b{BATCH} | SampleRandom b{BATCH} "
        f"| Encode b{BATCH} gRPC img/s | {CALLERS} single-image callers: batching on / off "
        "img/s (gain) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in data["settings"].items():
        ratio = [r.get(f"{rpc}_b{BATCH}", {}).get("grpc_over_inprocess", "-") for rpc in RPCS]
        enc = r.get(f"Encode_b{BATCH}", {}).get("grpc_img_s", "-")
        b = r.get(f"batching_c{CALLERS}", {})
        gain = f"{b.get('on_img_s', '-')} / {b.get('off_img_s', '-')} ({b.get('gain', '-')}x)"
        lines.append(f"| {name} | {ratio[0]} | {ratio[1]} | {ratio[2]} | {enc} | {gain} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="latent-bench --heavy", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/.heavy-model"))
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--setting", action="append", choices=list(SETTINGS), help="default: all")
    p.add_argument("--results-dir", type=Path, default=Path("benchmarks"))
    args = p.parse_args(argv)
    config = HeavyConfig(
        workdir=args.workdir,
        duration_s=args.duration,
        warmup_s=args.warmup,
        rounds=args.rounds,
        client_processes=args.client_processes,
    )
    if args.setting:
        config = replace(config, settings=tuple(args.setting))
    data = run_heavy(config, lambda line: print(line, flush=True))
    given = sys.argv[1:] if argv is None else list(argv)
    command = "latent-bench --heavy " + shlex.join(given)
    data["command"] = command.strip()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "heavy.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.results_dir / "heavy.md").write_text(markdown(data, command.strip()))
    print(markdown(data, command.strip()))
    return 0
