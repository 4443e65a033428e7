"""What an image is on the wire: 1 x 28 x 28 float32 grey levels in [0, 1].

The model folder's ``model.json`` records the same shape (``ImageSpec``); serving checks at
load time that each graph agrees with it, so this one constant is what every side uses.
"""

from __future__ import annotations

import math

IMAGE_SHAPE: tuple[int, int, int] = (1, 28, 28)
IMAGE_VALUES = math.prod(IMAGE_SHAPE)
IMAGE_BYTES = 4 * IMAGE_VALUES  # float32
# An 8-bit 28 x 28 grayscale PNG is at most ~850 bytes (incompressible pixels plus headers).
PNG_BYTES_BOUND = 1024
