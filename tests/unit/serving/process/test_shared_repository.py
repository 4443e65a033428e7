"""Version states shared between workers (serving.process.shared_repository): a worker's
file is written on a state change and withdrawn when it stops, and only live workers'
files count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fixtures.models import build_model_folder

from serving.core.repository import ModelRepository
from serving.process.settings import ServerSettings
from serving.process.shared_repository import SharedRepository


def write_peer(folder: Path, pid: int, label: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"label": label, "models": {"m": {"1": ["READY", ""]}}}
    (folder / f"{pid}.json").write_text(json.dumps(body))


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    return int(done.stdout)


async def test_own_states_are_written_and_only_live_peers_count(tmp_path: Path):
    build_model_folder(tmp_path / "repo", "tiny-vae", seed=1)
    shared = tmp_path / "repository"
    settings = ServerSettings(models_dir=tmp_path / "repo", metrics_port=0, warmup_runs=1)
    with ThreadPoolExecutor(1) as executor:
        registry = ModelRepository(settings, executor)
        registry.scan()
        sharing = SharedRepository(registry, shared, "worker 0 (pid 1)")
        sharing.start()
        own = shared / f"{os.getpid()}.json"
        assert json.loads(own.read_text())["models"]["tiny-vae"]["1"][0] == "LOADING"
        await registry.load_all()  # a state change: written at once, not a second later
        assert json.loads(own.read_text())["models"]["tiny-vae"]["1"] == ["READY", ""]

        write_peer(shared, os.getppid(), "worker 1 (live)")
        write_peer(shared, dead_pid(), "worker 2 (dead)")
        (shared / "notes.json").write_text("not a worker's")
        assert [p.label for p in sharing.peers()] == ["worker 1 (live)"]
        assert sharing.peers()[0].states == {"m": {"1": ("READY", "")}}

        await sharing.stop()
        assert not own.exists()
        await registry.close()
