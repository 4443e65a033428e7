"""The explorer's HTTP resources, independent of the HTTP stack that serves them.

- ``GET /``: the page (index.html); ``GET /explorer/static/<file>``: its scripts and style.
  Both are open: they hold no data, and a browser must load them before it can ask for a
  token.
- ``GET /explorer/models``: the READY models (name, kind, latent_dim, default prior) and the
  default model; ``GET /explorer/models/<name>``: one model's data (serving/protocols/explorer/data.py).
  These sit behind the server's bearer-token auth like the v2 API.

Each handler returns a :class:`Reply`; the HTTP app turns it into its own response type.
Static files ship inside the package (package-data), are read once and served with
``Cache-Control: no-cache`` plus an ETag, so a new version of the page is picked up at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from serving.protocols.explorer.data import ExplorerData

STATIC_PREFIX = "/explorer/static/"
MODELS_PATH = "/explorer/models"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(value: Any, status: int = 200) -> Reply:
    return Reply(status, "application/json", json.dumps(value, separators=(",", ":")).encode())


def error_reply(status: int, message: str) -> Reply:
    return json_reply({"error": message}, status)


def _static_files() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and "." + entry.name.rpartition(".")[2] in CONTENT_TYPES
    }


class ExplorerPages:
    """The page, its assets and its data endpoints for one server."""

    def __init__(self, data: ExplorerData) -> None:
        self._data = data
        self._files = _static_files()
        self._etags = {
            name: '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            for name, body in self._files.items()
        }

    def page(self, if_none_match: str | None = None) -> Reply:
        return self.static("index.html", if_none_match)

    def static(self, name: str, if_none_match: str | None = None) -> Reply:
        body = self._files.get(name)
        if body is None:
            return error_reply(404, f"no explorer file {name!r}")
        etag = self._etags[name]
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if if_none_match == etag:
            return Reply(304, CONTENT_TYPES["." + name.rpartition(".")[2]], b"", headers)
        return Reply(200, CONTENT_TYPES["." + name.rpartition(".")[2]], body, headers)

    def models(self) -> Reply:
        return json_reply(self._data.listing())

    def model(self, name: str) -> Reply:
        body = self._data.model(name)
        if body is None:
            ready = ", ".join(self._data.ready_names()) or "none"
            return error_reply(404, f"unknown or not ready model {name!r}; ready: {ready}")
        return Reply(200, "application/json", body)
