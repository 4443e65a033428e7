"""Running exported ONNX graphs on the training side: the parity check, test metrics, analysis.

Analysis and metrics run the shipped graphs through onnxruntime (not the PyTorch model),
so the numbers describe exactly what the server will serve. :class:`ModelGraphs` opens a
model folder (manifest validated and hashes checked by ``latentserve.manifest``) and
offers ``encode`` / ``decode`` on numpy arrays in batches.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from latentserve.manifest import ModelManifest, load_model_folder, verify_graph_files


def open_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the CPU provider is what we want here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batched(
    session: ort.InferenceSession, inputs: np.ndarray, batch_size: int = 1000
) -> dict[str, np.ndarray]:
    """Run a one-input graph over inputs in batches; returns every output, concatenated."""
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(inputs), batch_size):
        chunk = np.ascontiguousarray(inputs[start : start + batch_size], dtype=np.float32)
        for name, value in zip(names, session.run(names, {input_name: chunk}), strict=True):
            parts[name].append(value)
    return {n: np.concatenate(v) for n, v in parts.items()}


class ModelGraphs:
    """A validated model folder with its two graphs open in onnxruntime."""

    def __init__(
        self, folder: Path, threads: int = 2, manifest: ModelManifest | None = None
    ) -> None:
        """`manifest`: the one about to be written, for export to measure its graphs before
        model.json exists (the graphs' hashes are still checked against it)."""
        self.folder = folder
        if manifest is None:
            manifest = load_model_folder(folder)
        else:
            verify_graph_files(folder, manifest)
        self.manifest: ModelManifest = manifest
        self.encoder = open_session(folder / self.manifest.encoder.file, threads)
        self.decoder = open_session(folder / self.manifest.decoder.file, threads)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def kind(self) -> str:
        return self.manifest.kind

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images N x C x H x W float32 -> the encoder's outputs by their graph names."""
        return run_batched(self.encoder, images, batch_size=self._batch)

    def encode_points(self, images: np.ndarray) -> np.ndarray:
        """The deterministic latent per image: the AE latent or the VAE mean (the encoder's
        first output), N x D or N x C x h x w."""
        return self.encode(images)[self.manifest.encoder_outputs[0]]

    def encode_mean_log_var(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A VAE's two outputs, in the manifest's order."""
        out = self.encode(images)
        mean, log_var = self.manifest.encoder_outputs
        return out[mean], out[log_var]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """latents (the manifest's latent shape) float32 -> images N x C x H x W float32."""
        return run_batched(self.decoder, latents, batch_size=self._batch)[
            self.manifest.decoder_output
        ]

    @property
    def _batch(self) -> int:
        # About 1000 MNIST images' worth of pixels per run, whatever the image size.
        return max(16, 784_000 // math.prod(self.manifest.image_shape))
