"""The model API the servicer calls: one served model = manifest + two graphs + batchers.

:class:`ServedModel` takes valid numpy inputs (the servicer has checked them) and returns
numpy outputs: `encode`, `decode`, and `sample_chunks` (draw latents from a prior and decode
them, chunk by chunk). Runs go through one :class:`DynamicBatcher` per graph, so concurrent
callers share onnxruntime runs. It knows nothing about protobuf or gRPC.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from latentserve.image_spec import IMAGE_SHAPE
from latentserve.manifest import ModelManifest
from latentserve.priors import PriorName
from latentserve.sampling import generator, prior_from_manifest, sample_posterior
from serving.core.batching import DynamicBatcher
from serving.core.runtime import GraphSession

Float32Array = npt.NDArray[np.float32]
# Largest warm-up batch (a GPU session takes whole batches: no need to warm up 2^30 rows).
WARM_UP_ROWS = 256


@dataclass(frozen=True)
class Encoded:
    latents: Float32Array  # N x D (VAE: posterior mean)
    log_var: Float32Array | None  # N x D, VAE only
    z: Float32Array | None = None  # N x D, when a posterior sample was asked for


@dataclass(frozen=True)
class SampleChunk:
    offset: int  # index of the first row within the whole request
    latents: Float32Array  # n x D
    images: Float32Array  # n x 1 x 28 x 28


class ServedModel:
    def __init__(
        self,
        manifest: ModelManifest,
        folder: Path,
        encoder: GraphSession,
        decoder: GraphSession,
        encoder_batcher: DynamicBatcher,
        decoder_batcher: DynamicBatcher,
        version: int = 1,
    ) -> None:
        self.manifest = manifest
        # The repository version (folder MODELS_DIR/NAME/VERSION/; a flat folder is 1).
        self.version = version
        self.folder = folder
        self.encoder = encoder
        self.decoder = decoder
        self._encoder_batcher = encoder_batcher
        self._decoder_batcher = decoder_batcher
        # Where each encoder output sits in a run's outputs (looked up once, not per call).
        heads = ("mean", "log_var") if self.is_vae else ("latents",)
        self._encoder_heads = tuple(encoder.output_names.index(name) for name in heads)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @property
    def is_vae(self) -> bool:
        return self.manifest.kind == "vae"

    @property
    def providers(self) -> list[str]:
        return self.encoder.providers

    @property
    def default_prior(self) -> PriorName:
        return self.manifest.prior.default

    def start(self) -> None:
        self._encoder_batcher.start()
        self._decoder_batcher.start()

    async def close(self) -> None:
        await self._encoder_batcher.close()
        await self._decoder_batcher.close()

    def warm_up(self, runs: int) -> None:
        """Run both graphs directly (blocking) so first requests do not pay for lazy init.

        Each run uses the largest slice the runtime hands onnxruntime at once (on CPU,
        max_run_rows), so the memory arena reaches its steady size here, before the server
        reports ready, and resident memory then stays flat under load."""
        for _ in range(runs):
            rows = min(self.encoder.max_run_rows, WARM_UP_ROWS)
            self.encoder.run(np.zeros((rows, *IMAGE_SHAPE), dtype=np.float32))
            rows = min(self.decoder.max_run_rows, WARM_UP_ROWS)
            self.decoder.run(np.zeros((rows, self.latent_dim), dtype=np.float32))

    async def encode(
        self, images: Float32Array, deadline: float | None = None, z_seed: int | None = None
    ) -> Encoded:
        """images: N x 1 x 28 x 28 float32 -> latents (and log-variance for a VAE).

        With `z_seed` (VAE only) also z = mean + exp(log_var / 2) * eps, eps from PCG64(z_seed).
        """
        outputs = await self._encoder_batcher.submit(images, deadline)
        if not self.is_vae:
            return Encoded(outputs[self._encoder_heads[0]], None)
        mean, log_var = (outputs[i] for i in self._encoder_heads)
        z = None if z_seed is None else sample_posterior(mean, log_var, z_seed)
        return Encoded(mean, log_var, z)

    async def decode(self, latents: Float32Array, deadline: float | None = None) -> Float32Array:
        """latents: N x D float32 -> images N x 1 x 28 x 28 float32."""
        (images,) = await self._decoder_batcher.submit(latents, deadline)
        return images

    async def sample_chunks(
        self,
        count: int,
        chunk_size: int,
        prior: PriorName,
        temperature: float,
        seed: int,
        deadline: float | None = None,
    ) -> AsyncIterator[SampleChunk]:
        """Draw `count` latents from `prior` with PCG64(seed) and decode them, `chunk_size`
        rows at a time. The draws are sequential from one generator, so any chunk size
        yields the same rows (see sampling.py)."""
        rng = generator(seed)
        distribution = prior_from_manifest(self.manifest, prior)
        for offset in range(0, count, chunk_size):
            n = min(chunk_size, count - offset)
            latents = distribution.draw(rng, n, temperature)
            images = await self.decode(latents, deadline)
            yield SampleChunk(offset, latents, images)


def monotonic_deadline(time_remaining: float | None) -> float | None:
    """Turn gRPC's seconds-remaining into the batcher's absolute time.monotonic() deadline."""
    return None if time_remaining is None else time.monotonic() + time_remaining
