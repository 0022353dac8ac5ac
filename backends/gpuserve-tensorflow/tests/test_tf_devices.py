"""Device naming, existence checks, memory and synchronisation on a CPU-only TensorFlow."""

from __future__ import annotations

import pytest
import tensorflow as tf

from gpuserve.plugin import BackendError, CapabilityError, Device

from gpuserve_tensorflow import TensorFlowBackend

ABSENT = Device(index=63, uuid="GPU-00000000-0000-4000-8000-000000000063", name="absent GPU")
needs_no_gpu = pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="checks the CPU-only case; TensorFlow sees a GPU here"
)


@needs_no_gpu
def test_no_gpu_devices_on_a_cpu_only_tensorflow(backend: TensorFlowBackend) -> None:
    assert backend.devices() == []


def test_cpu_devices_are_the_host_device(backend: TensorFlowBackend) -> None:
    assert backend.native_device(Device.cpu(0)) == "/CPU:0"
    assert backend.native_device(Device.cpu(1)) == "/CPU:0"


def test_an_absent_gpu_is_named_in_the_error(backend: TensorFlowBackend) -> None:
    with pytest.raises(CapabilityError, match=r"cuda:63") as info:
        backend.native_device(ABSENT)
    assert "TensorFlow sees" in str(info.value)


def test_device_context_runs_ops_on_the_host(backend: TensorFlowBackend) -> None:
    with backend.device_context(Device.cpu(0)):
        y = tf.constant([1.0, 2.0]) * 2
        v = tf.Variable([0.0])
    assert tf.DeviceSpec.from_string(y.device).device_type == "CPU"
    assert tf.DeviceSpec.from_string(v.device).device_type == "CPU"


def test_device_context_refuses_an_absent_gpu_instead_of_soft_placing(backend: TensorFlowBackend) -> None:
    with pytest.raises(CapabilityError, match=r"cuda:63"):
        with backend.device_context(ABSENT):
            pytest.fail("the body must not run")


def test_host_memory_is_the_process_rss(backend: TensorFlowBackend) -> None:
    info = backend.memory(Device.cpu(0))
    assert 0 < info.used < info.total


def test_memory_of_an_absent_gpu_is_an_error(backend: TensorFlowBackend) -> None:
    with pytest.raises(CapabilityError):
        backend.memory(ABSENT)


def test_synchronize(backend: TensorFlowBackend) -> None:
    backend.synchronize(Device.cpu(0))
    with pytest.raises(CapabilityError):
        backend.synchronize(ABSENT)


def test_limit_memory_is_for_gpus_only(backend: TensorFlowBackend) -> None:
    with pytest.raises(CapabilityError, match="cpu:0"):
        backend.limit_memory(Device.cpu(0), 0.5)
    with pytest.raises(ValueError, match="1.5"):
        backend.limit_memory(ABSENT, 1.5)


def test_visibility_env_names_gpus_by_uuid(backend: TensorFlowBackend) -> None:
    assert backend.visibility_env([ABSENT, Device.cpu(0)]) == {"CUDA_VISIBLE_DEVICES": ABSENT.uuid}


def test_visibility_env_refuses_a_gpu_without_a_known_uuid(backend: TensorFlowBackend) -> None:
    unnamed = Device(index=0, uuid="tensorflow-gpu-0-uuid-unknown", name="GPU")
    with pytest.raises(BackendError, match="cuda:0"):
        backend.visibility_env([unnamed])
