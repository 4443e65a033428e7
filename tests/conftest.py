"""Shared pytest fixtures: tiny model folders (no torch) and real servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.models import build_model_folder
from fixtures.servers import InProcessServer

TINY_MODELS = {
    # name: (kind, latent_dim, seed)
    "tiny-ae": ("ae", 2, 1),
    "tiny-vae": ("vae", 2, 2),
    "tiny-vae-8": ("vae", 8, 3),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Full rolling-restart runs (marker `rolling`, minutes each) only when asked for with
    `-m rolling`; the default suite runs their short versions."""
    if "rolling" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="full rolling-restart runs: pytest -m rolling")
    for item in items:
        if "rolling" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ folder with three good tiny models (never modified by tests)."""
    root = tmp_path_factory.mktemp("models")
    for name, (kind, dim, seed) in TINY_MODELS.items():
        build_model_folder(root, name, kind=kind, latent_dim=dim, seed=seed)
    return root


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path) -> Iterator[InProcessServer]:
    """A real server on 127.0.0.1:<free port> serving the tiny models (default tiny-vae)."""
    with InProcessServer(tiny_models_dir, default_model="tiny-vae") as running:
        yield running
