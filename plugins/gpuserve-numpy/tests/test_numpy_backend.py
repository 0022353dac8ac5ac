"""NumpyBackend on its own: CPU placement, GPU refusals, memory, out-of-memory."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from gpuserve.plugin import CapabilityError, Device

from gpuserve_numpy import NumpyBackend

CPU = Device.cpu(0)
GPU = Device(index=0, uuid="GPU-00000000-0000-4000-8000-000000000000", name="any GPU")


class Layer(NamedTuple):
    weight: np.ndarray
    bias: np.ndarray


@pytest.fixture
def backend() -> NumpyBackend:
    return NumpyBackend()


def test_viable_and_gpu_free(backend: NumpyBackend) -> None:
    assert backend.viable().ok
    assert backend.devices() == []
    assert backend.native_device(CPU) == "cpu"


def test_place_copies_arrays(backend: NumpyBackend) -> None:
    array = np.arange(6.0).reshape(2, 3)
    placed = backend.place(array, CPU)
    np.testing.assert_array_equal(placed, array)
    assert not np.shares_memory(placed, array)


def test_place_copies_arrays_inside_containers(backend: NumpyBackend) -> None:
    model = {"layers": [Layer(np.ones((2, 2)), np.zeros(2))], "name": "tiny", "shape": (2, 2)}
    placed = backend.place(model, CPU)
    layer = placed["layers"][0]
    assert isinstance(layer, Layer)
    assert not np.shares_memory(layer.weight, model["layers"][0].weight)
    assert (placed["name"], placed["shape"]) == ("tiny", (2, 2))


def test_distribute_makes_one_copy_per_cpu_device(backend: NumpyBackend) -> None:
    weights = np.zeros(3)
    copies = backend.distribute(weights, [Device.cpu(0), Device.cpu(1), Device.cpu(2)])
    assert len(copies) == 3
    copies[1][0] = 5.0
    assert copies[0][0] == copies[2][0] == weights[0] == 0.0


def test_distribute_over_nothing_is_an_error(backend: NumpyBackend) -> None:
    with pytest.raises(ValueError, match="at least one device"):
        backend.distribute(np.zeros(1), [])


def test_gpus_are_refused_never_served_on_the_cpu(backend: NumpyBackend) -> None:
    for attempt in (
        lambda: backend.place(np.zeros(1), GPU),
        lambda: backend.distribute(np.zeros(1), [CPU, GPU]),
        lambda: backend.native_device(GPU),
        lambda: backend.memory(GPU),
    ):
        with pytest.raises(CapabilityError, match="on cuda:0: NumPy runs on the CPU only"):
            attempt()
    with pytest.raises(CapabilityError, match="backend 'numpy' cannot make cuda:0 current"):
        backend.device_context(GPU).__enter__()


def test_memory_is_this_process_against_the_machine(backend: NumpyBackend) -> None:
    before = backend.memory(CPU)
    assert 0 < before.used < before.total
    ballast = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched so it is resident
    after = backend.memory(CPU)
    assert after.total == before.total
    assert after.used >= before.used + ballast.nbytes // 2


def test_out_of_memory(backend: NumpyBackend) -> None:
    with pytest.raises(MemoryError) as caught:
        np.empty(2**62, dtype=np.uint8)  # 4 EiB: refused by the allocator at once
    assert type(caught.value) is not MemoryError  # NumPy's own subclass, _ArrayMemoryError
    assert backend.is_out_of_memory(caught.value)
    assert not backend.is_out_of_memory(ValueError("out of memory"))
