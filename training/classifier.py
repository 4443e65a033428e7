"""The evaluation digit classifier: a small CNN the project trains once and ships as ONNX.

Analysis uses it to name the digit a generated image shows (softmax confidence says how
well formed it is) and its 128-d penultimate features for a Fréchet distance between
generated and real images (an MNIST analogue of FID). It is shipped outside models/ in
training/assets/ (models/ holds only servable autoencoders) with a JSON record of its test
accuracy and sha256, so analysis needs onnxruntime but not training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentserve.manifest import sha256_of
from training.data import Mnist, to_float
from training.export import check_parity, export_graph
from training.graphs import open_session, run_batched
from training.train import library_versions, train_epoch

INPUT = "images"
OUTPUTS = ["logits", "features"]
MIN_ACCURACY = 0.98


class DigitClassifier(nn.Module):
    """images N x 1 x 28 x 28 -> (logits N x 10, features N x 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(128, 10)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        return self.head(self.dropout(features)), features


def record_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def train_and_export(
    data: Mnist,
    out: Path,
    *,
    epochs: int = 6,
    seed: int = 0,
    threads: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on the training split, export to ``out`` (ONNX) and write its JSON record beside it."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.from_numpy(to_float(data.train_images))
    labels = torch.from_numpy(data.train_labels.astype(np.int64))
    started = time.perf_counter()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        logits, _ = model(images[idx])
        return F.cross_entropy(logits, labels[idx])

    for epoch in range(epochs):
        train_epoch(
            model,
            optimizer,
            batch_loss,
            len(images),
            batch_size=128,
            seed=seed,
            epoch=epoch,
            lr=1e-3 * (0.7**epoch),  # decay each epoch: settles the last few errors
            desc=f"classifier epoch {epoch + 1}/{epochs}",
            progress=progress,
        )
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    test_images = to_float(data.test_images)
    opset = export_graph(model, torch.from_numpy(test_images[:4]), out, INPUT, OUTPUTS)
    max_diff = check_parity(model, out, test_images[:100])
    accuracy = float((predict(out, test_images)[0] == data.test_labels).mean())
    info: dict[str, Any] = {
        "file": out.name,
        "sha256": sha256_of(out),
        "inputs": [INPUT],
        "outputs": OUTPUTS,
        "opset": opset,
        "test_accuracy": accuracy,
        "test_images": len(test_images),
        "train_images": len(images),
        "epochs": epochs,
        "seed": seed,
        "parity_max_abs_diff": max_diff,
        "train_seconds": round(time.perf_counter() - started, 1),
        "data": data.provenance(),
        "versions": library_versions(),
    }
    record_path(out).write_text(json.dumps(info, indent=2) + "\n")
    return info


class ClassifierGraph:
    """The shipped classifier, opened in onnxruntime; checks its recorded sha256 first."""

    def __init__(self, path: Path) -> None:
        record = json.loads(record_path(path).read_text()) if record_path(path).is_file() else {}
        if record and sha256_of(path) != record["sha256"]:
            raise ValueError(f"{path}: sha256 does not match {record_path(path).name}")
        self.path = path
        self.record = record
        self.session = open_session(path)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images N x 1 x 28 x 28 float32 -> (softmax probabilities N x 10, features N x 128)."""
        out = run_batched(self.session, images)
        logits = out["logits"].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, out["features"].astype(np.float64)


def predict(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted digit (N) and its confidence (N) for images N x 1 x 28 x 28."""
    probs, _ = ClassifierGraph(path).run(images)
    return probs.argmax(axis=1), probs.max(axis=1)
