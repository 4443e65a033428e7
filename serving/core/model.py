"""The model API the servicer calls: one served model = manifest + two graphs + batchers.

:class:`ServedModel` takes valid numpy inputs (the servicer has checked them) and returns
numpy outputs: `encode`, `decode`, and `sample_chunks` (draw latents from a prior and decode
them, chunk by chunk). Runs go through one :class:`DynamicBatcher` per graph, so concurrent
callers share onnxruntime runs. It knows nothing about protobuf or gRPC.

Shapes are the model spec's (``image_shape`` C x H x W, ``latent_shape`` D or C x h x w).
Here, at the edge of the runtime, served values become graph values and back: pixels in
[0, 1] <-> the spec's ``image.value_range``, served latents <-> graph latents (the spec's
scaling and shift); the runtime casts float32 <-> a float16 graph's type.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from latentserve.image_spec import from_graph_range, to_graph_range
from latentserve.manifest import ModelManifest, to_served_log_var
from latentserve.priors import PriorName
from latentserve.sampling import generator, prior_from_manifest, sample_posterior
from serving.core.batching import DynamicBatcher
from serving.core.runtime import GraphSession
from serving.core.statistics import GraphStatistics, RequestTiming, StatisticsBook

Float32Array = npt.NDArray[np.float32]
# Largest warm-up batch (a GPU session takes whole batches: no need to warm up 2^30 rows).
WARM_UP_ROWS = 256


@dataclass(frozen=True)
class Encoded:
    latents: Float32Array  # N x latent shape (VAE: posterior mean), served scale
    log_var: Float32Array | None  # same shape, VAE only
    z: Float32Array | None = None  # same shape, when a posterior sample was asked for


@dataclass(frozen=True)
class SampleChunk:
    offset: int  # index of the first row within the whole request
    latents: Float32Array  # n x latent shape
    images: Float32Array  # n x C x H x W in [0, 1]


class ServedModel:
    def __init__(
        self,
        manifest: ModelManifest,
        folder: Path,
        encoder: GraphSession,
        decoder: GraphSession,
        encoder_batcher: DynamicBatcher,
        decoder_batcher: DynamicBatcher,
        statistics: StatisticsBook | None = None,
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
        # Where each encoder output (the spec's names, in its order: latents, or mean and
        # log_var) and the decoder's image output sit in a run's outputs (looked up once).
        self._encoder_heads = tuple(
            encoder.output_names.index(name) for name in manifest.encoder_outputs
        )
        self._decoder_head = decoder.output_names.index(manifest.decoder_output)
        # Per-role request statistics (the batchers record their graphs' runs themselves).
        book = statistics or StatisticsBook()
        label = str(version)
        self._encoder_stats = book.graph(manifest.name, label, "encoder")
        self._decoder_stats = book.graph(manifest.name, label, "decoder")
        self._sampler_stats = book.graph(manifest.name, label, "sampler")

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def latent_dim(self) -> int:
        """Latent values per image (D, or C * h * w for a spatial latent)."""
        return self.manifest.latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C x H x W (the nominal size when the graphs take dynamic sizes)."""
        return self.manifest.image_shape

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(D,) or (C, h, w) per image, at the nominal image size."""
        return self.manifest.latent_shape

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
            self.encoder.run(np.zeros((rows, *self.image_shape), dtype=np.float32))
            rows = min(self.decoder.max_run_rows, WARM_UP_ROWS)
            self.decoder.run(np.zeros((rows, *self.latent_shape), dtype=np.float32))

    async def encode(
        self, images: Float32Array, deadline: float | None = None, z_seed: int | None = None
    ) -> Encoded:
        """images: N x C x H x W float32 in [0, 1] -> latents (and log-variance for a VAE),
        on the served scale.

        With `z_seed` (VAE only) also z = mean + exp(log_var / 2) * eps, eps from PCG64(z_seed).
        """
        timing, start = RequestTiming(), time.monotonic()
        graph_images = to_graph_range(images, self.manifest.image.value_range)
        try:
            outputs = await self._encoder_batcher.submit(graph_images, deadline, timing)
        except BaseException:
            self._encoder_stats.failed(_ns_since(start))
            raise
        if not self.is_vae:
            result = Encoded(self.manifest.to_served_latents(outputs[self._encoder_heads[0]]), None)
        else:
            mean, log_var = (outputs[i] for i in self._encoder_heads)
            mean = self.manifest.to_served_latents(mean)
            log_var = to_served_log_var(log_var, self.manifest.latent.scaling)
            z = None if z_seed is None else sample_posterior(mean, log_var, z_seed)
            result = Encoded(mean, log_var, z)
        self._encoder_stats.succeeded(int(images.shape[0]), _ns_since(start), timing)
        return result

    async def decode(self, latents: Float32Array, deadline: float | None = None) -> Float32Array:
        """latents: N x latent shape float32 (served scale) -> images N x C x H x W float32
        in [0, 1] (not clipped: a decoder may overshoot)."""
        return await self._decode(latents, deadline, self._decoder_stats)

    async def _decode(
        self, latents: Float32Array, deadline: float | None, stats: GraphStatistics
    ) -> Float32Array:
        timing, start = RequestTiming(), time.monotonic()
        try:
            outputs = await self._decoder_batcher.submit(
                self.manifest.to_graph_latents(latents), deadline, timing
            )
        except BaseException:
            stats.failed(_ns_since(start))
            raise
        stats.succeeded(int(latents.shape[0]), _ns_since(start), timing)
        return from_graph_range(outputs[self._decoder_head], self.manifest.image.value_range)

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
        yields the same rows (see sampling.py). Each chunk counts as one request of the
        model's sampler in its statistics."""
        rng = generator(seed)
        distribution = prior_from_manifest(self.manifest, prior)
        for offset in range(0, count, chunk_size):
            n = min(chunk_size, count - offset)
            latents = distribution.draw(rng, n, temperature)
            images = await self._decode(latents, deadline, self._sampler_stats)
            self._sampler_stats.chunk_ran()
            yield SampleChunk(offset, latents, images)


def _ns_since(start: float) -> int:
    return int((time.monotonic() - start) * 1e9)


def monotonic_deadline(time_remaining: float | None) -> float | None:
    """Turn gRPC's seconds-remaining into the batcher's absolute time.monotonic() deadline."""
    return None if time_remaining is None else time.monotonic() + time_remaining
