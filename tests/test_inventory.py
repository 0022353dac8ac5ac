"""Discovery: fake inventories through GPUSERVE_FAKE_GPUS, and the real NVML path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpuserve.devices import FAKE_GPUS_ENV, Device, FakeInventoryError, discover
from gpuserve.devices.driver import driver_order
from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

GiB = 2**30


def _real_nvml_gpu_count() -> int:
    """Asked of pynvml directly, so the skip does not depend on the code under test."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()


def _real_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != FAKE_GPUS_ENV}


def test_fake_fields_become_devices(tmp_path: Path) -> None:
    path = write_fake_inventory(
        tmp_path / "gpus.json",
        [fake_gpu(0, "Tesla T4", memory_gib=16, used_gib=2, utilization=57, pci_bus=0x3B)],
    )
    inventory = discover({FAKE_GPUS_ENV: path})
    assert inventory.source == f"fake:{path}"
    assert inventory.reason is None
    assert inventory.devices == (
        Device(
            index=0,
            uuid="GPU-00000000-0000-4000-8000-000000000000",
            name="Tesla T4",
            kind="cuda",
            nvml_index=0,
            memory_total=16 * GiB,
            memory_used=2 * GiB,
            pci_bus_id="00000000:3B:00.0",
            utilization=57,
            temperature=30,
        ),
    )
    assert inventory.devices[0].memory_free == 14 * GiB


def test_fake_without_gpus_is_empty_with_reason(tmp_path: Path) -> None:
    inventory = discover({FAKE_GPUS_ENV: write_fake_inventory(tmp_path / "none.json", [])})
    assert inventory.devices == ()
    assert inventory.reason == "no NVIDIA GPU found"


def test_mig_enabled_without_instances_gives_cuda_nothing(tmp_path: Path) -> None:
    path = write_fake_inventory(tmp_path / "gpus.json", [fake_gpu(0, "NVIDIA A100-SXM4-80GB", mig=[])])
    inventory = discover({FAKE_GPUS_ENV: path})
    assert inventory.devices == ()
    assert "NVML reports 1 GPU" in inventory.reason


GOOD = fake_gpu(0)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read the file"),
        ("[{", "not valid JSON"),
        ({"gpus": []}, "must hold a JSON list of GPUs, not dict"),
        ([{k: v for k, v in GOOD.items() if k != "uuid"}], "GPU 0: missing field 'uuid'"),
        ([{**GOOD, "memory_total": "80GiB"}], "GPU 0: memory_total='80GiB' should be a JSON integer"),
        ([{**GOOD, "utilization": True}], "GPU 0: utilization=True should be a JSON integer"),
        ([{**GOOD, "temprature": 30}], "GPU 0: unknown field(s) 'temprature'"),
        ([{**GOOD, "memory_used": GOOD["memory_total"] + 1}], "memory_used <= memory_total"),
        ([{**GOOD, "uuid": "0000-1111"}], "uuid='0000-1111' should start with 'GPU-'"),
        ([{**GOOD, "pci_bus_id": "slot 3"}], "pci_bus_id='slot 3' is not a PCI bus id"),
        ([{**GOOD, "utilization": 150}], "utilization=150 is not a percent"),
        ([GOOD, {**fake_gpu(1), "uuid": GOOD["uuid"]}], "two devices share uuid"),
        ([GOOD, {**fake_gpu(1), "pci_bus_id": "0000:01:00.0"}], "two devices share pci_bus_id"),
        ([{**GOOD, "mig": [{"uuid": "GPU-x", "name": "m", "memory_total": 1, "memory_used": 0}]}],
         "GPU 0 MIG 0: uuid='GPU-x' should start with 'MIG-'"),
    ],
)
def test_bad_fake_file_names_path_and_problem(tmp_path: Path, content: object, problem: str) -> None:
    path = tmp_path / "gpus.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(FakeInventoryError) as caught:
        discover({FAKE_GPUS_ENV: str(path)})
    assert str(caught.value).startswith(f"{FAKE_GPUS_ENV}={path}: ")
    assert problem in str(caught.value)


@pytest.mark.skipif(_real_nvml_gpu_count() > 0, reason="a real GPU is present")
def test_real_nvml_path_without_gpu_is_empty_with_reason() -> None:
    inventory = discover({})
    assert inventory.source == "nvml"
    assert inventory.devices == ()
    # e.g. "NVML library not found (no NVIDIA driver installed)"
    assert re.search(r"NVML|driver|GPU", inventory.reason or "")


# Independent of gpuserve: the driver's own ordinal -> UUID list, read in a child
# process so that this test process never initialises CUDA.
_DRIVER_UUIDS = r"""
import ctypes, json
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
n = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(n)) == 0
out = []
for i in range(n.value):
    dev, raw = ctypes.c_int(), (ctypes.c_ubyte * 16)()
    assert cuda.cuDeviceGet(ctypes.byref(dev), i) == 0
    assert cuda.cuDeviceGetUuid_v2(raw, dev) == 0
    out.append(bytes(raw).hex())
print(json.dumps(out))
"""


@pytest.mark.gpu
def test_real_gpu_inventory_agrees_with_driver_order() -> None:
    env = _real_env()
    inventory = discover(env)
    if not inventory.devices:
        pytest.skip(f"no GPU visible: {inventory.reason}")
    done = subprocess.run([sys.executable, "-c", _DRIVER_UUIDS], env=env, capture_output=True,
                          text=True, check=True, timeout=120)
    driver = json.loads(done.stdout)
    assert [d.uuid.split("-", 1)[1].replace("-", "").lower() for d in inventory.devices] == driver

    import pynvml

    pynvml.nvmlInit()
    try:
        for device in inventory.devices:
            if device.mig_parent is None:  # an NVML index names a whole GPU
                handle = pynvml.nvmlDeviceGetHandleByIndex(device.nvml_index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                assert (uuid.decode() if isinstance(uuid, bytes) else uuid) == device.uuid
    finally:
        pynvml.nvmlShutdown()


def _libcuda_loads() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_libcuda_loads(), reason="a CUDA driver is installed")
def test_driver_order_without_a_cuda_driver_is_unknown() -> None:
    # The child runs and answers; with no driver there is no order to take.
    assert driver_order(_real_env()) is None
