"""`distribute`: a builder mirrored with MirroredStrategy; a call splits the batch and joins the rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_models import Affine, batch

from gpuserve.plugin import CapabilityError, Device

from gpuserve_tensorflow import Mirrored, TensorFlowBackend

CPU = Device.cpu(0)
ABSENT = Device(index=63, uuid="GPU-00000000-0000-4000-8000-000000000063", name="absent GPU")


def test_a_builder_is_mirrored_over_the_host(backend: TensorFlowBackend) -> None:
    mirrored = backend.distribute(Affine, [CPU])
    assert isinstance(mirrored, Mirrored)
    assert isinstance(mirrored.strategy, tf.distribute.MirroredStrategy)
    assert [tf.DeviceSpec.from_string(d).device_type for d in mirrored.devices] == ["CPU"]
    x = batch(5)
    with tf.device("/CPU:0"):  # where a GPU is, the plain model would use it and round differently
        want = Affine()(x)
    np.testing.assert_allclose(mirrored(x).numpy(), want.numpy(), rtol=1e-6)


def test_a_keras_builder_gives_what_its_model_gives(backend: TensorFlowBackend) -> None:
    mirrored = backend.distribute(lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), [CPU])
    x = batch(7)
    with tf.device("/CPU:0"):
        want = mirrored.model(x)
    np.testing.assert_allclose(mirrored(x).numpy(), want.numpy(), rtol=1e-6)


def test_cpu_devices_are_one_host_device(backend: TensorFlowBackend) -> None:
    mirrored = backend.distribute(Affine, [Device.cpu(0), Device.cpu(1)])
    assert mirrored.strategy.num_replicas_in_sync == 1


def test_a_built_model_on_one_device_is_placed(backend: TensorFlowBackend) -> None:
    with backend.device_context(CPU):
        model = Affine()
    assert backend.distribute(model, [CPU]) is model


def test_no_device_or_an_absent_one_is_an_error(backend: TensorFlowBackend) -> None:
    with pytest.raises(ValueError, match="at least one device"):
        backend.distribute(Affine, [])
    with pytest.raises(CapabilityError, match="cuda:63"):
        backend.distribute(Affine, [CPU, ABSENT])


def test_inputs_must_share_the_batch_dimension(backend: TensorFlowBackend) -> None:
    mirrored = backend.distribute(Affine, [CPU])
    with pytest.raises(ValueError, match=r"\(3, 4\), \(2, 4\)"):
        mirrored(batch(3), batch(2))
    with pytest.raises(TypeError, match="without inputs"):
        mirrored()


def test_two_replicas_split_and_rejoin_the_batch(fresh_python: Callable[[str], str]) -> None:
    """Two logical host devices stand in for two GPUs (configured before TensorFlow initialises)."""
    out = fresh_python(
        f"""
        import sys, tempfile
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        import tensorflow as tf

        host = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(host, [tf.config.LogicalDeviceConfiguration()] * 2)

        import keras
        from tf_models import Affine, batch
        from gpuserve.devices import Device
        from gpuserve.errors import CapabilityError
        from gpuserve_tensorflow import Mirrored, TensorFlowBackend

        class Heads(Affine):
            def __call__(self, x):
                y = super().__call__(x)
                return {{"y": y, "row_sum": tf.reduce_sum(x, axis=1)}}

        strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
        with strategy.scope():
            mirrored = Mirrored(strategy, Heads())
        assert len(mirrored.devices) == 2
        with tf.device("/CPU:0"):
            plain = Heads()
        for rows in (8, 5, 1):
            x = batch(rows)
            with tf.device("/CPU:0"):
                want = plain(x)
            got = mirrored(x)
            for key in ("y", "row_sum"):
                np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-6)

        with strategy.scope():
            dense = Mirrored(strategy, keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
        with tf.device("/CPU:0"):
            want = dense.model(batch(5))
        np.testing.assert_allclose(dense(batch(5)).numpy(), want.numpy(), rtol=1e-6)

        # A model built on another device is refused, not silently used there.
        saved = tempfile.mkdtemp()
        tf.saved_model.save(Affine(), saved)
        with tf.device("/CPU:1"):
            elsewhere = [
                Affine(),
                keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]),
                tf.saved_model.load(saved),
            ]
        for model in elsewhere:
            try:
                TensorFlowBackend().place(model, Device.cpu(0))
            except CapabilityError as exc:
                assert "CPU:1" in str(exc) and "device_context" in str(exc), exc
            else:
                raise AssertionError(f"place() accepted a {{type(model).__name__}} living on /CPU:1")
        print("ok")
        """
    )
    assert out.strip().endswith("ok")
