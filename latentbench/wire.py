"""Tensor encodings on the wire: the API's raw little-endian bytes vs a repeated-float field.

The repeated-float message is built at run time from a descriptor (it is not part of the
public proto): ``FloatTensor { repeated int64 shape = 1; repeated float values = 2; }``
(packed, as proto3 does by default). Each round trip is what a client and a server pay
per tensor: numpy -> message -> bytes, then bytes -> message -> numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb


def _float_tensor_class() -> Any:
    file = descriptor_pb2.FileDescriptorProto(
        name="latentserve_bench/float_tensor.proto", package="latentserve_bench", syntax="proto3"
    )
    msg = file.message_type.add(name="FloatTensor")
    label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    msg.field.add(
        name="shape", number=1, label=label, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64
    )
    msg.field.add(
        name="values", number=2, label=label, type=descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("latentserve_bench.FloatTensor")
    )


FloatTensor = _float_tensor_class()


def raw_round_trip(array: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(array, dtype="<f4")
    wire = pb.Tensor(shape=list(data.shape), raw_data=data.tobytes()).SerializeToString()
    parsed = pb.Tensor.FromString(wire)
    return np.frombuffer(parsed.raw_data, dtype="<f4").reshape(tuple(parsed.shape))


def repeated_round_trip(array: np.ndarray) -> np.ndarray:
    message = FloatTensor(shape=list(array.shape))
    message.values.extend(array.ravel().tolist())
    wire = message.SerializeToString()
    parsed = FloatTensor.FromString(wire)
    return np.asarray(parsed.values, dtype=np.float32).reshape(tuple(parsed.shape))


def wire_bytes(array: np.ndarray) -> tuple[int, int]:
    """Serialised sizes (raw, repeated) of `array`."""
    raw = pb.Tensor(shape=list(array.shape), raw_data=array.astype("<f4").tobytes())
    rep = FloatTensor(shape=list(array.shape))
    rep.values.extend(array.ravel().tolist())
    return raw.ByteSize(), rep.ByteSize()


ENCODINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "raw_bytes": raw_round_trip,
    "repeated_float": repeated_round_trip,
}
