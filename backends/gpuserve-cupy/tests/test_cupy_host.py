"""What the backend does without a GPU: host placement, refusals, clear errors."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from gpuserve.plugin import BackendError, CapabilityError, Device

from gpuserve_cupy import CupyBackend

CPU = Device.cpu(0)


class Layer(NamedTuple):
    weight: np.ndarray
    bias: np.ndarray


@pytest.fixture
def backend() -> CupyBackend:
    return CupyBackend()


def test_place_on_cpu_returns_a_numpy_copy(backend: CupyBackend) -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    placed = backend.place(array, CPU)
    assert type(placed) is np.ndarray
    np.testing.assert_array_equal(placed, array)
    assert not np.shares_memory(placed, array)


def test_place_on_cpu_keeps_the_structure(backend: CupyBackend) -> None:
    model = {"layers": [Layer(np.ones((2, 2)), np.zeros(2))], "scale": (np.float64(2.0) * np.ones(1),)}
    placed = backend.place(model, CPU)
    assert set(placed) == {"layers", "scale"}
    layer = placed["layers"][0]
    assert isinstance(layer, Layer)
    np.testing.assert_array_equal(layer.weight, np.ones((2, 2)))
    assert isinstance(placed["scale"], tuple)
    np.testing.assert_array_equal(placed["scale"][0], [2.0])


@pytest.mark.parametrize("obj", ["text", 3.5, object(), {"w": [np.ones(2), None]}])
def test_place_refuses_what_is_not_an_array(backend: CupyBackend, obj: object) -> None:
    with pytest.raises(CapabilityError, match="expected a numpy or cupy array"):
        backend.place(obj, CPU)


def test_distribute_over_cpus_makes_one_copy_each(backend: CupyBackend) -> None:
    array = np.arange(4.0)
    copies = backend.distribute(array, [Device.cpu(0), Device.cpu(1)])
    assert len(copies) == 2
    copies[0][0] = 100.0
    np.testing.assert_array_equal(copies[1], array)
    np.testing.assert_array_equal(array, np.arange(4.0))


def test_distribute_over_nothing_is_an_error(backend: CupyBackend) -> None:
    with pytest.raises(BackendError, match="at least one"):
        backend.distribute(np.ones(1), [])


def test_cpu_context_and_synchronize_are_no_ops(backend: CupyBackend) -> None:
    with backend.device_context(CPU):
        pass
    backend.synchronize(CPU)


def test_cpu_memory_is_not_reported(backend: CupyBackend) -> None:
    with pytest.raises(CapabilityError, match="cpu:0"):
        backend.memory(CPU)
    with pytest.raises(CapabilityError, match="cpu:0"):
        backend.limit_memory(CPU, 0.5)


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_limit_memory_rejects_a_bad_fraction(backend: CupyBackend, fraction: float) -> None:
    gpu = Device(index=0, uuid="GPU-0", name="any")
    with pytest.raises(ValueError, match=repr(fraction)):
        backend.limit_memory(gpu, fraction)


def test_a_gpu_that_does_not_exist_is_refused(backend: CupyBackend) -> None:
    # Without a driver the device count itself fails; with one, index 1024 is out of range.
    missing = Device(index=1024, uuid="GPU-missing", name="missing")
    for attempt in (
        lambda: backend.place(np.ones(2), missing),
        lambda: backend.native_device(missing),
        lambda: backend.synchronize(missing),
        lambda: backend.device_context(missing).__enter__(),
    ):
        with pytest.raises(BackendError, match="backend 'cupy'"):
            attempt()
