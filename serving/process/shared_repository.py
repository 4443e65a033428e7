"""Version states across worker processes (`--workers N`): each worker's, shared.

Each worker writes its version states (model -> version -> state and reason) to
``repository/<pid>.json`` in the supervisor's metrics folder, the one the workers already
share their statistics in (shared_statistics.py): atomically, on every state change and
once a second besides, and removes it when it stops. A worker answering the repository
index or a version's readiness reads the other workers' files (serving.core.convergence
merges them). Only live workers count: the supervisor removes a worker's file as it reaps
it (so a pid reused later finds no file), and a file whose pid is gone is ignored besides.
A stalled worker still counts: it may take calls again. A worker publishes once it
listens, so a worker still warming up, which takes no call, holds nothing back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from serving.core.convergence import States, WorkerStates, states_of
from serving.core.repository import ModelRepository

log = logging.getLogger(__name__)

WRITE_INTERVAL_S = 1.0


class SharedRepository:
    def __init__(self, repository: ModelRepository, directory: Path, label: str) -> None:
        self._repository = repository
        self._dir = directory
        self._label = label
        self._own = directory / f"{os.getpid()}.json"
        self._task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return self._label

    def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self.write()
        self._repository.listeners.append(self.write)
        self._task = asyncio.get_running_loop().create_task(self._write_forever())

    async def stop(self) -> None:
        """Stop writing and withdraw this worker's file (nothing if never started)."""
        if self._task is None:
            return
        self._repository.listeners.remove(self.write)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._own.unlink(missing_ok=True)

    async def _write_forever(self) -> None:
        while True:
            await asyncio.sleep(WRITE_INTERVAL_S)
            self.write()  # also when unchanged: a write that failed once is made good

    def write(self) -> None:
        """Write this worker's states (atomically: readers never see half a file)."""
        text = json.dumps({"label": self._label, "models": states_of(self._repository.index())})
        partial = self._own.with_suffix(".tmp")
        try:
            partial.write_text(text)
            partial.replace(self._own)
        except OSError as e:
            log.warning("cannot share version states in %s: %s", self._dir, e)

    def peers(self) -> list[WorkerStates]:
        """Every other live worker's last written states."""
        found = []
        for path in self._dir.glob("*.json"):
            if path == self._own or not path.stem.isdigit() or not _alive(int(path.stem)):
                continue
            try:
                data = json.loads(path.read_text())
                found.append(WorkerStates(str(data["label"]), _states(data["models"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # removed meanwhile, or not ours
        return sorted(found, key=lambda w: w.label)


def _states(models: dict[str, dict[str, list[str]]]) -> States:
    return {
        name: {version: (str(s[0]), str(s[1])) for version, s in versions.items()}
        for name, versions in models.items()
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
