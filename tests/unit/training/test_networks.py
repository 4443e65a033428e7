"""The networks' shapes and value ranges."""

from __future__ import annotations

import pytest
import torch

from training.models import Autoencoder, ModelConfig, VariationalAutoencoder, build_model


@pytest.mark.parametrize("latent_dim", [2, 16])
@pytest.mark.parametrize("batch_norm", [False, True])
@torch.no_grad()
def test_shapes(latent_dim: int, batch_norm: bool) -> None:
    images = torch.rand(5, 1, 28, 28)
    ae = build_model(ModelConfig(kind="ae", latent_dim=latent_dim, batch_norm=batch_norm))
    assert isinstance(ae, Autoencoder)
    recon, z = ae(images)
    assert z.shape == (5, latent_dim) and recon.shape == (5, 1, 28, 28)
    assert float(recon.min()) >= 0 and float(recon.max()) <= 1

    vae = build_model(
        ModelConfig(kind="vae", latent_dim=latent_dim, batch_norm=batch_norm, dropout=0.1)
    )
    assert isinstance(vae, VariationalAutoencoder)
    recon, mean, log_var = vae(images)
    assert mean.shape == log_var.shape == (5, latent_dim) and recon.shape == (5, 1, 28, 28)
    assert vae.decode(torch.zeros(3, latent_dim)).shape == (3, 1, 28, 28)


def test_reparameterize_samples_around_the_mean() -> None:
    torch.manual_seed(0)
    vae = build_model(ModelConfig(kind="vae", latent_dim=2))
    mean, log_var = torch.zeros(4, 2), torch.zeros(4, 2)
    a, b = vae.reparameterize(mean, log_var), vae.reparameterize(mean, log_var)
    assert not torch.equal(a, b)
    # A vanishing variance collapses the sample onto the mean.
    assert torch.allclose(vae.reparameterize(mean, torch.full((4, 2), -60.0)), mean, atol=1e-12)


def test_reconstruction_losses_are_summed_per_image() -> None:
    from training.train import kl_divergence, reconstruction_loss

    images = torch.tensor([[0.0, 1.0, 0.5, 0.25]])
    recon = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert torch.allclose(
        reconstruction_loss(recon, images, "mse"), torch.tensor([0.25 + 0.25 + 0 + 0.0625])
    )
    # BCE against 0.5 everywhere is log 2 per pixel, whatever the target grey level.
    assert torch.allclose(reconstruction_loss(recon, images, "bce"), torch.tensor([4 * 0.6931472]))
    assert torch.allclose(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))
    assert float(kl_divergence(torch.ones(1, 2), torch.zeros(1, 2))) == 1.0


def test_kl_of_a_spatial_latent_sums_over_the_whole_map() -> None:
    from training.train import kl_divergence

    mean, log_var = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    # 0.5 * mean**2 per value, 48 values per image.
    assert torch.allclose(kl_divergence(mean, log_var), torch.full((2,), 24.0))
