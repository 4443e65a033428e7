"""The explorer follows a live model repository (issue 21): its picker names the versions
each model serves, and a version published while the page is open shows up without a
reload, with the page's model data switching to it. Real Chromium, a real poll-mode server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.browser import chromium, explorer_page
from fixtures.models import build_model_folder
from fixtures.servers import InProcessServer, free_port

from latentserve.publish import publish

POLL_S = 0.3


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    exported = tmp_path / "exported"
    build_model_folder(exported, "tiny", kind="vae", latent_dim=2, seed=1)
    repo = tmp_path / "repo"
    publish(exported / "tiny", repo, "tiny")
    return repo


@pytest.fixture
def page(repository: Path) -> Iterator[Any]:
    with (
        InProcessServer(
            repository, http_port=free_port(), model_control="poll", poll_interval_s=POLL_S
        ) as served,
        chromium() as browser,
    ):
        assert served.server.http is not None
        url = f"http://127.0.0.1:{served.server.http.port}/"
        with explorer_page(browser, url) as page:
            yield page


def options(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)"))


def test_picker_follows_published_versions(page: Any, repository: Path, tmp_path: Path) -> None:
    assert options(page) == ["tiny v1 (vae, 2-D, 1 x 28 x 28)"]
    first = page.evaluate("window.explorer.state.model.name")
    assert first == "tiny"

    # Version 2: the same graphs with another description, so the page can tell it loaded.
    staged = tmp_path / "v2"
    shutil.copytree(repository / "tiny" / "1", staged)
    manifest = json.loads((staged / "model.json").read_text())
    manifest["description"] = "the second version"
    (staged / "model.json").write_text(json.dumps(manifest))
    publish(staged, repository, "tiny")

    # The server polls every 0.3 s; the page asks every 5 s (asked at once here, then waited
    # for: the poll that lands after the server loaded version 2 must show it).
    page.wait_for_function(
        """async () => { await window.explorer.refreshModels();
          return document.querySelector('#model option').textContent.startsWith('tiny versions 2, 1'); }""",
        timeout=30_000,
        polling=500,
    )
    page.wait_for_function(
        "() => window.explorer.state.model.description === 'the second version'", timeout=10_000
    )
    assert page.console_log.take() == []
