"""Visibility is configured before TensorFlow initialises; each check runs in a fresh interpreter."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def test_limit_visibility_before_and_after_initialisation(fresh_python: Callable[[str], str]) -> None:
    out = fresh_python(
        """
        import tensorflow as tf
        from gpuserve.devices import Device
        from gpuserve.errors import BackendError, CapabilityError
        from gpuserve_tensorflow import TensorFlowBackend

        backend = TensorFlowBackend()
        gpus = tf.config.list_physical_devices("GPU")
        backend.limit_visibility([Device.cpu(0)])  # a CPU plan: no GPU for TensorFlow
        assert tf.config.get_visible_devices("GPU") == []
        assert tf.config.list_logical_devices("GPU") == []  # initialises TensorFlow

        backend.limit_visibility([])  # asking for what already holds is fine, even now
        try:
            backend.limit_visibility([Device(index=0, uuid="GPU-0", name="GPU")])
        except CapabilityError as exc:  # no GPU at all: the device does not exist
            assert not gpus and "cuda:0" in str(exc) and "TensorFlow sees no GPU" in str(exc), exc
        except BackendError as exc:  # a GPU, but TensorFlow is initialised: too late to show it
            assert gpus and "before the first TensorFlow op" in str(exc) and "cuda:0" in str(exc), exc
        else:
            raise AssertionError("limit_visibility() changed nothing and said nothing")
        print("ok")
        """
    )
    assert out.strip().endswith("ok")


@pytest.mark.gpu
def test_limit_visibility_after_initialisation_is_a_clear_error(fresh_python: Callable[[str], str]) -> None:
    out = fresh_python(
        """
        import tensorflow as tf
        from gpuserve.errors import BackendError
        from gpuserve_tensorflow import TensorFlowBackend

        backend = TensorFlowBackend()
        tf.constant(1.0) + 1  # TensorFlow initialises with every GPU visible
        try:
            backend.limit_visibility([])
        except BackendError as exc:
            assert "already initialised" in str(exc) and "before the first TensorFlow op" in str(exc), exc
        else:
            raise AssertionError("limit_visibility() after initialisation did not raise")
        print("ok")
        """
    )
    assert out.strip().endswith("ok")


def test_cpu_threads_before_and_after_initialisation(fresh_python: Callable[[str], str]) -> None:
    out = fresh_python(
        """
        import tensorflow as tf
        from gpuserve.errors import BackendError
        from gpuserve_tensorflow import TensorFlowBackend

        backend = TensorFlowBackend()
        backend.set_cpu_threads(1)
        assert tf.config.threading.get_intra_op_parallelism_threads() == 1
        tf.constant(1.0) + 1  # TensorFlow initialises
        backend.set_cpu_threads(1)  # what already holds is fine, even now
        try:
            backend.set_cpu_threads(2)
        except BackendError as exc:
            assert "intra-op threads (2 wanted)" in str(exc) and "--cpu-threads 0" in str(exc), exc
        else:
            raise AssertionError("set_cpu_threads() after initialisation changed nothing and said nothing")
        print("ok")
        """
    )
    assert out.strip().endswith("ok")
