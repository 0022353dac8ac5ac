"""`place`: values are copied to the device; models must already live there."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_models import Affine, batch

from gpuserve.plugin import CapabilityError, Device

from gpuserve_tensorflow import TensorFlowBackend

CPU = Device.cpu(0)
ABSENT = Device(index=63, uuid="GPU-00000000-0000-4000-8000-000000000063", name="absent GPU")


def _device_type(tensor: tf.Tensor) -> str:
    return tf.DeviceSpec.from_string(tensor.device).device_type


@pytest.mark.parametrize("value", [batch(3), [[1.0, 2.0]], tf.constant([1, 2, 3])], ids=["ndarray", "list", "tensor"])
def test_values_are_copied_to_the_device(backend: TensorFlowBackend, value: object) -> None:
    placed = backend.place(value, CPU)
    assert isinstance(placed, tf.Tensor)
    assert _device_type(placed) == "CPU"
    np.testing.assert_array_equal(placed.numpy(), np.asarray(value))


def test_a_model_already_on_the_device_is_returned_as_is(backend: TensorFlowBackend) -> None:
    with backend.device_context(CPU):
        model = Affine()
        variable = tf.Variable(1.0)
    assert backend.place(model, CPU) is model
    assert backend.place(variable, CPU) is variable


def test_a_loaded_saved_model_on_the_device_is_returned_as_is(backend: TensorFlowBackend, tmp_path: Path) -> None:
    module = Affine()
    module.predict = tf.function(module.__call__, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    tf.saved_model.save(module, str(tmp_path))
    with backend.device_context(CPU):
        loaded = tf.saved_model.load(str(tmp_path))
    assert backend.place(loaded, CPU) is loaded
    assert loaded.predict(batch(2)).shape == (2, 2)


def test_a_built_keras_model_on_the_device_is_returned_as_is(backend: TensorFlowBackend) -> None:
    with backend.device_context(CPU):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert backend.place(model, CPU) is model


def test_an_unbuilt_keras_model_is_refused(backend: TensorFlowBackend) -> None:
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(CapabilityError, match="unbuilt Sequential") as info:
        backend.place(model, CPU)
    assert "device_context" in str(info.value)


def test_nothing_is_placed_on_an_absent_gpu(backend: TensorFlowBackend) -> None:
    with pytest.raises(CapabilityError, match="cuda:63"):
        backend.place(batch(2), ABSENT)
    with pytest.raises(CapabilityError, match="cuda:63"):
        backend.place(Affine(), ABSENT)


def test_an_unplaceable_object_is_refused(backend: TensorFlowBackend) -> None:
    with pytest.raises(CapabilityError, match="place a dict on cpu:0"):
        backend.place({"x": 1}, CPU)
