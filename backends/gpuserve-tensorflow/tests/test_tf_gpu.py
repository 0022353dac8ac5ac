"""Real GPUs: placement, mirroring over two GPUs, visibility and memory limits.

Skipped where TensorFlow sees no GPU (see conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tf_models import Affine, batch

from gpuserve.plugin import CapabilityError, Device

from gpuserve_tensorflow import Mirrored, TensorFlowBackend

pytestmark = pytest.mark.gpu
TESTS = str(Path(__file__).parent)


def _on(device: str, device_type: str, index: int) -> bool:
    spec = tf.DeviceSpec.from_string(device)
    return spec.device_type == device_type and spec.device_index == index


@pytest.fixture(scope="module")
def gpus(backend: TensorFlowBackend) -> list[Device]:
    return backend.devices()


@pytest.fixture(scope="module")
def two_gpus(gpus: list[Device]) -> list[Device]:
    if len(gpus) < 2:
        pytest.skip(f"needs two GPUs; TensorFlow sees {len(gpus)}")
    return gpus[:2]


def test_devices_are_named_by_the_inventory(gpus: list[Device]) -> None:
    assert [d.index for d in gpus] == list(range(len(tf.config.list_physical_devices("GPU"))))
    for device in gpus:
        assert device.uuid.startswith(("GPU-", "MIG-")), device
        assert device.memory_total > 0, device


def test_device_context_runs_ops_on_the_gpu(backend: TensorFlowBackend, gpus: list[Device]) -> None:
    with backend.device_context(gpus[0]):
        y = tf.constant([1.0, 2.0]) * 2
        model = Affine()
    assert _on(y.device, "GPU", 0)
    assert _on(model.w.device, "GPU", 0)
    assert backend.place(model, gpus[0]) is model


def test_values_are_copied_to_the_gpu(backend: TensorFlowBackend, gpus: list[Device]) -> None:
    placed = backend.place(batch(3), gpus[-1])
    assert _on(placed.device, "GPU", len(gpus) - 1)
    np.testing.assert_array_equal(placed.numpy(), batch(3))


def test_a_model_on_the_host_is_not_moved_silently(backend: TensorFlowBackend, gpus: list[Device]) -> None:
    with tf.device("/CPU:0"):
        model = Affine()
    with pytest.raises(CapabilityError, match="variable"):
        backend.place(model, gpus[0])


def test_mirrored_over_two_gpus_matches_the_plain_model(backend: TensorFlowBackend, two_gpus: list[Device]) -> None:
    mirrored = backend.distribute(Affine, two_gpus)
    assert isinstance(mirrored, Mirrored)
    assert [_on(d, "GPU", i) for i, d in enumerate(mirrored.devices)] == [True, True]
    with tf.device("/CPU:0"):
        plain = Affine()
    for rows in (9, 1):
        x = batch(rows)
        with tf.device("/CPU:0"):
            want = plain(x)
        # TensorFloat-32 matmuls on recent GPUs keep 10 mantissa bits.
        np.testing.assert_allclose(mirrored(x).numpy(), want.numpy(), rtol=1e-2, atol=1e-2)


def test_a_built_model_cannot_be_mirrored(backend: TensorFlowBackend, two_gpus: list[Device]) -> None:
    with backend.device_context(two_gpus[0]):
        model = Affine()
    with pytest.raises(CapabilityError, match="builds the model"):
        backend.distribute(model, two_gpus)


def test_one_visible_gpu_with_a_memory_limit(fresh_python: Callable[[str], str]) -> None:
    out = fresh_python(
        f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import tensorflow as tf
        from tf_models import Affine, batch
        from gpuserve.errors import CapabilityError
        from gpuserve_tensorflow import TensorFlowBackend

        backend = TensorFlowBackend()
        gpus = backend.devices()
        last = gpus[-1]
        backend.limit_visibility([last])
        backend.limit_memory(last, 0.25)
        assert backend.native_device(last) == "/GPU:0"  # the only visible GPU
        assert len(tf.config.list_logical_devices("GPU")) == 1
        for hidden in gpus[:-1]:
            try:
                backend.native_device(hidden)
            except CapabilityError as exc:
                assert "hidden" in str(exc), exc
            else:
                raise AssertionError(f"{{hidden.label}} is hidden but got a TensorFlow name")

        with backend.device_context(last):
            model = Affine()
            y = model(batch(4))
        info = backend.memory(last)
        assert info.total == int(0.25 * last.memory_total / 2**20) * 2**20, info
        assert 0 < info.used <= info.total, info
        backend.synchronize(last)
        backend.limit_memory(last, 0.25)  # the same limit again is no change
        print("ok")
        """
    )
    assert out.strip().endswith("ok")


def test_limit_visibility_sets_memory_growth(fresh_python: Callable[[str], str]) -> None:
    out = fresh_python(
        """
        import tensorflow as tf
        from gpuserve_tensorflow import TensorFlowBackend

        backend = TensorFlowBackend()
        gpus = backend.devices()
        backend.limit_visibility(gpus)
        assert all(tf.config.experimental.get_memory_growth(g) for g in tf.config.list_physical_devices("GPU"))
        assert len(tf.config.list_logical_devices("GPU")) == len(gpus)
        print("ok")
        """
    )
    assert out.strip().endswith("ok")
