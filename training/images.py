"""Image folders as training data: any folder of images, class subfolders as labels.

:func:`load_image_folder` reads every image under a folder (PNG, JPEG, GIF, BMP, WebP, TIFF),
composites transparency on white (emoji and icons have alpha), converts to grey or RGB,
resizes to the requested size and splits off a seeded, per-class test set. Subfolders holding
images become classes (their names label the figures); a folder of loose images is one class.
A ``SOURCE.json`` beside the images (the emoji downloader writes one) is copied into the
provenance, so a model records where its pictures came from.

Decoding and resizing are Pillow's. torchvision's ImageFolder and transforms would be the
usual choice, but PyPI's torchvision does not import beside torch 2.13.0 (``operator
torchvision::nms does not exist``, checked with torchvision 0.29.1), so the whole set is
decoded once into a uint8 array and batched by the training loop as MNIST is.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
SOURCE_FILE = "SOURCE.json"
KIND = "image folder"


class ImageFolderError(ValueError):
    """A folder or file that cannot be used; the message names it and the fix."""


def parse_size(text: str) -> tuple[int, int]:
    """``"32"`` -> (32, 32); ``"20x36"`` -> (20, 36) as height x width."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise ImageFolderError(f"image size {text!r}: give S or HxW, e.g. 32 or 20x36")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if not (4 <= height <= 1024 and 4 <= width <= 1024):
        raise ImageFolderError(f"image size {text!r}: each side must be within [4, 1024]")
    return height, width


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image paths (sorted), their class indices and the class names: one class per subfolder
    that holds images (searched recursively), or the folder's own name for loose images."""
    if not folder.is_dir():
        raise ImageFolderError(f"{folder}: not a folder (--images takes a folder of images)")
    classes = sorted(
        d.name for d in folder.iterdir() if d.is_dir() and any(map(_is_image, d.rglob("*")))
    )
    loose = sorted(p for p in folder.iterdir() if _is_image(p))
    if classes:
        if loose:
            raise ImageFolderError(
                f"{folder}: has both class subfolders ({', '.join(classes[:3])}, ...) and "
                f"{len(loose)} loose images ({loose[0].name}, ...): move the loose images into "
                "a subfolder, or point --images at a folder of one kind"
            )
        per_class = [sorted(filter(_is_image, (folder / c).rglob("*"))) for c in classes]
        paths = [p for group in per_class for p in group]
        labels = [i for i, group in enumerate(per_class) for _ in group]
        return paths, labels, classes
    if not loose:
        raise ImageFolderError(
            f"{folder}: no images ({', '.join(sorted(EXTENSIONS))}) in it or its subfolders"
        )
    return loose, [0] * len(loose), [folder.name]


def load_image(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 C x H x W: alpha composited on white, then grey (L) or RGB, then
    resized (Lanczos) to size = (height, width)."""
    from PIL import Image, UnidentifiedImageError  # the train extra; imported when used

    try:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, OSError) as e:
        raise ImageFolderError(f"{path}: cannot decode this image ({e})") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    picture = Image.alpha_composite(white, rgba).convert("RGB" if channels == 3 else "L")
    height, width = size
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(picture, dtype=np.uint8)
    return pixels.transpose(2, 0, 1) if channels == 3 else pixels[None]


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) indices with test_fraction of every class in the test set (at
    least one image of each class of two or more)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        pool = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(pool) * test_fraction)
        if test_fraction > 0 and len(pool) >= 2:
            n_test = max(1, n_test)
        test.append(pool[:n_test])
        train.append(pool[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@dataclass
class ImageFolderData:
    """A folder's images as uint8 N x C x H x W with int64 labels, split into train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    folder: Path
    test_fraction: float
    seed: int
    files_sha256: str
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return (int(c), int(h), int(w))

    def provenance(self) -> dict[str, Any]:
        counts = np.bincount(
            np.concatenate([self.train_labels, self.test_labels]), minlength=len(self.class_names)
        )
        return {
            "kind": KIND,
            "folder": str(self.folder),
            "channels": self.image_shape[0],
            "image_size": list(self.image_shape[1:]),
            "test_fraction": self.test_fraction,
            "split_seed": self.seed,
            "classes": {name: int(n) for name, n in zip(self.class_names, counts, strict=True)},
            # sha256 over every file's relative path and sha256, in order: the exact images.
            "files_sha256": self.files_sha256,
            "train_count": len(self.train_images),
            "test_count": len(self.test_images),
            **({"source": self.source} if self.source else {}),
        }


def _files_digest(folder: Path, paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_image_folder(
    folder: Path,
    *,
    size: tuple[int, int],
    channels: int,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ImageFolderData:
    """Decode every image under folder (see the module docstring) and split off a test set."""
    if channels not in (1, 3):
        raise ImageFolderError(f"--channels {channels}: give 1 (grey) or 3 (RGB)")
    if not 0.0 <= test_fraction < 1.0:
        raise ImageFolderError(f"--test-fraction {test_fraction}: give a number in [0, 1)")
    paths, label_list, classes = list_images(folder)
    images = np.stack([load_image(p, channels, size) for p in paths])
    labels = np.asarray(label_list, dtype=np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    source_file = folder / SOURCE_FILE
    source = json.loads(source_file.read_text()) if source_file.is_file() else {}
    return ImageFolderData(
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        class_names=classes,
        folder=folder,
        test_fraction=test_fraction,
        seed=seed,
        files_sha256=_files_digest(folder, paths),
        source=source,
    )


def reload_from_provenance(record: dict[str, Any]) -> ImageFolderData:
    """The same images a checkpoint or model was trained on, from its data provenance."""
    folder = Path(record["folder"])
    data = load_image_folder(
        folder,
        size=(record["image_size"][0], record["image_size"][1]),
        channels=record["channels"],
        test_fraction=record["test_fraction"],
        seed=record["split_seed"],
    )
    if data.files_sha256 != record["files_sha256"]:
        raise ImageFolderError(
            f"{folder}: its images changed since training (files sha256 {data.files_sha256[:12]}..., "
            f"recorded {record['files_sha256'][:12]}...); pass --images to use them anyway"
        )
    return data
