"""MNIST on disk: IDX parsing with full validation, the official download, and the local fallback.

Everything that touches MNIST files lives here. :func:`read_idx` parses one IDX file
(gzipped or not) and refuses anything malformed with an :class:`IdxError` naming the file
and the problem. :func:`locate_mnist` decides which copy to use: a verified copy of the
official release in the cache, else a fresh download (checked against the published MD5
sums), else a local folder given by ``--data-dir`` or ``LATENTSERVE_DATA_DIR`` (checked
against its ``SHA256SUMS`` when present). :func:`load_mnist` returns the arrays plus a
provenance record saying which files and how many images were used.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# The published checksums of the official release (the ones torchvision checks).
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
DATA_DIR_ENV = "LATENTSERVE_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 5.0

# IDX magic: two zero bytes, a type code, and the number of dimensions.
_UBYTE = 0x08
_IMAGE_MAGIC = (_UBYTE << 8) | 3
_LABEL_MAGIC = (_UBYTE << 8) | 1


class IdxError(ValueError):
    """An IDX file that cannot be used; the message names the file and what is wrong."""


class DataNotFoundError(RuntimeError):
    """No usable MNIST copy: not downloadable and no local folder given."""


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                return g.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise IdxError(f"{path}: file not found") from None
    except (OSError, EOFError) as e:
        # gzip raises these for truncated or corrupt archives.
        raise IdxError(f"{path}: cannot decompress ({e})") from None


def read_idx(path: Path, *, expect_dims: int | None = None) -> np.ndarray:
    """Parse one IDX file of unsigned bytes: images (N x H x W) or labels (N).

    Raises IdxError for a wrong magic number, an unexpected number of dimensions,
    or a payload shorter or longer than its header says.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0:2] != b"\x00\x00" or raw[2] != _UBYTE:
        raise IdxError(
            f"{path}: bad magic number 0x{magic:08x} (expected 0x{_IMAGE_MAGIC:08x} "
            f"for images or 0x{_LABEL_MAGIC:08x} for labels: unsigned-byte IDX)"
        )
    ndim = raw[3]
    if expect_dims is not None and ndim != expect_dims:
        raise IdxError(f"{path}: has {ndim} dimensions, expected {expect_dims}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) if dims else 0
    payload = len(raw) - header
    if payload < expected:
        raise IdxError(
            f"{path}: truncated: header says {' x '.join(map(str, dims))} = {expected} bytes "
            f"of data, file has {payload}"
        )
    if payload > expected:
        raise IdxError(f"{path}: {payload - expected} trailing bytes after the declared data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_images(path: Path) -> np.ndarray:
    """Images as uint8 N x 28 x 28."""
    images = read_idx(path, expect_dims=3)
    if images.shape[1:] != (28, 28):
        raise IdxError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    return images


def read_labels(path: Path) -> np.ndarray:
    """Labels as uint8 N, each in 0..9."""
    labels = read_idx(path, expect_dims=1)
    if labels.size and int(labels.max()) > 9:
        raise IdxError(f"{path}: label {int(labels.max())} out of range 0..9")
    return labels


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise IdxError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels


@dataclass(frozen=True)
class MnistSource:
    """Which folder holds the four files, and how we came to trust it."""

    folder: Path
    origin: str  # "official download", "cached official download" or "local folder"
    checks: str  # what was verified


@dataclass
class Mnist:
    """The arrays (uint8 N x 28 x 28 images, uint8 N labels) and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: MnistSource
    file_sha256: dict[str, str] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        return {
            "origin": self.source.origin,
            "folder": str(self.source.folder),
            "checks": self.source.checks,
            "files": self.file_sha256,
            "train_count": len(self.train_images),
            "test_count": len(self.test_images),
        }


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W (grey: MNIST's N x 28 x 28) or N x C x H x W -> float32 N x C x H x W
    in [0, 1] (the graphs' input contract)."""
    floats = images.astype(np.float32) / 255.0
    return floats[:, None, :, :] if floats.ndim == 3 else floats


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "latentserve" / "mnist"


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _has_official(folder: Path) -> bool:
    return all(
        (folder / name).is_file() and _digest(folder / name, "md5") == md5
        for name, md5 in OFFICIAL_MD5.items()
    )


def download_official(cache_dir: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch the four official files into cache_dir, checking each MD5; raise OSError if not possible."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, md5 in OFFICIAL_MD5.items():
        target = cache_dir / name
        if target.is_file() and _digest(target, "md5") == md5:
            continue
        errors = []
        for mirror in MIRRORS:
            try:
                with (
                    urllib.request.urlopen(mirror + name, timeout=timeout) as response,
                    tempfile.NamedTemporaryFile(dir=cache_dir, delete=False) as tmp,
                ):
                    shutil.copyfileobj(response, tmp)
                tmp_path = Path(tmp.name)
            except (urllib.error.URLError, OSError) as e:
                errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
                continue
            actual = _digest(tmp_path, "md5")
            if actual != md5:
                tmp_path.unlink()
                errors.append(f"{mirror}: md5 {actual} does not match the published {md5}")
                continue
            tmp_path.replace(target)
            break
        else:
            raise OSError(f"could not download {name}: " + "; ".join(errors))
    return cache_dir


def verify_sha256sums(folder: Path) -> str:
    """Check the four files against folder/SHA256SUMS when it exists; return what was checked."""
    sums_file = folder / "SHA256SUMS"
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DataNotFoundError(f"{folder}: missing {', '.join(missing)}")
    if not sums_file.is_file():
        return "no SHA256SUMS in folder: checksums not verified (IDX structure still validated)"
    expected = {}
    for line in sums_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            expected[parts[1].lstrip("*")] = parts[0].lower()
    for name in FILES.values():
        if name not in expected:
            raise IdxError(f"{sums_file}: no entry for {name}")
        actual = _digest(folder / name, "sha256")
        if actual != expected[name]:
            raise IdxError(
                f"{folder / name}: sha256 {actual} does not match SHA256SUMS ({expected[name]})"
            )
    return "sha256 verified against SHA256SUMS"


def locate_mnist(
    data_dir: Path | None = None,
    *,
    cache_dir: Path | None = None,
    download: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> MnistSource:
    """Pick the best reachable MNIST: the full official set if cached or downloadable, else data_dir.

    data_dir defaults to $LATENTSERVE_DATA_DIR. The official set is preferred because a local
    folder may hold a subset (as ../shared/data/mnist does on the build machines).
    """
    cache = cache_dir or default_cache_dir()
    if _has_official(cache):
        return MnistSource(cache, "cached official download", "md5 matches the published sums")
    download_error = "download skipped (--offline)"
    if download:
        try:
            download_official(cache, timeout=timeout)
            return MnistSource(cache, "official download", "md5 matches the published sums")
        except OSError as e:
            download_error = str(e)
    folder = data_dir or (Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else None)
    if folder is None:
        raise DataNotFoundError(
            f"MNIST is not cached in {cache} and could not be downloaded ({download_error}). "
            f"Pass --data-dir FOLDER or set {DATA_DIR_ENV} to a folder with the four IDX files "
            f"({', '.join(FILES.values())})."
        )
    checks = verify_sha256sums(folder)
    return MnistSource(
        folder, "local folder", checks + f"; official download failed: {download_error}"
    )


def load_mnist(source: MnistSource) -> Mnist:
    folder = source.folder
    train_images, train_labels = read_split(
        folder / FILES["train_images"], folder / FILES["train_labels"]
    )
    test_images, test_labels = read_split(
        folder / FILES["test_images"], folder / FILES["test_labels"]
    )
    shas = {name: _digest(folder / name, "sha256") for name in FILES.values()}
    return Mnist(train_images, train_labels, test_images, test_labels, source, shas)


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write a uint8 array as IDX (gzipped if the name ends in .gz); used by tests and tools."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, data.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in data.shape
    )
    blob = header + data.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        blob = gzip.compress(blob, mtime=0)
    path.write_bytes(blob)
    return path
