"""IDX parsing and its errors, and how the data folder is located and verified."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from training.data import (
    FILES,
    DataNotFoundError,
    IdxError,
    load_mnist,
    locate_mnist,
    read_idx,
    read_images,
    read_labels,
    read_split,
    to_float,
    write_idx,
)


def test_round_trip_gzipped_and_plain(tmp_path: Path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
    for name in ("a-idx3-ubyte.gz", "a-idx3-ubyte"):
        path = write_idx(tmp_path / name, images)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
        np.testing.assert_array_equal(read_images(path), images)


def test_to_float_is_the_graph_input_contract() -> None:
    x = to_float(np.full((2, 28, 28), 255, dtype=np.uint8))
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32 and float(x.max()) == 1.0


def test_bad_magic_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + b"\x00" * 20))  # float type code
    with pytest.raises(IdxError, match=r"bad\.gz: bad magic number 0x00000d03"):
        read_idx(path)


def test_truncated_payload(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "imgs", np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        IdxError,
        match=r"imgs: truncated: header says 4 x 28 x 28 = 3136 bytes of data, file has 3036",
    ):
        read_images(path)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "imgs.gz", np.random.default_rng(0).integers(0, 255, (50, 28, 28)))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(IdxError, match=r"imgs\.gz: cannot decompress"):
        read_images(path)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.zeros(5, np.uint8))
    path.write_bytes(path.read_bytes() + b"xx")
    with pytest.raises(IdxError, match="2 trailing bytes"):
        read_labels(path)


def test_wrong_dimensions(tmp_path: Path) -> None:
    labels_as_images = write_idx(tmp_path / "l", np.zeros(5, np.uint8))
    with pytest.raises(IdxError, match="has 1 dimensions, expected 3"):
        read_images(labels_as_images)
    small = write_idx(tmp_path / "s", np.zeros((2, 14, 14), np.uint8))
    with pytest.raises(IdxError, match="images are 14x14, expected 28x28"):
        read_images(small)


def test_label_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(IdxError, match="label 12 out of range"):
        read_labels(write_idx(tmp_path / "l", np.array([1, 12], np.uint8)))


def test_count_mismatch_names_both_files(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "i", np.zeros((3, 28, 28), np.uint8))
    labels = write_idx(tmp_path / "l", np.zeros(4, np.uint8))
    with pytest.raises(IdxError, match=r"i has 3 images but .*l has 4 labels"):
        read_split(images, labels)


def test_too_short_and_missing(tmp_path: Path) -> None:
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(IdxError, match="too short"):
        read_idx(tmp_path / "tiny")
    with pytest.raises(IdxError, match="not found"):
        read_idx(tmp_path / "absent")


def _write_sums(folder: Path) -> None:
    lines = [
        f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}" for n in FILES.values()
    ]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_local_folder_verified_and_counted(
    tmp_path: Path, write_dataset: Callable[..., Path]
) -> None:
    folder = write_dataset(tmp_path / "mnist", train=30, test=20)
    _write_sums(folder)
    source = locate_mnist(folder, cache_dir=tmp_path / "cache", download=False)
    assert source.origin == "local folder" and "sha256 verified" in source.checks
    data = load_mnist(source)
    prov = data.provenance()
    assert (prov["train_count"], prov["test_count"]) == (30, 20)
    assert set(prov["files"]) == set(FILES.values())


def test_checksum_mismatch_is_refused(tmp_path: Path, write_dataset: Callable[..., Path]) -> None:
    folder = write_dataset(tmp_path / "mnist", train=30, test=20)
    _write_sums(folder)
    write_idx(folder / FILES["test_labels"], np.ones(20, np.uint8))  # changed after the sums
    with pytest.raises(
        IdxError, match=r"t10k-labels-idx1-ubyte\.gz: sha256 .* does not match SHA256SUMS"
    ):
        locate_mnist(folder, cache_dir=tmp_path / "cache", download=False)


def test_env_var_fallback_and_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_dataset: Callable[..., Path]
) -> None:
    monkeypatch.delenv("LATENTSERVE_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="--data-dir FOLDER or set LATENTSERVE_DATA_DIR"):
        locate_mnist(None, cache_dir=tmp_path / "cache", download=False)
    folder = write_dataset(tmp_path / "mnist", train=30, test=20)
    monkeypatch.setenv("LATENTSERVE_DATA_DIR", str(folder))
    source = locate_mnist(None, cache_dir=tmp_path / "cache", download=False)
    assert source.folder == folder and "checksums not verified" in source.checks


def test_missing_file_in_local_folder(tmp_path: Path, write_dataset: Callable[..., Path]) -> None:
    folder = write_dataset(tmp_path / "mnist", train=30, test=20)
    (folder / FILES["train_labels"]).unlink()
    with pytest.raises(DataNotFoundError, match=r"missing train-labels-idx1-ubyte\.gz"):
        locate_mnist(folder, cache_dir=tmp_path / "cache", download=False)
