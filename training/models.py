"""The networks: the walkthrough's convolutional encoder and decoder, the AE and the VAE built on them.

Encoder: conv 32 (stride 1), then one stride-2 conv per halving of the image, then a last
stride-1 conv, all 3x3 with LeakyReLU; flatten and a dense layer to the latent (a VAE has two
dense heads, mean and log-variance). Decoder: the mirror, dense to the smallest feature map
then transposed convs back up and a sigmoid, so outputs are pixel intensities in [0, 1].

Depth follows the image: the image is halved while both sides are even and the shorter is
above 8, so 28 x 28 gets the walkthrough's exact network (conv 32, 64, 64, 64 with strides
1, 2, 2, 1 to 7 x 7 x 64; the shipped MNIST models), 32 x 32 ends at 8 x 8 and 64 x 64 takes
a third halving (widths 64, 64, 128). With ``latent_channels`` set the network is fully
convolutional: 1x1 convolutions replace the dense layers and the latent is a C x h x w map,
as in the compression autoencoders of latent diffusion models. Batch-norm and dropout are
optional, as in the book.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

Kind = Literal["ae", "vae"]
SMALLEST_SIDE = 8


@dataclass(frozen=True)
class ModelConfig:
    kind: Kind = "vae"
    latent_dim: int = 2  # flat latents; ignored when latent_channels is set
    batch_norm: bool = False
    dropout: float = 0.0
    channels: int = 1
    height: int = 28
    width: int = 28
    latent_channels: int = 0  # > 0: fully convolutional, latent C x h x w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_spatial(self) -> bool:
        return self.latent_channels > 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def halvings(self) -> int:
        """How many stride-2 convolutions the encoder has."""
        h, w, n = self.height, self.width, 0
        while min(h, w) > SMALLEST_SIDE and h % 2 == 0 and w % 2 == 0:
            h, w, n = h // 2, w // 2, n + 1
        return n

    @property
    def widths(self) -> list[int]:
        """Output channels of each stride-2 convolution: 64, then doubling from the third."""
        return [64 * 2 ** max(0, k - 1) for k in range(self.halvings)]

    @property
    def top_width(self) -> int:
        return self.widths[-1] if self.widths else 64

    @property
    def feature_size(self) -> tuple[int, int]:
        """h x w of the smallest feature map (and of a spatial latent)."""
        scale = 2**self.halvings
        return (self.height // scale, self.width // scale)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        if self.is_spatial:
            return (self.latent_channels, *self.feature_size)
        return (self.latent_dim,)

    @property
    def features(self) -> int:
        h, w = self.feature_size
        return self.top_width * h * w


def _block(conv: nn.Module, channels: int, config: ModelConfig) -> list[nn.Module]:
    layers = [conv]
    if config.batch_norm:
        layers.append(nn.BatchNorm2d(channels))
    layers.append(nn.LeakyReLU(0.2))
    if config.dropout:
        layers.append(nn.Dropout(config.dropout))
    return layers


class Encoder(nn.Module):
    """images N x C x H x W -> features N x F (flat) or N x top_width x h x w (spatial); the
    latent head(s) live in AE / VAE."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels_in = config.channels
        plan = [(32, 1), *((w, 2) for w in config.widths), (config.top_width, 1)]
        for channels, stride in plan:
            conv = nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1)
            layers += _block(conv, channels, config)
            channels_in = channels
        self.body = nn.Sequential(*layers, *([] if config.is_spatial else [nn.Flatten()]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.body(images)
        return features


class Decoder(nn.Module):
    """latents N x D (or N x C x h x w) -> images N x C x H x W in [0, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        top = config.top_width
        layers: list[nn.Module]
        if config.is_spatial:
            self.dense: nn.Module = nn.Identity()
            layers, channels_in = [], config.latent_channels
        else:
            self.dense = nn.Linear(config.latent_dim, config.features)
            layers, channels_in = [nn.Unflatten(1, (top, *config.feature_size))], top
        # Mirror of the encoder: a stride-1 layer, then one stride-2 layer per halving, each
        # giving the width of the encoder level below it (32 at full size).
        below = [32, *config.widths[:-1]]
        plan = [(top, 1), *((w, 2) for w in reversed(below[: config.halvings]))]
        for channels, stride in plan:
            conv = nn.ConvTranspose2d(
                channels_in, channels, 3, stride=stride, padding=1, output_padding=stride - 1
            )
            layers += _block(conv, channels, config)
            channels_in = channels
        layers += [
            nn.ConvTranspose2d(channels_in, config.channels, 3, stride=1, padding=1),
            nn.Sigmoid(),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.body(self.dense(latents))
        return images


def _head(config: ModelConfig) -> nn.Module:
    """Features -> one latent tensor: dense for a flat latent, 1x1 conv for a spatial one."""
    if config.is_spatial:
        return nn.Conv2d(config.top_width, config.latent_channels, 1)
    return nn.Linear(config.features, config.latent_dim)


class Autoencoder(nn.Module):
    """Plain AE: a deterministic point in latent space per image."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.features = Encoder(config)
        self.to_latent = _head(config)
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
        self.to_mean = _head(config)
        self.to_log_var = _head(config)
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
