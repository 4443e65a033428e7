"""Open Inference Protocol tensors <-> numpy arrays, for both transports.

A v2 tensor is a name, a datatype (``FP32``, ``INT64``, ``BYTES``, ...), a shape and its
data: raw little-endian bytes (gRPC ``raw_input_contents``, the REST binary extension), a
typed list (gRPC ``InferTensorContents``) or JSON values (REST ``data``, flat or nested).
Decoding checks what the tensor alone can tell (a known datatype, a non-negative shape, as
many values or bytes as the shape needs) and raises :class:`TensorError` (answered as
INVALID_ARGUMENT / HTTP 400) with a message saying what is allowed. Whether a tensor fits a
model (its name, datatype and shape) is the model catalogue's business (models.py).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from latentserve._proto.inference import grpc_predict_v2_pb2 as pb
from latentserve.tensors import MAX_DIMS, TensorError, check_dims
from latentserve.wording import counted

# Fixed-size datatypes and their little-endian numpy dtypes (the protocol's byte order).
FIXED_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
DATATYPES = (*FIXED_DTYPES, BYTES)
# Which InferTensorContents field carries each datatype (FP16 travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LENGTH_PREFIX = struct.Struct("<I")

Array = npt.NDArray[Any]


def check_header(name: str, datatype: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The tensor's shape as a tuple, after checking its datatype and dimensions."""
    if datatype not in FIXED_DTYPES and datatype != BYTES:
        raise TensorError(
            f"{name}: unknown datatype {datatype!r}; the protocol's datatypes are "
            + ", ".join(DATATYPES)
        )
    # Integers already (protobuf int64s, or JSON ints checked by the REST parser).
    dims = tuple(shape)
    check_dims(dims, name)
    return dims


def _shown(dims: tuple[int, ...]) -> str:
    """A shape for an error message, bounded (a hostile one may be long)."""
    text = str(list(dims))
    return text if len(text) <= 200 else text[:200] + "...]"


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Array:
    """A tensor from its raw bytes: a read-only view for fixed-size types (no copy), an
    object array of bytes for BYTES (each element a 4-byte little-endian length, then it)."""
    dims = check_header(name, datatype, shape)
    count = math.prod(dims)
    if datatype == BYTES:
        return _bytes_elements(name, dims, count, raw)
    dtype = FIXED_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"{name}: raw contents hold {len(raw)} bytes, but {datatype} shape {list(dims)} "
            f"needs {expected} ({dtype.itemsize} bytes per little-endian value, row-major)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def from_contents(
    name: str, datatype: str, shape: Sequence[int], contents: pb.InferTensorContents
) -> Array:
    """A tensor from gRPC typed contents (the field that matches its datatype)."""
    dims = check_header(name, datatype, shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TensorError(f"{name}: {datatype} has no typed contents; send it as raw contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise TensorError(
            f"{name}: a {datatype} tensor's values go in contents.{field}, not in "
            + ", ".join(f"contents.{o}" for o in others)
        )
    values = getattr(contents, field)
    return from_values(name, datatype, dims, values)


def from_values(name: str, datatype: str, shape: Sequence[int], values: Any) -> Array:
    """A tensor from a list of values, flat or nested (REST ``data``, gRPC contents)."""
    dims = check_header(name, datatype, shape)
    count = math.prod(dims)
    if datatype == BYTES:
        flat = _flatten(name, values, count)
        array = np.empty(len(flat), dtype=object)
        for i, value in enumerate(flat):
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, bytes):
                raise TensorError(f"{name}: BYTES values must be strings, got {value!r}")
            array[i] = value
    else:
        dtype = FIXED_DTYPES[datatype]
        try:
            array = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else None)
        except (ValueError, TypeError) as e:
            raise TensorError(f"{name}: data is not a (nested) list of numbers: {e}") from None
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise TensorError(f"{name}: {datatype} data must be numbers, got {array.dtype} values")
        if dtype.kind in "iub" and array.dtype.kind == "f":
            raise TensorError(f"{name}: {datatype} data must be integers, got fractional numbers")
        narrowed = array.astype(dtype)
        if dtype.kind in "iu" and not np.array_equal(narrowed, array):
            info = np.iinfo(dtype)
            raise TensorError(
                f"{name}: a value is out of range for {datatype} ({info.min}..{info.max})"
            )
        array = narrowed.ravel()
    if array.size != count:
        raise TensorError(
            f"{name}: {counted(array.size, 'value')}, but shape {list(dims)} needs {count} "
            "(row-major)"
        )
    return array.reshape(dims)


def to_raw(array: Array, datatype: str) -> bytes:
    """The raw little-endian bytes of `array` as `datatype` (BYTES: length-prefixed)."""
    if datatype == BYTES:
        return b"".join(_LENGTH_PREFIX.pack(len(v)) + v for v in array.ravel())
    return np.ascontiguousarray(array, dtype=FIXED_DTYPES[datatype]).tobytes()


def to_values(array: Array, datatype: str) -> list[Any]:
    """`array` as a flat JSON-ready list (BYTES as UTF-8 strings)."""
    if datatype == BYTES:
        return [v.decode("utf-8", "replace") for v in array.ravel()]
    return list(array.ravel().tolist())


def _bytes_elements(name: str, dims: tuple[int, ...], count: int, raw: bytes) -> Array:
    # The shape is only a claim: check it against the bytes that came before allocating an
    # element per claimed value (a 43-byte request claiming 2**27 elements took 1 GiB).
    if count * _LENGTH_PREFIX.size > len(raw):
        raise TensorError(
            f"{name}: BYTES shape {_shown(dims)} claims {count} elements, but the raw contents "
            f"hold {len(raw)} bytes and each element needs at least 4 (its length)"
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise TensorError(
                f"{name}: raw BYTES contents end after {i} of {count} elements; each element "
                "is a 4-byte little-endian length followed by that many bytes"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise TensorError(f"{name}: raw BYTES element {i} says {length} bytes, fewer remain")
        elements[i] = raw[offset : offset + length]
        offset += length
    if offset != len(raw):
        raise TensorError(
            f"{name}: raw BYTES contents have {len(raw) - offset} bytes after the {count} "
            f"elements that shape {list(dims)} holds"
        )
    return elements.reshape(dims)


def _flatten(name: str, values: Any, count: int) -> list[Any]:
    """The leaves of nested lists, depth first, without recursion (BYTES data nested 1,000
    deep raised RecursionError, a 500), and at most `count` of them: more is an error."""
    if not isinstance(values, (list, tuple)) and not _is_sequence(values):
        values = [values]
    flat: list[Any] = []
    stack: list[Iterator[Any]] = [iter(values)]
    while stack:
        item: Any = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, (list, tuple)) or _is_sequence(item):
            if len(stack) >= MAX_DIMS:
                raise TensorError(f"{name}: data nested deeper than {MAX_DIMS} levels")
            stack.append(iter(item))
        else:
            flat.append(item)
            if len(flat) > count:
                raise TensorError(f"{name}: more than the {count} values its shape holds")
    return flat


_END = object()


def _is_sequence(value: Any) -> bool:
    """A repeated protobuf field or another non-string iterable."""
    return hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict))
