"""The prior sampler: random latents from the three priors a model folder describes, drawn
reproducibly. SampleRandom serves these draws and the analysis measures them, so both call
:func:`draw_latents` (numpy only: the client, the server and training all import it).

Every draw uses a numpy ``Generator(PCG64(seed))`` and fills arrays in C order, so drawing
n rows at once or the same rows in consecutive chunks from one generator gives identical
values; that is what makes SampleRandomStream equal SampleRandom for the same request.
Draws are vectorised (no Python loop per sample) and computed in float64, then cast.

A flat latent (D) draws n x D. A spatial latent (C x h x w) draws n x C x h x w: the
standard normal over the whole map; the fitted Gaussian and the box per channel (their
parameters are C long, pooled over positions), each position drawn independently. Spatial
draws fill n x h x w x C in C order and are then laid out channel first, so the rows stay
sequential and chunking still gives identical values.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .priors import PriorName

if TYPE_CHECKING:
    from .manifest import ModelManifest

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

MAX_TEMPERATURE = 10.0


def new_seed() -> int:
    """A fresh seed for a request that gave none (63 bits: fits signed and unsigned 64-bit)."""
    return secrets.randbits(63)


def generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


@dataclass(frozen=True)
class LatentPrior:
    """One distribution over latents of `shape` ((D,) or (C, h, w)), parameters taken from
    model.json: D long for a flat latent, C long (per channel) for a spatial one."""

    name: PriorName
    mean: Float64Array  # D, or C
    # Gaussian priors: a D x D factor A with A @ A.T = covariance, so z = mean + eps @ A.T.
    factor: Float64Array | None = None
    low: Float64Array | None = None  # D, uniform prior only
    high: Float64Array | None = None
    shape: tuple[int, ...] = ()  # one latent's shape; () means (D,) from the mean

    @property
    def latent_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.shape or (self.latent_dim,)

    def draw(self, rng: np.random.Generator, n: int, temperature: float = 1.0) -> Float32Array:
        """n x latent shape float32 latents. `temperature` scales the spread of Gaussian
        priors only."""
        shape = self.latent_shape
        if len(shape) == 3 and self.name == "standard_normal":
            return (temperature * rng.standard_normal((n, *shape))).astype(np.float32)
        # Per axis of the parameters: rows of D (flat) or positions of C (spatial).
        c, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
        rows = (n,) if len(shape) == 1 else (n, h, w)
        if self.name == "bounding_box_uniform":
            assert self.low is not None and self.high is not None
            z = rng.uniform(self.low, self.high, size=(*rows, c))
        elif self.name == "standard_normal":
            z = temperature * rng.standard_normal((*rows, c))
        else:
            assert self.factor is not None
            z = self.mean + temperature * (rng.standard_normal((*rows, c)) @ self.factor.T)
        if len(shape) == 3:
            z = z.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(z, dtype=np.float32)


def gaussian_factor(covariance: Float64Array) -> Float64Array:
    """A with A @ A.T = covariance, via the eigendecomposition, which (unlike Cholesky)
    also accepts the singular or slightly indefinite covariances that fitting produces."""
    sym = (covariance + covariance.T) / 2.0
    values, vectors = np.linalg.eigh(sym)
    factor: Float64Array = vectors * np.sqrt(np.clip(values, 0.0, None))
    return factor


def prior_from_manifest(manifest: ModelManifest, name: PriorName) -> LatentPrior:
    p, shape = manifest.prior_dim, manifest.latent_shape
    if name == "standard_normal":
        return LatentPrior(name, mean=np.zeros(p), shape=shape)
    if name == "fitted_gaussian":
        g = manifest.prior.fitted_gaussian
        cov = np.asarray(g.covariance, dtype=np.float64)
        return LatentPrior(
            name,
            mean=np.asarray(g.mean, dtype=np.float64),
            factor=gaussian_factor(cov),
            shape=shape,
        )
    box = manifest.prior.bounding_box
    low = np.asarray(box.low, dtype=np.float64)
    high = np.asarray(box.high, dtype=np.float64)
    return LatentPrior(name, mean=(low + high) / 2.0, low=low, high=high, shape=shape)


def sample_posterior(mean: Float32Array, log_var: Float32Array, seed: int) -> Float32Array:
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) from PCG64(seed); all one shape."""
    eps = generator(seed).standard_normal(mean.shape)
    z = mean.astype(np.float64) + np.exp(0.5 * log_var.astype(np.float64)) * eps
    return z.astype(np.float32)


def draw_latents(
    manifest: ModelManifest,
    prior: PriorName,
    count: int,
    seed: int,
    temperature: float = 1.0,
) -> Float32Array:
    """count x latent shape float32 latents: exactly what SampleRandom decodes for this seed."""
    return prior_from_manifest(manifest, prior).draw(generator(seed), count, temperature)
