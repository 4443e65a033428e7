"""The tensor codec: the native proto's ``Tensor`` (shape + raw little-endian float32 bytes)
to and from numpy arrays. Server, client and benchmarks all encode and decode through here.

Decoding validates what the bytes alone can tell (non-negative shape, byte length) and
raises :class:`TensorError`, whose message says what is allowed; the server answers it with
INVALID_ARGUMENT. Rank, sizes and finiteness against a model are the server's business.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ._proto.latentserve.v1 import autoencoder_pb2 as pb

Float32Array = npt.NDArray[np.float32]
LE_FLOAT32 = np.dtype("<f4")


# Most dimensions a tensor may have: models take 1 to 4, and numpy stops at 64 (a shape of
# 65 dimensions failed inside numpy, as an internal error, before this check).
MAX_DIMS = 16
# Largest single dimension: no tensor here comes near it, and numpy cannot even describe a
# shape such as [0, 2**62] (its byte size overflows), which it reports as a plain ValueError.
MAX_DIM = 2**31 - 1


class TensorError(ValueError):
    """A tensor whose shape and bytes disagree."""


def check_dims(shape: tuple[int, ...], what: str) -> None:
    """At most MAX_DIMS dimensions, each in 0..MAX_DIM, else TensorError."""
    if len(shape) > MAX_DIMS:
        raise TensorError(f"{what}: shape has {len(shape)} dimensions; at most {MAX_DIMS}")
    if any(d < 0 for d in shape):
        raise TensorError(f"{what}: shape {list(shape)} has a negative dimension")
    if any(d > MAX_DIM for d in shape):
        raise TensorError(f"{what}: shape {list(shape)} has a dimension over {MAX_DIM}")


def tensor_to_array(tensor: pb.Tensor, what: str) -> Float32Array:
    """A read-only float32 view of `tensor.raw_data` with `tensor.shape` (no copy)."""
    shape = tuple(int(d) for d in tensor.shape)
    if not shape:
        raise TensorError(f"{what}: shape is empty; give the dimensions, e.g. [N, 28, 28]")
    check_dims(shape, what)
    expected = 4 * math.prod(shape)
    if len(tensor.raw_data) != expected:
        raise TensorError(
            f"{what}: raw_data holds {len(tensor.raw_data)} bytes, but shape {list(shape)} "
            f"needs {expected} (4 bytes per little-endian float32 value)"
        )
    array = np.frombuffer(tensor.raw_data, dtype=LE_FLOAT32).reshape(shape)
    # The native dtype is float32 on every platform we run on; astype is then a no-op view.
    return array.astype(np.float32, copy=False)


def array_to_tensor(array: npt.ArrayLike) -> pb.Tensor:
    data = np.ascontiguousarray(array, dtype=LE_FLOAT32)
    return pb.Tensor(shape=list(data.shape), raw_data=data.tobytes())
