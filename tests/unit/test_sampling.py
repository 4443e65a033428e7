"""Priors and seeded draws: reproducible, chunk-invariant, the documented distributions."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.models import build_model_folder

from latentserve.manifest import read_manifest
from latentserve.sampling import (
    gaussian_factor,
    generator,
    new_seed,
    prior_from_manifest,
    sample_posterior,
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return read_manifest(build_model_folder(tmp_path_factory.mktemp("m"), "m", "ae", latent_dim=3))


@pytest.mark.parametrize("prior", ["standard_normal", "fitted_gaussian", "bounding_box_uniform"])
@pytest.mark.parametrize("chunks", [[1000], [1, 999], [7] * 142 + [6], [500, 250, 250]])
def test_chunked_draws_equal_one_draw(manifest, prior, chunks):
    distribution = prior_from_manifest(manifest, prior)
    whole = distribution.draw(generator(5), 1000, temperature=0.7)
    rng = generator(5)
    pieces = np.concatenate([distribution.draw(rng, n, temperature=0.7) for n in chunks])
    np.testing.assert_array_equal(pieces, whole)
    assert whole.dtype == np.float32 and whole.shape == (1000, 3)


def test_same_seed_same_draws_other_seed_other_draws(manifest):
    distribution = prior_from_manifest(manifest, "standard_normal")
    a = distribution.draw(generator(1), 10)
    np.testing.assert_array_equal(a, distribution.draw(generator(1), 10))
    assert not np.array_equal(a, distribution.draw(generator(2), 10))


def test_fitted_gaussian_matches_manifest_and_temperature_scales_spread(manifest):
    distribution = prior_from_manifest(manifest, "fitted_gaussian")
    g = manifest.prior.fitted_gaussian
    z = distribution.draw(generator(0), 200_000).astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), g.mean, atol=0.01)
    np.testing.assert_allclose(np.cov(z.T), g.covariance, atol=0.01)
    hot = distribution.draw(generator(0), 200_000, temperature=2.0).astype(np.float64)
    np.testing.assert_allclose(np.cov(hot.T), 4 * np.asarray(g.covariance), atol=0.04)
    np.testing.assert_allclose(hot.mean(axis=0), g.mean, atol=0.02)


def test_bounding_box_uniform_stays_in_the_box_and_ignores_temperature(manifest):
    distribution = prior_from_manifest(manifest, "bounding_box_uniform")
    z = distribution.draw(generator(0), 50_000, temperature=5.0)
    box = manifest.prior.bounding_box
    assert (z >= np.float32(box.low[0])).all() and (z <= np.float32(box.high[0])).all()
    np.testing.assert_allclose(z.mean(axis=0), np.add(box.low, box.high) / 2, atol=0.03)


def test_standard_normal_is_n_0_i(manifest):
    z = (
        prior_from_manifest(manifest, "standard_normal")
        .draw(generator(3), 200_000)
        .astype(np.float64)
    )
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=0.01)
    np.testing.assert_allclose(np.cov(z.T), np.eye(3), atol=0.01)


def test_gaussian_factor_handles_singular_covariance():
    cov = np.array([[1.0, 1.0], [1.0, 1.0]])  # rank 1: Cholesky would fail
    factor = gaussian_factor(cov)
    np.testing.assert_allclose(factor @ factor.T, cov, atol=1e-12)


def test_sample_posterior_is_reparameterisation():
    mean = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    log_var = np.array([[0.0, np.log(4.0)], [-100.0, 0.0]], np.float32)
    z = sample_posterior(mean, log_var, seed=9)
    eps = generator(9).standard_normal((2, 2))
    np.testing.assert_allclose(z, mean + np.exp(0.5 * log_var.astype(np.float64)) * eps, atol=1e-6)
    np.testing.assert_allclose(z[1, 0], 2.0, atol=1e-6)  # tiny variance: z is the mean


def test_new_seed_fits_in_63_bits_and_varies():
    seeds = {new_seed() for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= s < 2**63 for s in seeds)


@pytest.fixture(scope="module")
def spatial(tmp_path_factory):
    from fixtures.models import build_shaped_model_folder

    folder = build_shaped_model_folder(
        tmp_path_factory.mktemp("s"), "s", kind="ae", image_shape=(3, 16, 16),
        latent_shape=(3, 4, 4),
    )  # fmt: skip
    return read_manifest(folder)


@pytest.mark.parametrize("prior", ["standard_normal", "fitted_gaussian", "bounding_box_uniform"])
def test_spatial_draws_are_maps_and_chunk_invariant(spatial, prior):
    distribution = prior_from_manifest(spatial, prior)
    whole = distribution.draw(generator(3), 50, temperature=0.9)
    assert whole.shape == (50, 3, 4, 4) and whole.dtype == np.float32
    rng = generator(3)
    pieces = np.concatenate([distribution.draw(rng, n, temperature=0.9) for n in (1, 20, 29)])
    np.testing.assert_array_equal(pieces, whole)


def test_spatial_priors_are_per_channel(spatial):
    g = spatial.prior.fitted_gaussian
    z = prior_from_manifest(spatial, "fitted_gaussian").draw(generator(1), 4000)
    per_channel = z.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(per_channel.mean(axis=0), g.mean, atol=0.03)
    np.testing.assert_allclose(np.cov(per_channel, rowvar=False), g.covariance, atol=0.03)
    box = spatial.prior.bounding_box
    z = prior_from_manifest(spatial, "bounding_box_uniform").draw(generator(1), 500)
    assert z.min() >= min(box.low) and z.max() <= max(box.high)
    normal = prior_from_manifest(spatial, "standard_normal").draw(generator(1), 2000)
    assert abs(float(normal.mean())) < 0.02 and abs(float(normal.std()) - 1.0) < 0.02
