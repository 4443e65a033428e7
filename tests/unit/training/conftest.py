"""Fixtures for the training tests: a tiny generated MNIST-like dataset in IDX files (never
real data) and an evaluation classifier trained on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from training.classifier import train_and_export
from training.data import FILES, Mnist, load_mnist, locate_mnist, write_idx


def make_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 count x 28 x 28 images whose label decides where a bright bar sits, plus labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = (rng.random((count, 28, 28)) * 40).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 3 + 2 * int(label)
        images[i, row : row + 3, 4:24] = 255
        images[i, 4:24, row : row + 2] = 200
    return images, labels


def _write_dataset(folder: Path, train: int = 320, test: int = 120) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = make_digits(train, 0)
    test_images, test_labels = make_digits(test, 1)
    write_idx(folder / FILES["train_images"], train_images)
    write_idx(folder / FILES["train_labels"], train_labels)
    write_idx(folder / FILES["test_images"], test_images)
    write_idx(folder / FILES["test_labels"], test_labels)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Mnist:
    root = tmp_path_factory.mktemp("mnist")
    folder = _write_dataset(root / "idx")
    return load_mnist(locate_mnist(folder, cache_dir=root / "cache", download=False))


@pytest.fixture(scope="session")
def write_dataset() -> Callable[..., Path]:
    """write_dataset(folder, train=320, test=120) writes the four generated IDX files."""
    return _write_dataset


@pytest.fixture(scope="session")
def classifier(tiny_data: Mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch digit classifier ONNX (with its JSON record) trained on tiny_data."""
    path = tmp_path_factory.mktemp("assets") / "clf.onnx"
    train_and_export(tiny_data, path, epochs=1, threads=1, progress=False)
    return path
