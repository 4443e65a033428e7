"""The networks: the walkthrough's convolutional encoder and decoder, the AE and the VAE built on them.

Encoder: conv 32, 64, 64, 64 (3x3, strides 1, 2, 2, 1) with LeakyReLU, flatten, dense to the
latent (a VAE has two dense heads, mean and log-variance). Decoder: the mirror, dense to
7x7x64 then transposed convs 64, 64, 32, 1 (strides 1, 2, 2, 1) and a sigmoid, so outputs are
pixel intensities in [0, 1]. Batch-norm and dropout are optional, as in the book.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

Kind = Literal["ae", "vae"]


@dataclass(frozen=True)
class ModelConfig:
    kind: Kind = "vae"
    latent_dim: int = 2
    batch_norm: bool = False
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block(conv: nn.Module, channels: int, config: ModelConfig) -> list[nn.Module]:
    layers = [conv]
    if config.batch_norm:
        layers.append(nn.BatchNorm2d(channels))
    layers.append(nn.LeakyReLU(0.2))
    if config.dropout:
        layers.append(nn.Dropout(config.dropout))
    return layers


class Encoder(nn.Module):
    """images N x 1 x 28 x 28 -> features N x 3136 (the dense head(s) live in AE / VAE)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels_in = 1
        for channels, stride in ((32, 1), (64, 2), (64, 2), (64, 1)):
            conv = nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1)
            layers += _block(conv, channels, config)
            channels_in = channels
        self.body = nn.Sequential(*layers, nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.body(images)
        return features


class Decoder(nn.Module):
    """latents N x D -> images N x 1 x 28 x 28 in [0, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.latent_dim, 64 * 7 * 7)
        layers: list[nn.Module] = [nn.Unflatten(1, (64, 7, 7))]
        channels_in = 64
        for channels, stride in ((64, 1), (64, 2), (32, 2)):
            conv = nn.ConvTranspose2d(
                channels_in, channels, 3, stride=stride, padding=1, output_padding=stride - 1
            )
            layers += _block(conv, channels, config)
            channels_in = channels
        layers += [nn.ConvTranspose2d(channels_in, 1, 3, stride=1, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.body(self.dense(latents))
        return images


class Autoencoder(nn.Module):
    """Plain AE: a deterministic point in latent space per image."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.features = Encoder(config)
        self.to_latent = nn.Linear(64 * 7 * 7, config.latent_dim)
        self.decoder = Decoder(config)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        latents: torch.Tensor = self.to_latent(self.features(images))
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.decoder(latents)
        return images

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(images)
        return self.decode(latents), latents


class VariationalAutoencoder(nn.Module):
    """VAE: the encoder gives a diagonal Gaussian q(z|x) = N(mean, exp(log_var))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.features = Encoder(config)
        self.to_mean = nn.Linear(64 * 7 * 7, config.latent_dim)
        self.to_log_var = nn.Linear(64 * 7 * 7, config.latent_dim)
        self.decoder = Decoder(config)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images)
        return self.to_mean(h), self.to_log_var(h)

    def reparameterize(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        # z = mean + sigma * eps keeps the sample differentiable in mean and log_var.
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.decoder(latents)
        return images

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encode(images)
        return self.decode(self.reparameterize(mean, log_var)), mean, log_var


AnyAutoencoder = Autoencoder | VariationalAutoencoder


def build_model(config: ModelConfig) -> AnyAutoencoder:
    return Autoencoder(config) if config.kind == "ae" else VariationalAutoencoder(config)
