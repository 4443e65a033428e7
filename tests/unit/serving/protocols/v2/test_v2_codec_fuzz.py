"""Property-based fuzzing of the Open Inference Protocol's decoding (issue 22): whatever the
tensor header, raw bytes, JSON values, whole REST body or gRPC ModelInferRequest (and the
native API's tensors), decoding either succeeds or raises the documented client errors (TensorError -> 400 / INVALID_ARGUMENT, ServingError
with INVALID_ARGUMENT or RESOURCE_EXHAUSTED -> 400 / 413); never another exception, which
the server would answer 500 / INTERNAL. Shapes are drawn up to 2**63 and 70 dimensions, so
an allocation sized by a claimed shape would show as MemoryError or a hang.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from latentserve.tensors import TensorError
from serving.core.errors import ServingError
from serving.protocols.v2 import codec
from serving.protocols.v2.rest import parse_infer_request

CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

datatypes = st.sampled_from([*codec.DATATYPES, "FP8", "", "bytes", "STRING"])
dims = st.one_of(
    st.integers(min_value=-3, max_value=8),
    st.sampled_from([2**24, 2**27, 2**31, 2**40, 2**62, 2**63 - 1]),
)
shapes = st.lists(dims, max_size=70)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=40,
)


def _decodes_or_refuses(decode: Any) -> None:
    try:
        decode()
    except TensorError:
        pass
    except ServingError as e:
        assert e.code in CLIENT_CODES, (e.code, e.message)


@FUZZ
@given(datatype=datatypes, shape=shapes, raw=st.binary(max_size=64))
def test_from_raw_only_refuses_as_documented(datatype: str, shape: list[int], raw: bytes) -> None:
    _decodes_or_refuses(lambda: codec.from_raw("x", datatype, shape, raw))


@FUZZ
@given(datatype=datatypes, shape=shapes, values=json_values)
def test_from_values_only_refuses_as_documented(
    datatype: str, shape: list[int], values: Any
) -> None:
    _decodes_or_refuses(lambda: codec.from_values("x", datatype, shape, values))


def _deep(depth: int) -> Any:
    value: Any = "standard_normal"
    for _ in range(depth):
        value = [value]
    return value


@FUZZ
@given(depth=st.integers(min_value=0, max_value=3000), datatype=st.sampled_from(["BYTES", "FP32"]))
def test_deep_nesting_is_refused_not_crashed(depth: int, datatype: str) -> None:
    _decodes_or_refuses(lambda: codec.from_values("x", datatype, [1], _deep(depth)))


tensor_headers = st.fixed_dictionaries(
    {
        "name": st.one_of(st.text(max_size=6), st.integers()),
        "datatype": st.one_of(datatypes, st.integers()),
    },
    optional={
        "shape": st.one_of(shapes, json_values),
        "data": json_values,
        "parameters": st.one_of(
            st.fixed_dictionaries(
                {"binary_data_size": st.one_of(st.integers(-5, 2**40), json_leaves)}
            ),
            json_values,
        ),
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.one_of(st.lists(tensor_headers, max_size=3), json_values),
        "outputs": json_values,
        "parameters": json_values,
        "id": json_values,
    },
)


@FUZZ
@given(
    header=bodies, binary=st.binary(max_size=64), declared=st.one_of(st.none(), st.text(max_size=6))
)
def test_rest_body_only_refuses_as_documented(
    header: dict[str, Any], binary: bytes, declared: str | None
) -> None:
    json_part = json.dumps(header).encode()
    length = str(len(json_part)) if declared is None else declared
    body = json_part + binary
    _decodes_or_refuses(lambda: parse_infer_request(body, length, max_json=1 << 20))


@FUZZ
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_as_a_rest_body(body: bytes) -> None:
    _decodes_or_refuses(lambda: parse_infer_request(body, None, max_json=1 << 20))


@FUZZ
@given(shape=shapes, raw=st.binary(max_size=64))
def test_native_tensors_only_refuse_as_documented(shape: list[int], raw: bytes) -> None:
    """The native API's tensors (latentserve.tensors) share the shape checks."""
    from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
    from latentserve.tensors import tensor_to_array

    try:
        tensor = pb.Tensor(shape=shape, raw_data=raw)
    except ValueError:  # protobuf refuses values outside int64 itself, client side
        return
    _decodes_or_refuses(lambda: tensor_to_array(tensor, "images"))


contents_fields = st.sampled_from(
    [
        "bool_contents",
        "int_contents",
        "int64_contents",
        "uint_contents",
        "uint64_contents",
        "fp32_contents",
        "fp64_contents",
        "bytes_contents",
    ]
)


@st.composite
def grpc_infer_requests(draw: st.DrawFn) -> Any:
    from latentserve._proto.inference import grpc_predict_v2_pb2 as pb

    tensors = []
    for i in range(draw(st.integers(0, 3))):
        shape = [d for d in draw(shapes) if -(2**63) <= d < 2**63]
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=f"in{i}", datatype=draw(datatypes), shape=shape
        )
        if draw(st.booleans()):
            field = draw(contents_fields)
            n = draw(st.integers(0, 8))
            values = {
                "bool_contents": [True] * n,
                "bytes_contents": [b"x"] * n,
                "fp32_contents": [0.5] * n,
                "fp64_contents": [0.5] * n,
            }.get(field, [1] * n)
            getattr(tensor.contents, field).extend(values)
        tensors.append(tensor)
    raw = draw(st.lists(st.binary(max_size=32), max_size=4))
    return pb.ModelInferRequest(model_name="m", inputs=tensors, raw_input_contents=raw)


@FUZZ
@given(request=grpc_infer_requests())
def test_grpc_infer_request_only_refuses_as_documented(request: Any) -> None:
    from serving.protocols.v2.grpc_servicer import infer_inputs

    _decodes_or_refuses(lambda: infer_inputs(request))
