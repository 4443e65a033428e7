"""examples/digits/ holds what its README says: 28 x 28 grey PNGs of the digits 0-9, each
one its file name's digit by the shipped evaluation classifier (so the README's
`encode examples/digits/7.png` encodes a real 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"


def test_one_28x28_grey_png_per_digit():
    names = sorted(p.name for p in DIGITS.glob("*.png"))
    assert names == [f"{d}.png" for d in range(10)]
    for name in names:
        with Image.open(DIGITS / name) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (28, 28)), name


def test_the_classifier_reads_each_file_as_its_digit():
    ort = pytest.importorskip("onnxruntime")
    from training.assets import DEFAULT_CLASSIFIER

    session = ort.InferenceSession(str(DEFAULT_CLASSIFIER), providers=["CPUExecutionProvider"])
    images = np.stack(
        [np.asarray(Image.open(DIGITS / f"{d}.png"), np.float32) / 255.0 for d in range(10)]
    )[:, None]
    logits = session.run(["logits"], {"images": images})[0]
    assert logits.argmax(axis=1).tolist() == list(range(10))
