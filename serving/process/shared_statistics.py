"""Statistics across worker processes (`--workers N`): each worker's figures, shared.

The supervisor gives its workers the Prometheus multiprocess folder it already makes for
their metrics (serving/process/metrics.py); each worker writes its statistics
(serving.core.statistics) there as ``statistics/<pid>.json`` once a second when they
changed, and when it stops. A worker answering a statistics call adds every other file's
figures to its own live ones, so any worker answers for the whole server; another
worker's calls show up within a second. A dead worker's last file stays, like its
counters: totals never go backwards when a worker restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

from serving.core.statistics import Counts, StatisticsBook, StatKey

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0


class SharedStatistics:
    def __init__(self, book: StatisticsBook, directory: Path) -> None:
        self._book = book
        self._dir = directory
        self._own = directory / f"{os.getpid()}.json"
        self._written = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._book.peers = self.peers
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        """Stop the periodic writes, after a last one (nothing if never started)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        """Write this worker's figures if they changed (atomically: readers never see half)."""
        text = json.dumps([[list(key), counts] for key, counts in self._book.own()])
        if text == self._written:
            return
        partial = self._own.with_suffix(".tmp")
        try:
            partial.write_text(text)
            partial.replace(self._own)
        except OSError as e:
            log.warning("cannot share statistics in %s: %s", self._dir, e)
            return
        self._written = text

    def peers(self) -> list[tuple[StatKey, Counts]]:
        """Every other worker's last written figures."""
        figures: list[tuple[StatKey, Counts]] = []
        for path in self._dir.glob("*.json"):
            if path == self._own:
                continue
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed meanwhile, or not ours
            for key, counts in entries:
                model, version, role = key
                figures.append(((model, version, role), counts))
        return figures
