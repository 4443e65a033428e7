"""The colour model's data: Noto emoji from the npm package emoji-datasource-google 16.0.0.

The package's tarball holds 3,786 PNGs at 64 x 64 RGBA under ``package/img/google/64/`` (1,911
emoji and 1,875 skin-tone variants) and ``package/emoji.json`` with each emoji's category.
:func:`locate_emoji` finds a copy in this order: an extracted copy in the cache whose
``SOURCE.json`` names the published integrity; the cached tarball; a download from the npm
registry over HTTPS; a local copy given by ``--emoji-dir`` or ``LATENTSERVE_EMOJI_DIR``
(the .tgz, e.g. from ``npm pack emoji-datasource-google@16.0.0``, or an unpacked package
folder). Every tarball is checked against the sha512 integrity npm publishes; no node is
needed. The images are written to ``<cache>/emoji-datasource-google-16.0.0/by-category/
<category>/<code>.png``, an image folder that ``latent-train fit --images`` takes as it is.
The package is MIT; the Noto Emoji images are Apache-2.0.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import DataNotFoundError
from training.images import SOURCE_FILE

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
TARBALL_URL = f"https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
# `npm view emoji-datasource-google@16.0.0 dist.integrity`
INTEGRITY = "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
IMAGE_PREFIX = "package/img/google/64/"
INDEX = "package/emoji.json"
EMOJI_DIR_ENV = "LATENTSERVE_EMOJI_DIR"
DOWNLOAD_TIMEOUT_S = 60.0
LICENSE = "package MIT; Noto Emoji images Apache-2.0"


class EmojiDataError(ValueError):
    """A tarball or folder that is not the expected package; the message says why."""


@dataclass(frozen=True)
class EmojiSource:
    """The by-category image folder and what was checked to trust it."""

    folder: Path
    origin: str
    checks: str


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "latentserve"


def integrity_of(path: Path) -> str:
    """The npm (subresource) integrity string of a file: "sha512-" + base64 of its sha512."""
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _checked(path: Path) -> bool:
    return path.is_file() and integrity_of(path) == INTEGRITY


def download_tarball(cache: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch the tarball from the npm registry into cache; raise OSError if not possible."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / TARBALL
    try:
        with (
            urllib.request.urlopen(TARBALL_URL, timeout=timeout) as response,
            tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp,
        ):
            shutil.copyfileobj(response, tmp)
    except (urllib.error.URLError, OSError) as e:
        raise OSError(f"could not download {TARBALL_URL}: {getattr(e, 'reason', e)}") from None
    tmp_path = Path(tmp.name)
    actual = integrity_of(tmp_path)
    if actual != INTEGRITY:
        tmp_path.unlink()
        raise OSError(f"{TARBALL_URL}: integrity {actual[:24]}... is not the published one")
    tmp_path.replace(target)
    return target


def category_folder(category: str) -> str:
    """'Smileys & Emotion' -> 'smileys-emotion': a folder name that needs no quoting."""
    return re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-") or "other"


def image_categories(index: list[dict[str, Any]]) -> dict[str, str]:
    """PNG file name -> category, for every emoji and skin-tone variant with a Google image."""
    categories: dict[str, str] = {}
    for entry in index:
        variants = [entry, *(entry.get("skin_variations") or {}).values()]
        for item in variants:
            if item.get("has_img_google", True) and item.get("image"):
                categories[item["image"]] = entry["category"]
    return categories


def _read_package(tarball: Path | None, unpacked: Path | None) -> dict[str, bytes]:
    """emoji.json and the 64 x 64 PNGs, by their path inside the package."""
    files: dict[str, bytes] = {}
    if tarball is not None:
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                for member in tar:
                    if member.isfile() and (
                        member.name == INDEX or member.name.startswith(IMAGE_PREFIX)
                    ):
                        handle = tar.extractfile(member)
                        if handle is not None:
                            files[member.name] = handle.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise EmojiDataError(f"{tarball}: not a readable .tgz ({e})") from None
    elif unpacked is not None:
        root = unpacked if (unpacked / INDEX).is_file() else unpacked.parent
        for path in [root / INDEX, *sorted((root / IMAGE_PREFIX).glob("*.png"))]:
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    if INDEX not in files:
        where = tarball or unpacked
        raise EmojiDataError(f"{where}: no {INDEX}: not the {PACKAGE} package")
    return files


def extract_by_category(
    out: Path,
    *,
    origin: str,
    checks: str,
    tarball: Path | None = None,
    unpacked: Path | None = None,
) -> Path:
    """Write out/<category>/<code>.png for every PNG emoji.json lists, and out/SOURCE.json.
    Only regular files under the image folder are read: nothing else in the archive is
    written, so no member can escape ``out``."""
    files = _read_package(tarball, unpacked)
    categories = image_categories(json.loads(files[INDEX]))
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + "."))
    counts: dict[str, int] = {}
    for name, blob in sorted(files.items()):
        image = name.removeprefix(IMAGE_PREFIX)
        if name == INDEX or image not in categories or "/" in image:
            continue
        folder = category_folder(categories[image])
        (staging / folder).mkdir(exist_ok=True)
        (staging / folder / image).write_bytes(blob)
        counts[folder] = counts.get(folder, 0) + 1
    if not counts:
        raise EmojiDataError(f"{tarball or unpacked}: no PNGs under {IMAGE_PREFIX}")
    source = {
        "package": f"{PACKAGE}@{VERSION}",
        "tarball": TARBALL_URL,
        "integrity": INTEGRITY,
        "origin": origin,
        "checks": checks,
        "images": sum(counts.values()),
        "per_category": dict(sorted(counts.items())),
        "category_names": {category_folder(c): c for c in sorted(set(categories.values()))},
        "license": LICENSE,
    }
    (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)
    return out


def _extracted_ok(folder: Path) -> bool:
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(source.get("integrity") == INTEGRITY and source.get("images", 0) > 0)


def _local_copy(local: Path, out: Path, download_error: str) -> EmojiSource:
    if local.is_file():
        if not _checked(local):
            raise EmojiDataError(
                f"{local}: integrity {integrity_of(local)[:24]}... is not the published "
                f"{INTEGRITY[:24]}... of {PACKAGE}@{VERSION}"
            )
        checks = f"sha512 integrity verified; npm download failed: {download_error}"
        extract_by_category(out, origin="local tarball", checks=checks, tarball=local)
        return EmojiSource(out, "local tarball", checks)
    if local.is_dir():
        checks = (
            "unpacked package folder: integrity not verifiable (it covers the tarball); "
            f"npm download failed: {download_error}"
        )
        extract_by_category(out, origin="local folder", checks=checks, unpacked=local)
        return EmojiSource(out, "local folder", checks)
    raise DataNotFoundError(f"{local}: no such file or folder (--emoji-dir / {EMOJI_DIR_ENV})")


def locate_emoji(
    local: Path | None = None,
    *,
    cache_dir: Path | None = None,
    download: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> EmojiSource:
    """The by-category emoji folder, from the best copy reachable (see the module docstring)."""
    cache = cache_dir or cache_root()
    out = cache / f"{PACKAGE}-{VERSION}" / "by-category"
    if _extracted_ok(out):
        return EmojiSource(out, "cached extract", "extracted from the tarball with this integrity")
    out.parent.mkdir(parents=True, exist_ok=True)
    tarball = cache / TARBALL
    checks = f"sha512 integrity matches the published {INTEGRITY[:20]}..."
    if _checked(tarball):
        extract_by_category(out, origin="cached npm tarball", checks=checks, tarball=tarball)
        return EmojiSource(out, "cached npm tarball", checks)
    download_error = "download skipped (--offline)"
    if download:
        try:
            tarball = download_tarball(cache, timeout)
            extract_by_category(out, origin="npm registry download", checks=checks, tarball=tarball)
            return EmojiSource(out, "npm registry download", checks)
        except OSError as e:
            download_error = str(e)
    local = local or (Path(os.environ[EMOJI_DIR_ENV]) if os.environ.get(EMOJI_DIR_ENV) else None)
    if local is None:
        raise DataNotFoundError(
            f"{PACKAGE}@{VERSION} is not cached in {cache} and could not be downloaded "
            f"({download_error}). Pass --emoji-dir PATH or set {EMOJI_DIR_ENV} to its .tgz "
            f"(npm pack {PACKAGE}@{VERSION}) or to an unpacked copy."
        )
    return _local_copy(local, out, download_error)
