"""What the fake backend does with fake GPUs: checks them, makes them current, records caps."""

import pytest

from gpuserve.plugin import BackendError, Device, installed_backend
from gpuserve.testing import fake_gpu
from gpuserve_fake_gpu import FakeGpuBackend, applied_memory_caps, current_fake_device


def test_not_viable_without_a_fake_inventory(monkeypatch):
    monkeypatch.delenv("GPUSERVE_FAKE_GPUS", raising=False)
    viability = FakeGpuBackend.viable()
    assert not viability.ok and "GPUSERVE_FAKE_GPUS" in viability.reason


def test_never_chosen_automatically():
    entry = installed_backend("fake-gpu")
    assert entry.cls is FakeGpuBackend and not entry.auto_select


def test_devices_are_the_fake_inventory_and_current_per_thread(fake_gpus):
    fake_gpus([fake_gpu(0), fake_gpu(1)])
    backend = FakeGpuBackend()
    devices = backend.devices()
    assert [d.label for d in devices] == ["cuda:0", "cuda:1"]
    with backend.device_context(devices[1]):
        assert current_fake_device() == devices[1]
    assert current_fake_device() is None


def test_a_gpu_outside_the_inventory_is_an_error(fake_gpus):
    fake_gpus([fake_gpu(0)])
    ghost = Device(index=5, uuid="GPU-00000000-0000-4000-8000-000000000005", name="ghost")
    with pytest.raises(BackendError, match="not visible"):
        FakeGpuBackend().place(object(), ghost)


def test_memory_caps_are_recorded_by_uuid(fake_gpus):
    fake_gpus([fake_gpu(0)])
    backend = FakeGpuBackend()
    [device] = backend.devices()
    backend.limit_memory(device, 0.5)
    assert applied_memory_caps()[device.uuid] == 0.5
    with pytest.raises(BackendError, match="fraction"):
        backend.limit_memory(device, 1.5)


def test_a_process_sees_one_mig_device_as_cuda_would(fake_gpus):
    mig = [{"uuid": f"MIG-0000000{i}-0000-4000-8000-000000000000", "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
            "memory_total": 40 * 2**30, "memory_used": 0} for i in range(2)]
    fake_gpus([fake_gpu(0, "NVIDIA A100-SXM4-80GB", mig=mig), fake_gpu(1)])
    backend = FakeGpuBackend()
    [seen] = backend.devices()
    assert seen.uuid == mig[0]["uuid"] and seen.label == "cuda:0"
    elsewhere = Device(index=1, uuid=mig[1]["uuid"], name="MIG", mig_parent=fake_gpu(0)["uuid"], enumerated=False)
    with pytest.raises(BackendError, match="not visible in this process"):
        backend.place(object(), elsewhere)
