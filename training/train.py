"""The training loop: losses, epochs with a progress bar, validation, checkpoints and resume.

:func:`train_epoch` is the one epoch loop (seeded shuffle, batches, optimizer steps, progress
bar); :func:`fit` runs it for the autoencoders and the evaluation classifier reuses it.

Losses (per image, averaged over the batch): reconstruction is the binary cross-entropy
summed over the image's values (784 for MNIST, C x H x W in general), treating each grey level as a Bernoulli mean as in the original
VAE paper (or, with ``recon_loss="mse"``, the squared error summed over pixels, which is
what the reconstruction-MSE metric measures); the AE minimises it alone, the VAE adds beta times the KL divergence of
q(z|x) = N(mean, diag(exp(log_var))) from N(0, I) (Kingma & Welling 2014, appendix B).
Training is deterministic on CPU under a seed: weights are initialised from the seed, and
each epoch reseeds the shuffling and the reparameterisation noise from (seed, epoch), so a
run resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.data import Mnist, to_float
from training.images import ImageFolderData
from training.models import AnyAutoencoder, ModelConfig, VariationalAutoencoder, build_model

CHECKPOINT = "checkpoint.pt"

# What fit, export and analysis take: MNIST's IDX files or a folder of images. Both hold uint8
# train/test arrays with labels and describe themselves with provenance().
TrainingData = Mnist | ImageFolderData


@dataclass(frozen=True)
class FitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3
    # Cosine decay to 5% of the learning rate over the epochs: cheap and lowers the final loss.
    lr_schedule: str = "cosine"
    beta: float = 1.0
    recon_loss: str = "bce"  # "bce" or "mse", both summed over the pixels of an image
    seed: int = 0
    val_size: int = 2000
    threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconstruction_loss(
    recon: torch.Tensor, images: torch.Tensor, kind: str = "bce"
) -> torch.Tensor:
    """BCE (or squared error) summed over pixels: N per-image values."""
    if kind == "mse":
        return (recon - images).pow(2).flatten(1).sum(1)
    return F.binary_cross_entropy(recon, images, reduction="none").flatten(1).sum(1)


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) per image: N values (summed over every latent
    value, flat N x D or spatial N x C x h x w)."""
    return -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).flatten(1).sum(1)


def loss_terms(
    model: AnyAutoencoder, images: torch.Tensor, beta: float, recon_loss: str = "bce"
) -> dict[str, torch.Tensor]:
    """Batch means of the loss and its parts."""
    if isinstance(model, VariationalAutoencoder):
        recon, mean, log_var = model(images)
        rec = reconstruction_loss(recon, images, recon_loss).mean()
        kl = kl_divergence(mean, log_var).mean()
        return {"loss": rec + beta * kl, "recon": rec, "kl": kl}
    recon, _ = model(images)
    rec = reconstruction_loss(recon, images, recon_loss).mean()
    return {"loss": rec, "recon": rec}


def split_train_val(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the training indices into train and validation."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _learning_rate(config: FitConfig, epoch: int) -> float:
    if config.lr_schedule == "constant" or config.epochs <= 1:
        return config.learning_rate
    floor = 0.05 * config.learning_rate
    progress = epoch / (config.epochs - 1)
    return floor + 0.5 * (config.learning_rate - floor) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(
    model: AnyAutoencoder,
    images: torch.Tensor,
    beta: float,
    batch_size: int,
    recon_loss: str = "bce",
) -> dict[str, float]:
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        for key, value in loss_terms(model, batch, beta, recon_loss).items():
            totals[key] = totals.get(key, 0.0) + float(value) * len(batch)
    return {key: value / len(images) for key, value in totals.items()}


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    count: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    lr: float,
    desc: str,
    progress: bool,
) -> float:
    """One pass over `count` training examples in an order seeded by (seed, epoch), at
    learning rate lr; batch_loss(indices) is a batch's mean loss. Returns the epoch's mean."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(count, generator=generator)
    model.train()
    running, seen = 0.0, 0
    bar = tqdm(range(0, count, batch_size), desc=desc, disable=not progress, leave=False)
    for start in bar:
        idx = order[start : start + batch_size]
        loss = batch_loss(idx)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        running += float(loss.detach()) * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{running / seen:.4g}")
    return running / seen


def library_versions() -> dict[str, str]:
    import onnx

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnx": onnx.__version__,
    }


def fit(
    data: TrainingData,
    config: FitConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train (or continue training) a model; returns the checkpoint path. `stop_after`: end
    after that epoch of the config's schedule (a later `resume` continues it exactly)."""
    shape = tuple(to_float(data.train_images[:1]).shape[1:])
    if shape != config.model.image_shape:
        raise ValueError(f"images are {shape}, the model is built for {config.model.image_shape}")
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / CHECKPOINT

    images = torch.from_numpy(to_float(data.train_images))
    train_idx, val_idx = split_train_val(len(images), config.val_size, config.seed)
    train_images, val_images = images[train_idx], images[val_idx]

    torch.manual_seed(config.seed)
    model = build_model(config.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and checkpoint_path.exists():
        history, start_epoch = _resume(checkpoint_path, config, model, optimizer)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return loss_terms(model, train_images[idx], config.beta, config.recon_loss)["loss"]

    last = config.epochs if stop_after is None else min(stop_after, config.epochs)
    for epoch in range(start_epoch, last):
        started = time.perf_counter()
        lr = _learning_rate(config, epoch)
        torch.manual_seed(_epoch_seed(config.seed, epoch))  # reparameterisation noise, dropout
        train_loss = train_epoch(
            model,
            optimizer,
            batch_loss,
            len(train_images),
            batch_size=config.batch_size,
            seed=config.seed,
            epoch=epoch,
            lr=lr,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            progress=progress,
        )
        val = evaluate(model, val_images, config.beta, 512, config.recon_loss)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        _log_epoch(record, val, config.epochs)
        _save_checkpoint(checkpoint_path, model, optimizer, config, epoch + 1, history, data)
    return checkpoint_path


def _resume(
    path: Path, config: FitConfig, model: AnyAutoencoder, optimizer: torch.optim.Optimizer
) -> tuple[list[dict[str, float]], int]:
    """Load a checkpoint into model and optimizer; returns its history and last epoch."""
    state = torch.load(path, weights_only=False)
    saved = state["fit_config"]
    was = (saved["model"], saved["seed"], saved.get("recon_loss", "bce"))
    now = (config.model.to_dict(), config.seed, config.recon_loss)
    if was != now:
        raise ValueError(
            f"{path} was trained as (model, seed, loss) {was}; cannot resume it as {now}"
        )
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    print(f"resuming {path} after epoch {state['epoch']}")
    return state["history"], int(state["epoch"])


def _log_epoch(record: dict[str, float], val: dict[str, float], epochs: int) -> None:
    print(
        f"epoch {int(record['epoch'])}/{epochs}  train loss {record['train_loss']:.3f}  "
        f"val loss {val['loss']:.3f}"
        + (f" (recon {val['recon']:.3f}, kl {val['kl']:.3f})" if "kl" in val else "")
        + f"  {record['seconds']:.0f}s",
        flush=True,
    )


def _save_checkpoint(
    path: Path,
    model: AnyAutoencoder,
    optimizer: torch.optim.Optimizer,
    config: FitConfig,
    epoch: int,
    history: list[dict[str, float]],
    data: TrainingData,
) -> None:
    state = {
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "fit_config": config.to_dict(),
        "epoch": epoch,
        "history": history,
        "data": data.provenance(),
        "versions": library_versions(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a stopped run never leaves a half-written checkpoint


def checkpoint_data(path: Path) -> dict[str, Any]:
    """The data provenance a checkpoint was trained on (export reloads an image folder from it)."""
    record: dict[str, Any] = torch.load(path, weights_only=False)["data"]
    return record


def load_checkpoint(path: Path) -> tuple[AnyAutoencoder, dict[str, Any]]:
    """The trained model (in eval mode) and the checkpoint's metadata."""
    state = torch.load(path, weights_only=False)
    model_config = ModelConfig(**state["fit_config"]["model"])
    model = build_model(model_config)
    model.load_state_dict(state["model_state"])
    model.eval()
    return model, state
