"""TensorFlow's out-of-memory error is recognised; other errors are not."""

from __future__ import annotations

import tensorflow as tf

from gpuserve_tensorflow import TensorFlowBackend


def test_resource_exhausted_is_out_of_memory(backend: TensorFlowBackend) -> None:
    assert backend.is_out_of_memory(tf.errors.ResourceExhaustedError(None, None, "oom"))


def test_host_memory_error_is_out_of_memory(backend: TensorFlowBackend) -> None:
    assert backend.is_out_of_memory(MemoryError())


def test_other_errors_are_not(backend: TensorFlowBackend) -> None:
    assert not backend.is_out_of_memory(ValueError("bad input"))
    assert not backend.is_out_of_memory(tf.errors.InvalidArgumentError(None, None, "bad shape"))
