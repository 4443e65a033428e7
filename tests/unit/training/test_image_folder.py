"""Image folders as training data (Pillow: alpha on white, grey or RGB, resize, class
subfolders, a seeded per-class test split) and the emoji package downloader (integrity
checked, extracted by category, local fallback), on tiny generated files only."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import emoji
from training.analyze_images import display_names
from training.data import DataNotFoundError
from training.images import (
    ImageFolderError,
    list_images,
    load_image,
    load_image_folder,
    parse_size,
    reload_from_provenance,
    stratified_split,
)


def png_bytes(color: tuple[int, int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_classes(root: Path, per_class: dict[str, int], size: tuple[int, int] = (8, 8)) -> Path:
    """root/<class>/<i>.png: opaque pictures whose red level encodes the class."""
    for k, (name, count) in enumerate(sorted(per_class.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(
                png_bytes((40 + 100 * k, 10 * i, 200, 255), size)
            )
    return root


def test_parse_size() -> None:
    assert parse_size("32") == (32, 32)
    assert parse_size("20x36") == (20, 36)
    for bad in ("x", "32x", "2", "0x8", "4000"):
        with pytest.raises(ImageFolderError, match="image size"):
            parse_size(bad)


def test_transparency_is_white_and_images_resize(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent ...
    image.paste((255, 0, 0, 255), (0, 0, 4, 8))  # ... but its left half is opaque red
    image.save(path)
    rgb = load_image(path, 3, (8, 8))
    assert rgb.shape == (3, 8, 8) and rgb.dtype == np.uint8
    assert rgb[:, 0, 0].tolist() == [255, 0, 0] and rgb[:, 0, 7].tolist() == [255, 255, 255]
    grey = load_image(path, 1, (4, 6))
    assert grey.shape == (1, 4, 6)
    assert grey[0, 0, 0] < 120 and grey[0, 0, -1] == 255  # red is dark in grey, white stays


def test_class_subfolders_become_labels_and_the_split_is_per_class(tmp_path: Path) -> None:
    folder = write_classes(tmp_path / "set", {"apples": 10, "pears": 20, "single": 1})
    data = load_image_folder(folder, size=(6, 6), channels=3, test_fraction=0.2, seed=3)
    assert data.class_names == ["apples", "pears", "single"]
    assert data.image_shape == (3, 6, 6)
    assert np.bincount(data.test_labels, minlength=3).tolist() == [2, 4, 0]
    assert np.bincount(data.train_labels, minlength=3).tolist() == [8, 16, 1]
    # The label decides the red level: each class's pictures are their own.
    red = data.train_images[:, 0, 3, 3]
    assert sorted(set(red[data.train_labels == 0].tolist())) == [40]
    prov = data.provenance()
    assert prov["classes"] == {"apples": 10, "pears": 20, "single": 1}
    assert (prov["train_count"], prov["test_count"], prov["image_size"]) == (25, 6, [6, 6])
    again = reload_from_provenance(prov)
    np.testing.assert_array_equal(again.test_images, data.test_images)
    (folder / "pears" / "0.png").write_bytes(png_bytes((1, 2, 3, 255)))
    with pytest.raises(ImageFolderError, match="its images changed since training"):
        reload_from_provenance(prov)


def test_split_depends_on_the_seed() -> None:
    labels = np.repeat([0, 1], 50)
    a, b = stratified_split(labels, 0.1, 0)[1], stratified_split(labels, 0.1, 1)[1]
    assert len(a) == len(b) == 10 and not np.array_equal(a, b)


def test_loose_images_are_one_class_named_after_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png_bytes((i, i, i, 255)))
    (folder / "notes.txt").write_text("not an image")
    paths, labels, classes = list_images(folder)
    assert [p.name for p in paths] == ["0.png", "1.png", "2.png"]
    assert labels == [0, 0, 0] and classes == ["pictures"]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"a/x.png": True, "y.png": True}, "has both class subfolders (a, ...) and 1 loose images"),
        ({"notes.txt": False}, "no images"),
        ({"a/broken.png": False}, "cannot decode this image"),
    ],
)
def test_unusable_folders_name_the_problem(
    tmp_path: Path, layout: dict[str, bool], message: str
) -> None:
    for name, good in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(png_bytes((9, 9, 9, 255)) if good else b"not a png")
    with pytest.raises(ImageFolderError, match=re.escape(message)):
        load_image_folder(tmp_path, size=(8, 8), channels=3)


# The emoji downloader, against a tiny tarball shaped like the npm package.

IMAGES = {
    "1f600.png": "Smileys & Emotion",
    "1f34e.png": "Food & Drink",
    "1f44d.png": "People & Body",
}


def tiny_package(path: Path, extra_member: str | None = None) -> Path:
    index = [
        {"image": "1f600.png", "category": "Smileys & Emotion", "has_img_google": True},
        {"image": "1f34e.png", "category": "Food & Drink", "has_img_google": True},
        {
            "image": "1f44b.png",  # listed, but no Google image: skipped
            "category": "People & Body",
            "has_img_google": False,
            "skin_variations": {"1F3FB": {"image": "1f44d.png", "has_img_google": True}},
        },
    ]
    members = {emoji.INDEX: json.dumps(index).encode()}
    members |= {emoji.IMAGE_PREFIX + name: png_bytes((200, 100, 0, 128)) for name in IMAGES}
    if extra_member:
        members[extra_member] = b"must not be written"
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_integrity_is_npms_sha512_in_base64(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert emoji.integrity_of(path) == (
        "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="
    )


def test_local_tarball_is_checked_and_extracted_by_category(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = tiny_package(tmp_path / "pkg.tgz", extra_member="package/../../escape.png")
    cache = tmp_path / "cache"
    with pytest.raises(emoji.EmojiDataError, match="is not the published"):
        emoji.locate_emoji(tarball, cache_dir=cache, download=False)
    monkeypatch.setattr(emoji, "INTEGRITY", emoji.integrity_of(tarball))
    source = emoji.locate_emoji(tarball, cache_dir=cache, download=False)
    assert source.origin == "local tarball"
    files = sorted(p.relative_to(source.folder).as_posix() for p in source.folder.rglob("*.png"))
    assert files == ["food-drink/1f34e.png", "people-body/1f44d.png", "smileys-emotion/1f600.png"]
    assert not list(tmp_path.rglob("escape.png"))
    record = json.loads((source.folder / "SOURCE.json").read_text())
    assert record["integrity"] == emoji.INTEGRITY and record["images"] == 3
    assert record["category_names"]["food-drink"] == "Food & Drink"
    # Found again in the cache with no local copy named, and read as an image folder.
    assert emoji.locate_emoji(None, cache_dir=cache, download=False).origin == "cached extract"
    data = load_image_folder(source.folder, size=(8, 8), channels=3, test_fraction=0.0)
    assert data.class_names == ["food-drink", "people-body", "smileys-emotion"]
    assert data.provenance()["source"]["package"] == "emoji-datasource-google@16.0.0"
    assert display_names(data) == ["Food & Drink", "People & Body", "Smileys & Emotion"]
    # Half-transparent orange on white is a lighter orange.
    assert data.train_images[0, :, 0, 0].tolist() == [227, 177, 127]


def test_no_copy_anywhere_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(emoji.EMOJI_DIR_ENV, raising=False)
    with pytest.raises(
        DataNotFoundError, match="Pass --emoji-dir PATH or set LATENTSERVE_EMOJI_DIR"
    ):
        emoji.locate_emoji(None, cache_dir=tmp_path, download=False)
