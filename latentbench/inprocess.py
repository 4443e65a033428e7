"""The in-process baselines: onnxruntime called directly (the ceiling a server can approach),
and PyTorch eager on the same weights (what exporting to ONNX buys).

Both time sequential calls from one thread with the same timing loop. The onnxruntime
ceiling uses serving.core.runtime.GraphSession with the server's session options, so the gRPC
ratio measures serving overhead only, not a different configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentserve.manifest import ModelManifest, load_model_folder
from latentserve.sampling import generator, prior_from_manifest
from serving.core.runtime import CPU, GraphSession


@dataclass
class Timing:
    latencies_s: list[float]
    window_s: float


def time_calls(
    fn: Callable[[], object],
    *,
    warmup_s: float,
    duration_s: float,
    min_calls: int = 3,
    max_calls: int = 1_000_000,
) -> Timing:
    """Call `fn` back to back: warm up, then time each call until `duration_s` has passed
    and at least `min_calls` were made (bounded by 3 x duration and `max_calls`)."""
    end_warmup = time.perf_counter() + warmup_s
    fn()
    while time.perf_counter() < end_warmup:
        fn()
    latencies: list[float] = []
    start = time.perf_counter()
    stop_at, hard_stop = start + duration_s, start + 3 * duration_s
    while len(latencies) < max_calls:
        now = time.perf_counter()
        if now >= hard_stop or (now >= stop_at and len(latencies) >= min_calls):
            break
        fn()
        latencies.append(time.perf_counter() - now)
    return Timing(latencies, time.perf_counter() - start)


class OrtModel:
    """A model folder's two graphs as the server would load them, callable in-process."""

    def __init__(self, folder: Path, intra_op_threads: int = 0) -> None:
        self.manifest: ModelManifest = load_model_folder(folder)
        self.encoder = GraphSession(folder / self.manifest.encoder.file, [CPU], intra_op_threads)
        self.decoder = GraphSession(folder / self.manifest.decoder.file, [CPU], intra_op_threads)
        self.folder = folder

    def call(self, rpc: str, batch: int, seed: int = 0) -> Callable[[], object]:
        """A no-argument function doing what `rpc` does for `batch` items, inputs prepared."""
        rng = np.random.default_rng(seed)
        if rpc == "Encode":
            images = rng.random((batch, *self.manifest.image_shape), dtype=np.float32)
            return lambda: self.encoder.run(images)
        if rpc == "Decode":
            latents = rng.standard_normal((batch, *self.manifest.latent_shape)).astype(np.float32)
            return lambda: self.decoder.run(latents)
        if rpc == "SampleRandom":
            prior = prior_from_manifest(self.manifest, self.manifest.prior.default)

            def sample() -> object:
                return self.decoder.run(prior.draw(generator(seed), batch))

            return sample
        raise ValueError(f"unknown rpc {rpc!r}")


# -- PyTorch eager ------------------------------------------------------------------------------


def torch_available() -> str:
    """Empty when torch and the training package import, else why not."""
    try:
        import torch  # noqa: F401

        import training.models  # noqa: F401
    except ImportError as e:
        return f"PyTorch not installed ({e}); install the train extra to run this scenario"
    return ""


def torch_model_from_onnx(model: OrtModel) -> tuple[Any, float] | None:
    """The training package's network for this manifest, with the weights copied out of the
    ONNX graphs (the exporter names initializers "model.<state_dict key>"). Returns the
    model and the largest |torch - onnxruntime| difference on a check batch, which shows that
    both sides compute the same function; None when the graphs are not that network."""
    import onnx
    import torch
    from onnx import numpy_helper

    from training.models import ModelConfig, build_model

    m = model.manifest
    net = build_model(ModelConfig(kind=m.kind, latent_dim=m.latent_dim)).eval()
    weights: dict[str, np.ndarray] = {}
    for graph in (m.encoder.file, m.decoder.file):
        proto = onnx.load(str(model.folder / graph))
        for init in proto.graph.initializer:
            weights[init.name.removeprefix("model.")] = numpy_helper.to_array(init)
    state = net.state_dict()
    loaded = {
        k: torch.from_numpy(weights[k].copy())
        for k in state
        if k in weights and weights[k].shape == tuple(state[k].shape)
    }
    if len(loaded) < len(state):
        return None
    net.load_state_dict(loaded)
    check = np.random.default_rng(0).random((8, *m.image_shape), dtype=np.float32)
    with torch.inference_mode():
        got = net.encode(torch.from_numpy(check))
    got_list = list(got) if isinstance(got, tuple) else [got]
    want = model.encoder.run(check)
    diff = max(float(np.abs(g.numpy() - w).max()) for g, w in zip(got_list, want, strict=True))
    return net, diff


def torch_call(
    net: Any,
    rpc: str,
    batch: int,
    image_shape: tuple[int, ...],
    latent_shape: tuple[int, ...],
) -> Callable[[], object]:
    import torch

    rng = np.random.default_rng(0)
    if rpc == "Encode":
        x = torch.from_numpy(rng.random((batch, *image_shape), dtype=np.float32))

        def encode() -> object:
            with torch.inference_mode():
                return net.encode(x)

        return encode
    z = torch.from_numpy(rng.standard_normal((batch, *latent_shape)).astype(np.float32))

    def decode() -> object:
        with torch.inference_mode():
            return net.decode(z)

    return decode
