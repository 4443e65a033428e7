"""Tensor conversion and provider choice."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from latentserve._proto.latentserve.v1 import autoencoder_pb2 as pb
from latentserve.tensors import TensorError, array_to_tensor, tensor_to_array
from serving.core.runtime import CPU, CUDA, choose_providers


def test_round_trip_is_little_endian_float32():
    array = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    tensor = array_to_tensor(array)
    assert list(tensor.shape) == [2, 3]
    assert tensor.raw_data == array.astype("<f4").tobytes()
    np.testing.assert_array_equal(tensor_to_array(tensor, "x"), array.astype(np.float32))


def test_big_endian_input_is_converted():
    tensor = array_to_tensor(np.array([1.5, -2.0], dtype=">f8"))
    np.testing.assert_array_equal(tensor_to_array(tensor, "x"), [1.5, -2.0])


@pytest.mark.parametrize(
    "tensor,fragment",
    [
        (pb.Tensor(shape=[2], raw_data=b"\0" * 4), "needs 8"),
        (pb.Tensor(shape=[-2], raw_data=b""), "negative"),
        (pb.Tensor(raw_data=b"\0" * 4), "shape is empty"),
    ],
)
def test_malformed_tensors(tensor, fragment):
    # The server answers TensorError with INVALID_ARGUMENT (tests/integration: bad-input matrix).
    with pytest.raises(TensorError) as info:
        tensor_to_array(tensor, "x")
    assert fragment in str(info.value)


def test_zero_sized_tensor_is_allowed_here():
    assert tensor_to_array(pb.Tensor(shape=[0, 28, 28]), "x").shape == (0, 28, 28)


def test_provider_choice():
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("auto", [CPU]) == [CPU]


def test_cuda_fallback_logs_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="serving.core.runtime")
    assert choose_providers("cuda", [CPU]) == [CPU]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "CUDA requested but not available" in record.getMessage()
    assert "falling back to CPU" in record.getMessage()
    caplog.clear()
    choose_providers("auto", [CPU])
    assert not caplog.records  # auto on a CPU machine is not worth a warning
