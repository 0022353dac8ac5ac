"""The device layer against the hardware itself: NVML beside nvidia-smi, and MIG as the driver enumerates it.

Every test here needs a real NVIDIA GPU (`gpu` marker); `python -m gpuserve
selfcheck` runs them. The driver's own ordinal order is checked in
`test_inventory.py`; the CUDA_VISIBLE_DEVICES forms against torch's view in the
torch backend's suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from gpuserve.devices import FAKE_GPUS_ENV, NvmlSource, discover
from gpuserve.devices.driver import driver_order
from gpuserve.devices.uuids import same_device
from gpuserve.devices.visibility import pci_key


def real_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAKE_GPUS_ENV, "CUDA_VISIBLE_DEVICES")}
    return {**env, **extra}


@pytest.mark.gpu
def test_nvml_facts_agree_with_nvidia_smi() -> None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.skip("nvidia-smi is not on PATH")
    query = ["uuid", "name", "memory.total", "pci.bus_id"]
    done = subprocess.run([smi, f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=True, timeout=60)
    rows = [dict(zip(query, (cell.strip() for cell in line.split(",")))) for line in done.stdout.splitlines()]
    smi_gpus = {row["uuid"]: row for row in rows}
    gpus = NvmlSource().read()
    assert sorted(gpu.uuid for gpu in gpus) == sorted(smi_gpus)
    for gpu in gpus:
        row = smi_gpus[gpu.uuid]
        assert gpu.name == row["name"]
        assert abs(gpu.memory_total // 2**20 - int(row["memory.total"])) <= 1  # nvidia-smi says MiB
        assert pci_key(gpu.pci_bus_id) == pci_key(row["pci.bus_id"])
    # And what `gpuserve devices` lists is among them: each GPU by its UUID, each MIG device under its GPU.
    for device in discover(real_env()).devices:
        assert (device.mig_parent or device.uuid) in smi_gpus


@pytest.mark.gpu
def test_mig_devices_as_the_driver_enumerates_them() -> None:
    migs = [unit for gpu in NvmlSource().read() for unit in gpu.mig]
    if not migs:
        pytest.skip("MIG is not enabled on any GPU here (nvidia-smi -mig 1 and GPU instances enable it)")
    for mig in migs[:2]:
        # A process whose list names one MIG device sees exactly it, as cuda:0.
        seen = driver_order(real_env(CUDA_VISIBLE_DEVICES=mig.uuid))
        assert seen is not None and len(seen) == 1 and same_device(seen[0], mig.uuid)
        inventory = discover(real_env(CUDA_VISIBLE_DEVICES=mig.uuid))
        assert [d.uuid for d in inventory.enumerated] == [mig.uuid]
        if mig.gpu_instance is None or mig.compute_instance is None:
            continue
        # The form of drivers before R470. A later driver may not read it; gpuserve's
        # plan still reaches the device, since a worker is always given its MIG- UUID.
        legacy = f"MIG-{mig.mig_parent}/{mig.gpu_instance}/{mig.compute_instance}"
        by_driver = driver_order(real_env(CUDA_VISIBLE_DEVICES=legacy))
        assert by_driver is not None and len(by_driver) <= 1
        assert all(same_device(uuid, mig.uuid) for uuid in by_driver)
        assert mig.uuid in [d.uuid for d in discover(real_env(CUDA_VISIBLE_DEVICES=legacy)).devices]
    # With every device visible, gpuserve lists every MIG device, enumerated here or not.
    assert {m.uuid for m in migs} <= {d.uuid for d in discover(real_env()).devices}
