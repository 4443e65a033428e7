"""Write examples/digits/: the first image of each digit 0-9 in the official MNIST test set,
as the 28 x 28 8-bit grey PNGs that `latent-client encode` takes as they are.

    python scripts/example_digits.py --data-dir path/to/mnist

The PNGs are committed; this records how they were made (and which test images they are).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from training.data import FILES, read_split

OUT = Path(__file__).resolve().parents[1] / "examples" / "digits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with the IDX files")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    images, labels = read_split(
        args.data_dir / FILES["test_images"], args.data_dir / FILES["test_labels"]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        index = int((labels == digit).nonzero()[0][0])
        path = args.out / f"{digit}.png"
        Image.fromarray(images[index]).save(path, optimize=True)
        print(f"{path}: test image {index}")


if __name__ == "__main__":
    main()
