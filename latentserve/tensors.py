"""The tensor codec: the native proto's ``Tensor`` (shape + raw little-endian float32 bytes,
or uint8 bytes for images when ``dtype`` says so) to and from numpy arrays. Server, client and benchmarks all encode and decode through here.

Decoding validates what the bytes alone can tell (non-negative shape, byte length) and
raises :class:`TensorError`, whose message says what is allowed; the server answers it with
INVALID_ARGUMENT. Rank, sizes and finiteness against a model are the server's business.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ._proto.latentserve.v1 import autoencoder_pb2 as pb

Float32Array = npt.NDArray[np.float32]
LE_FLOAT32: np.dtype[Any] = np.dtype("<f4")
UINT8: np.dtype[Any] = np.dtype("u1")
WIRE_DTYPES: dict[int, np.dtype[Any]] = {
    pb.DATA_TYPE_FLOAT32: LE_FLOAT32,
    pb.DATA_TYPE_UINT8: UINT8,
}


# Most dimensions a tensor may have: models take 1 to 4, and numpy stops at 64 (a shape of
# 65 dimensions failed inside numpy, as an internal error, before this check).
MAX_DIMS = 16
# Largest single dimension: no tensor here comes near it, and numpy cannot even describe a
# shape such as [0, 2**62] (its byte size overflows), which it reports as a plain ValueError.
MAX_DIM = 2**31 - 1


class TensorError(ValueError):
    """A tensor whose shape and bytes disagree."""


def check_dims(shape: tuple[int, ...], what: str) -> None:
    """At most MAX_DIMS dimensions, each in 0..MAX_DIM, and at most MAX_DIM elements (not
    counting zero dimensions), else TensorError."""
    if len(shape) > MAX_DIMS:
        raise TensorError(f"{what}: shape has {len(shape)} dimensions; at most {MAX_DIMS}")
    if any(d < 0 for d in shape):
        raise TensorError(f"{what}: shape {list(shape)} has a negative dimension")
    if any(d > MAX_DIM for d in shape):
        raise TensorError(f"{what}: shape {list(shape)} has a dimension over {MAX_DIM}")
    # Checked without the zero dimensions too: numpy refuses to even describe an empty
    # array whose other dimensions multiply past its limit ([0, 2**24, 2**24, 2**24]).
    if math.prod(d for d in shape if d) > MAX_DIM:
        raise TensorError(f"{what}: shape {list(shape)} describes more than {MAX_DIM} elements")


def tensor_to_array(tensor: pb.Tensor, what: str, *, allow_uint8: bool = False) -> npt.NDArray[Any]:
    """A read-only view of `tensor.raw_data` with `tensor.shape` (no copy): float32, or
    uint8 where `allow_uint8` (images) and the tensor says so."""
    shape = tuple(int(d) for d in tensor.shape)
    if not shape:
        raise TensorError(f"{what}: shape is empty; give the dimensions, e.g. [N, C, H, W]")
    check_dims(shape, what)
    dtype = WIRE_DTYPES.get(tensor.dtype)
    if dtype is None or (dtype == UINT8 and not allow_uint8):
        allowed = "DATA_TYPE_FLOAT32 or DATA_TYPE_UINT8" if allow_uint8 else "DATA_TYPE_FLOAT32"
        raise TensorError(f"{what}: dtype {tensor.dtype} is not allowed here; use {allowed}")
    expected = dtype.itemsize * math.prod(shape)
    if len(tensor.raw_data) != expected:
        per_value = (
            "4 bytes per little-endian float32 value" if dtype == LE_FLOAT32 else "1 per uint8"
        )
        raise TensorError(
            f"{what}: raw_data holds {len(tensor.raw_data)} bytes, but shape {list(shape)} "
            f"needs {expected} ({per_value})"
        )
    array: npt.NDArray[Any] = np.frombuffer(tensor.raw_data, dtype=dtype).reshape(shape)
    if dtype == UINT8:
        return array
    # The native dtype is float32 on every platform we run on; astype is then a no-op view.
    return array.astype(np.float32, copy=False)


def array_to_tensor(array: npt.ArrayLike) -> pb.Tensor:
    """float32 (or a uint8 array, kept as uint8) -> Tensor."""
    if isinstance(array, np.ndarray) and array.dtype == UINT8:
        data = np.ascontiguousarray(array)
        return pb.Tensor(shape=list(data.shape), raw_data=data.tobytes(), dtype=pb.DATA_TYPE_UINT8)
    data = np.ascontiguousarray(array, dtype=LE_FLOAT32)
    return pb.Tensor(shape=list(data.shape), raw_data=data.tobytes())
