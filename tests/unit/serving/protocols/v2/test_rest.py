"""parse_infer_request on its own: a REST inference body (JSON, or JSON plus the binary tensor
data extension) to the header, the decoded inputs, which outputs go back binary and which
were asked for; and every malformed body answered INVALID_ARGUMENT with a message saying
what is allowed. No server: a pure function."""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
import pytest

from latentserve.tensors import TensorError
from serving.core.errors import ServingError
from serving.process.metrics import Metrics
from serving.protocols.calls import CallTracker
from serving.protocols.v2.rest import HEADER_LENGTH, parse_infer_request

LATENTS = np.array([[0.5, -1.25], [3.0, 1e-3]], dtype=np.float32)


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, str]:
    """The body and Inference-Header-Content-Length of a binary-extension request."""
    head = json.dumps(header).encode()
    return head + b"".join(chunks), str(len(head))


def refused(body: bytes, header_length: str | None = None) -> str:
    """The INVALID_ARGUMENT message a client gets for this body."""
    with pytest.raises((ServingError, TensorError)) as caught:
        parse_infer_request(body, header_length)
    tracker = CallTracker(Metrics(), lambda: "m")
    status = tracker.end(tracker.begin("RestInfer", "m"), caught.value)
    assert status is not None and status.code is grpc.StatusCode.INVALID_ARGUMENT
    return status.message


def tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "latents", "datatype": "FP32", "shape": [2, 2], **fields}


# -- what a good request decodes to -----------------------------------------------------------


def test_json_request_decodes_its_inputs_and_asks_for_json_outputs():
    request = {"id": "r1", "inputs": [tensor(data=LATENTS.tolist())]}
    header, inputs, binary_outputs, requested = parse_infer_request(
        json.dumps(request).encode(), None
    )
    assert header == request
    assert [(i.name, i.datatype) for i in inputs] == [("latents", "FP32")]
    assert inputs[0].array.dtype == np.float32 and inputs[0].array.shape == (2, 2)
    np.testing.assert_array_equal(inputs[0].array, LATENTS)
    assert binary_outputs is False
    assert requested is None


def test_binary_inputs_follow_the_json_in_input_order():
    ids = np.array([7, -3, 2**40], dtype=np.int64)
    header = {
        "inputs": [
            tensor(parameters={"binary_data_size": LATENTS.nbytes}),
            {"name": "scale", "datatype": "FP64", "shape": [1], "data": [2.5]},
            {
                "name": "ids",
                "datatype": "INT64",
                "shape": [3],
                "parameters": {"binary_data_size": ids.nbytes},
            },
        ]
    }
    body, length = binary_body(header, LATENTS.tobytes(), ids.tobytes())
    parsed, inputs, _, _ = parse_infer_request(body, length)
    assert parsed == header
    assert [i.name for i in inputs] == ["latents", "scale", "ids"]
    np.testing.assert_array_equal(inputs[0].array, LATENTS)
    assert inputs[1].array.tolist() == [2.5]
    assert inputs[2].array.dtype == np.int64 and inputs[2].array.tolist() == ids.tolist()


def test_header_length_covering_the_whole_body_means_no_binary_part():
    body = json.dumps({"inputs": [tensor(data=LATENTS.ravel().tolist())]}).encode()
    _, inputs, _, _ = parse_infer_request(body, str(len(body)))
    np.testing.assert_array_equal(inputs[0].array, LATENTS)


def test_binary_data_output_asks_for_every_output_binary():
    request = {
        "inputs": [tensor(data=LATENTS.tolist())],
        "parameters": {"binary_data_output": True},
    }
    _, _, binary_outputs, requested = parse_infer_request(json.dumps(request).encode(), None)
    assert binary_outputs is True and requested is None


def test_outputs_choose_names_and_which_come_back_binary():
    request = {
        "inputs": [tensor(data=LATENTS.tolist())],
        "outputs": [
            {"name": "images", "parameters": {"binary_data": True}},
            {"name": "latents"},
            {"name": "extra", "parameters": {"binary_data": False}},
        ],
    }
    _, _, binary_outputs, requested = parse_infer_request(json.dumps(request).encode(), None)
    assert requested == ["images", "latents", "extra"]
    assert binary_outputs == {"images"}


def test_binary_data_output_wins_over_per_output_choices():
    request = {
        "inputs": [tensor(data=LATENTS.tolist())],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "images", "parameters": {"binary_data": False}}],
    }
    _, _, binary_outputs, requested = parse_infer_request(json.dumps(request).encode(), None)
    assert binary_outputs is True and requested == ["images"]


def test_an_empty_outputs_list_asks_for_no_output_by_name():
    request = {"inputs": [tensor(data=LATENTS.tolist())], "outputs": []}
    _, _, binary_outputs, requested = parse_infer_request(json.dumps(request).encode(), None)
    assert requested == [] and binary_outputs == set()


# -- the binary extension's framing -----------------------------------------------------------


@pytest.mark.parametrize("length", ["abc", "-1", "1.5", ""])
def test_header_length_must_be_a_byte_count(length):
    body = b'{"inputs": []}'
    assert refused(body, length) == (
        f"{HEADER_LENGTH}: {length!r} is not a byte count within the body's {len(body)} "
        "bytes; give the length of the JSON part"
    )


def test_header_length_beyond_the_body_is_refused():
    body = b'{"inputs": []}'
    message = refused(body, str(len(body) + 1))
    assert message.startswith(f"{HEADER_LENGTH}: '{len(body) + 1}' is not a byte count")


def test_binary_data_size_beyond_the_bytes_sent():
    header = {"inputs": [tensor(parameters={"binary_data_size": 32})]}
    body, length = binary_body(header, LATENTS.tobytes()[:12])
    assert refused(body, length) == (
        "latents: binary_data_size 32 does not fit the 12 binary bytes left after the JSON header"
    )


@pytest.mark.parametrize("size", [-4, "16", 1.5])
def test_binary_data_size_must_be_a_non_negative_integer(size):
    header = {"inputs": [tensor(parameters={"binary_data_size": size})]}
    body, length = binary_body(header, LATENTS.tobytes())
    message = refused(body, length)
    assert message.startswith(f"latents: binary_data_size {size!r} does not fit")


def test_binary_bytes_left_after_the_inputs_are_refused():
    header = {"inputs": [tensor(parameters={"binary_data_size": LATENTS.nbytes})]}
    body, length = binary_body(header, LATENTS.tobytes(), b"\0\0\0")
    assert refused(body, length) == (
        "3 binary bytes after the inputs' binary_data_size total; each binary input must give "
        "its exact size"
    )


def test_binary_bytes_without_any_binary_input_are_refused():
    header = {"inputs": [tensor(data=LATENTS.tolist())]}
    body, length = binary_body(header, b"\1\2")
    assert refused(body, length).startswith("2 binary bytes after the inputs'")


def test_binary_size_that_disagrees_with_the_shape_is_a_codec_error():
    header = {"inputs": [tensor(parameters={"binary_data_size": 8})]}
    body, length = binary_body(header, LATENTS.tobytes()[:8])
    assert refused(body, length) == (
        "latents: raw contents hold 8 bytes, but FP32 shape [2, 2] needs 16 "
        "(4 bytes per little-endian value, row-major)"
    )


# -- the JSON header --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{inputs: []}", b'{"inputs": [', b"\xff\xfe"])
def test_body_must_be_json(body):
    message = refused(body)
    assert message.startswith("request body is not valid JSON (")
    assert message.endswith("); send an inference request object")


@pytest.mark.parametrize("body", [b"[]", b"3", b'"inputs"', b"null"])
def test_body_must_be_a_json_object(body):
    assert refused(body) == "request body must be a JSON object with an 'inputs' list"


@pytest.mark.parametrize("inputs", [None, [], {}, "latents", 3])
def test_inputs_must_be_a_non_empty_list(inputs):
    body = json.dumps({} if inputs is None else {"inputs": inputs}).encode()
    assert refused(body) == "'inputs' must be a non-empty list of tensors"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("latents", "inputs[0] must be an object with name, datatype, shape"),
        ({"datatype": "FP32", "shape": [1]}, "inputs[0]: 'name' must be a string"),
        ({"name": 3, "datatype": "FP32", "shape": [1]}, "inputs[0]: 'name' must be a string"),
        ({"name": "x", "shape": [1]}, "x: 'datatype' must be a string such as \"FP32\""),
        ({"name": "x", "datatype": "FP32"}, "x: 'shape' must be a list of integers"),
        ({"name": "x", "datatype": "FP32", "shape": "2"}, "x: 'shape' must be a list of integers"),
        (
            {"name": "x", "datatype": "FP32", "shape": [1.0]},
            "x: 'shape' must be a list of integers",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [True]},
            "x: 'shape' must be a list of integers",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [1], "parameters": [1]},
            "'parameters' must be a JSON object",
        ),
    ],
)
def test_each_input_needs_a_name_datatype_and_integer_shape(entry, message):
    assert refused(json.dumps({"inputs": [entry]}).encode()) == message


def test_an_input_without_data_or_binary_size_is_refused():
    assert refused(json.dumps({"inputs": [tensor()]}).encode()) == (
        "latents: no 'data', and no binary_data_size parameter"
    )


def test_the_second_input_is_named_in_its_error():
    body = json.dumps({"inputs": [tensor(data=LATENTS.tolist()), "oops"]}).encode()
    assert refused(body) == "inputs[1] must be an object with name, datatype, shape"


def test_json_data_is_checked_by_the_codec():
    body = json.dumps({"inputs": [tensor(data=[1.0, 2.0, 3.0])]}).encode()
    assert refused(body) == "latents: 3 values, but shape [2, 2] needs 4 (row-major)"
    body = json.dumps({"inputs": [tensor(datatype="FLOAT", data=[1, 2, 3, 4])]}).encode()
    assert refused(body).startswith("latents: unknown datatype 'FLOAT'")


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"name": "images"}, "'outputs' must be a list of {'name': ...} objects"),
        (["images"], "each of 'outputs' must be an object with a 'name'"),
        ([{"name": 1}], "each of 'outputs' must be an object with a 'name'"),
        ([{"parameters": {}}], "each of 'outputs' must be an object with a 'name'"),
        ([{"name": "images", "parameters": "binary"}], "'parameters' must be a JSON object"),
    ],
)
def test_outputs_must_be_named_objects(outputs, message):
    body = json.dumps({"inputs": [tensor(data=LATENTS.tolist())], "outputs": outputs}).encode()
    assert refused(body) == message


def test_request_parameters_must_be_an_object():
    body = json.dumps({"inputs": [tensor(data=LATENTS.tolist())], "parameters": [1]}).encode()
    assert refused(body) == "'parameters' must be a JSON object"
