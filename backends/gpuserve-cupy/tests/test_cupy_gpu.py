"""On real CUDA devices (skipped where CuPy has none)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest

from gpuserve.plugin import BackendError, Device

from gpuserve_cupy import CupyBackend

pytestmark = pytest.mark.gpu


@pytest.fixture
def backend() -> CupyBackend:
    return CupyBackend()


@pytest.fixture
def gpus(backend: CupyBackend) -> list[Device]:
    return backend.devices()


@pytest.fixture
def cupy() -> Iterator[ModuleType]:
    import cupy

    yield cupy
    for ordinal in range(cupy.cuda.runtime.getDeviceCount()):
        with cupy.cuda.Device(ordinal):
            cupy.get_default_memory_pool().set_limit(size=0)  # 0: no limit, as before the test
            cupy.get_default_memory_pool().free_all_blocks()


def test_viable(backend: CupyBackend) -> None:
    assert backend.viable().ok


def test_devices(cupy: ModuleType, gpus: list[Device]) -> None:
    assert [d.index for d in gpus] == list(range(cupy.cuda.runtime.getDeviceCount()))
    for device in gpus:
        assert device.is_gpu and device.uuid.startswith("GPU-") and len(device.uuid) == 40
        assert device.memory_total > 0 and device.name
    assert len({d.uuid for d in gpus}) == len(gpus)


def test_place_on_each_gpu(cupy: ModuleType, backend: CupyBackend, gpus: list[Device]) -> None:
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    for device in gpus:
        placed = backend.place({"w": host, "b": [host[0]]}, device)
        assert isinstance(placed["w"], cupy.ndarray) and placed["w"].device.id == device.index
        assert placed["b"][0].device.id == device.index
        np.testing.assert_array_equal(cupy.asnumpy(placed["w"]), host)


def test_place_back_on_the_host(cupy: ModuleType, backend: CupyBackend, gpus: list[Device]) -> None:
    on_gpu = backend.place(np.arange(5.0), gpus[0])
    back = backend.place(on_gpu, Device.cpu(0))
    assert type(back) is np.ndarray
    np.testing.assert_array_equal(back, np.arange(5.0))


def test_distribute_makes_one_copy_per_device(
    cupy: ModuleType, backend: CupyBackend, gpus: list[Device],
) -> None:
    source = backend.place(np.ones(3), gpus[0])
    copies = backend.distribute(source, gpus)
    assert [c.device.id for c in copies] == [d.index for d in gpus]
    copies[0][0] = 7.0
    assert float(source[0]) == 1.0  # a copy, even on the source's own device


def test_device_context_makes_the_device_current(
    cupy: ModuleType, backend: CupyBackend, gpus: list[Device],
) -> None:
    for device in gpus:
        with backend.device_context(device):
            assert cupy.cuda.Device().id == device.index
            assert cupy.zeros(1).device.id == device.index
        assert backend.native_device(device).id == device.index
        backend.synchronize(device)


def test_a_gpu_past_the_last_is_refused(backend: CupyBackend, gpus: list[Device]) -> None:
    missing = Device(index=len(gpus), uuid="GPU-missing", name="missing")
    with pytest.raises(BackendError, match=f"no device cuda:{len(gpus)}: this process sees {len(gpus)}"):
        backend.place(np.ones(1), missing)


def test_memory(backend: CupyBackend, gpus: list[Device]) -> None:
    for device in gpus:
        info = backend.memory(device)
        assert info.total == device.memory_total
        assert 0 < info.used <= info.total  # a context alone takes some


def test_limit_memory_caps_the_pool(cupy: ModuleType, backend: CupyBackend, gpus: list[Device]) -> None:
    device = gpus[0]
    backend.limit_memory(device, 0.25)
    with cupy.cuda.Device(device.index):
        limit = cupy.get_default_memory_pool().get_limit()
        assert abs(limit - device.memory_total * 0.25) <= 1024 * 1024
        with pytest.raises(cupy.cuda.memory.OutOfMemoryError) as caught:
            cupy.empty(limit + 1024 * 1024, dtype=np.uint8)
    assert backend.is_out_of_memory(caught.value)


def test_a_huge_allocation_is_out_of_memory(
    cupy: ModuleType, backend: CupyBackend, gpus: list[Device],
) -> None:
    huge = gpus[0].memory_total * 4
    with cupy.cuda.Device(gpus[0].index):
        with pytest.raises(cupy.cuda.memory.OutOfMemoryError) as from_pool:
            cupy.empty(huge, dtype=np.uint8)
        with pytest.raises(cupy.cuda.runtime.CUDARuntimeError) as from_runtime:
            cupy.cuda.runtime.malloc(huge)
    assert backend.is_out_of_memory(from_pool.value)
    assert backend.is_out_of_memory(from_runtime.value)
