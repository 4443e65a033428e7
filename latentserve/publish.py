"""Publishing a model folder into a model repository as its next version, atomically.

`publish(source, repository, name)` copies a model folder (model.json + graphs + whatever
else it holds, e.g. the explorer's latent_sample.json) into a hidden staging folder
``REPOSITORY/NAME/.staging-<random>/`` on the same file system, checks it there (model.json
validates, the graphs' sha256 match), then renames it to ``REPOSITORY/NAME/<VERSION>/``.
A rename within one file system is atomic, and a server polling the repository ignores
hidden folders, so it sees either no new version or a complete one: never a half-written
folder. VERSION is one more than the highest version already there (a flat
``NAME/model.json`` counts as version 1); two publishers racing for the same number both
succeed, one of them with the number after. The copy's model.json gets NAME and VERSION,
so that the served name and version match the folder. numpy and pydantic only: no torch.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from latentserve.manifest import ManifestError, load_model_folder, write_manifest

MANIFEST_FILE = "model.json"
STAGING_PREFIX = ".staging-"
# Renaming onto a version that appeared meanwhile: try the next numbers, this many times.
MAX_ATTEMPTS = 100


def version_of(folder_name: str) -> int | None:
    """The version a folder name stands for ("3"), or None (hidden, not a number, 0)."""
    if not folder_name.isdigit() or folder_name.startswith("0"):
        return None
    return int(folder_name)


def versions(model_dir: Path) -> list[int]:
    """The versions in one model folder, ascending (a flat model.json is version 1)."""
    if not model_dir.is_dir():
        return []
    found = {v for p in model_dir.iterdir() if p.is_dir() and (v := version_of(p.name)) is not None}
    if (model_dir / MANIFEST_FILE).is_file():
        found.add(1)
    return sorted(found)


def next_version(model_dir: Path) -> int:
    return max(versions(model_dir), default=0) + 1


def _ignore_nested_versions(folder: str, names: list[str]) -> set[str]:
    """A flat source folder may hold version folders of its own: copy only the flat model."""
    return {n for n in names if n.startswith(".") or version_of(n) is not None}


def publish(source: Path, repository: Path, name: str | None = None) -> Path:
    """Copy model folder `source` to `repository/NAME/<next version>/` atomically and return
    that folder. NAME defaults to the name in source's model.json. Raises ManifestError
    when `source` is not a valid model folder (nothing is written then)."""
    manifest = load_model_folder(source)  # validates model.json and the graphs' sha256
    name = name or manifest.name
    if not name or "/" in name or name.startswith((".", "_")):
        raise ManifestError(f"model name {name!r} cannot be a folder name in the repository")
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        shutil.copytree(source, staging, ignore=_ignore_nested_versions)
        for _ in range(MAX_ATTEMPTS):
            version = next_version(model_dir)
            update = {"name": name, "version": str(version)}
            write_manifest(staging, manifest.model_copy(update=update))
            load_model_folder(staging)  # the copy is complete and intact
            target = model_dir / str(version)
            try:
                os.rename(staging, target)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # another publisher took this number: take the next
                raise
            return target
        raise ManifestError(f"could not find a free version number in {model_dir}")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
