"""CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, exactly as CUDA applies them.

Every test runs the real discovery path on a fake inventory. The machine:

    list (driver) order   uuid prefix   PCI bus   NVML index
    0  A  H100            GPU-aaaa1111  3B        2
    1  B  H100            GPU-aaaa2222  1B        1
    2  C  L4              GPU-cccc3333  5E        3
    3  D  A100, MIG on    GPU-dddd4444  07        0   instances MIG-eeee5555, MIG-ffff6666

so CUDA (FASTEST_FIRST) enumerates A, B, C, MIG-e, MIG-f, while PCI_BUS_ID
order is MIG-e, MIG-f, B, A, C.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuserve.devices import FAKE_GPUS_ENV, Inventory, discover, select_visible
from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

A = "GPU-aaaa1111-0000-4000-8000-000000000001"
B = "GPU-aaaa2222-0000-4000-8000-000000000002"
C = "GPU-cccc3333-0000-4000-8000-000000000003"
D = "GPU-dddd4444-0000-4000-8000-000000000004"
MIG_E = "MIG-eeee5555-0000-4000-8000-000000000005"
MIG_F = "MIG-ffff6666-0000-4000-8000-000000000006"


def _mig(uuid: str, memory_gib: int) -> dict:
    return {"uuid": uuid, "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
            "memory_total": memory_gib * 2**30, "memory_used": 0}


@pytest.fixture
def machine(tmp_path: Path) -> str:
    return write_fake_inventory(
        tmp_path / "gpus.json",
        [
            fake_gpu(1, uuid=A, pci_bus=0x3B, memory_gib=80),
            fake_gpu(2, uuid=B, pci_bus=0x1B, memory_gib=81),
            fake_gpu(3, "NVIDIA L4", uuid=C, pci_bus=0x5E, memory_gib=22),
            fake_gpu(4, "NVIDIA A100-SXM4-80GB", uuid=D, pci_bus=0x07,
                     mig=[_mig(MIG_E, 40), _mig(MIG_F, 39)]),
        ],
    )


def visible(machine: str, **env: str) -> Inventory:
    return discover({FAKE_GPUS_ENV: machine, **env})


def uuids(inventory: Inventory) -> list[str]:
    assert [d.index for d in inventory.devices] == list(range(len(inventory.devices)))
    return [d.uuid for d in inventory.devices]


def test_unset_means_all(machine: str) -> None:
    assert uuids(visible(machine)) == [A, B, C, MIG_E, MIG_F]


def test_empty_means_no_devices(machine: str) -> None:
    inventory = visible(machine, CUDA_VISIBLE_DEVICES="")
    assert inventory.devices == ()
    assert inventory.reason == "CUDA_VISIBLE_DEVICES is empty"


def test_ordinal_list_selects_in_the_order_given(machine: str) -> None:
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="2,0")) == [C, A]


def test_full_uuid_selects_that_gpu(machine: str) -> None:
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES=f"{C},{B}")) == [C, B]


def test_unique_uuid_prefix_selects_that_gpu(machine: str) -> None:
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="GPU-cccc,GPU-aaaa2")) == [C, B]


def test_ambiguous_prefix_stops_the_list(machine: str) -> None:
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="2,GPU-aaaa,0")) == [C]
    inventory = visible(machine, CUDA_VISIBLE_DEVICES="GPU-aaaa")
    assert inventory.devices == ()
    assert "ambiguous" in inventory.reason and A in inventory.reason and B in inventory.reason


def test_mig_ids_select_mig_instances(machine: str) -> None:
    inventory = visible(machine, CUDA_VISIBLE_DEVICES=f"MIG-ffff,{MIG_E},1")
    assert uuids(inventory) == [MIG_F, MIG_E, B]
    assert inventory.devices[0].mig_parent == D
    assert inventory.devices[0].memory_total == 39 * 2**30


def test_mig_enabled_gpu_is_enumerated_as_its_instances(machine: str) -> None:
    assert D not in uuids(visible(machine))
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="3,4")) == [MIG_E, MIG_F]


def test_list_stops_at_first_invalid_entry(machine: str) -> None:
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="1,9,0")) == [B]
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="1,GPU-0bad,0")) == [B]
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="1,cuda:0,0")) == [B]
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="1,-1,0")) == [B]


def test_invalid_first_entry_gives_no_devices_and_says_why(machine: str) -> None:
    inventory = visible(machine, CUDA_VISIBLE_DEVICES="9,0")
    assert inventory.devices == ()
    assert "'9'" in inventory.reason and "0..4" in inventory.reason


def test_duplicates_are_invalid(machine: str) -> None:
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="0,2,0,1")) == [A, C]
    # The same device by UUID and by ordinal is a repeat too.
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="GPU-aaaa1,0,1")) == [A]


def test_pci_bus_id_order(machine: str) -> None:
    assert uuids(visible(machine, CUDA_DEVICE_ORDER="PCI_BUS_ID")) == [MIG_E, MIG_F, B, A, C]


def test_ordinals_count_in_pci_bus_id_order(machine: str) -> None:
    assert uuids(visible(machine, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES="2,3")) == [B, A]


def test_fastest_first_is_fake_list_order(machine: str) -> None:
    assert uuids(visible(machine, CUDA_DEVICE_ORDER="FASTEST_FIRST")) == [A, B, C, MIG_E, MIG_F]
    # CUDA treats an unknown order as the default.
    assert uuids(visible(machine, CUDA_DEVICE_ORDER="SLOWEST_FIRST")) == [A, B, C, MIG_E, MIG_F]


def test_ordinal_maps_to_nvml_by_uuid_not_index(machine: str) -> None:
    inventory = visible(machine, CUDA_VISIBLE_DEVICES="2,0")
    first, second = inventory.devices
    # cuda:0 is C, which NVML numbers 3; cuda:1 is A, NVML index 2.
    assert (first.uuid, first.nvml_index, first.name, first.pci_bus_id) == (
        C, 3, "NVIDIA L4", "00000000:5E:00.0")
    assert first.memory_total == 22 * 2**30
    assert (second.uuid, second.nvml_index, second.memory_total) == (A, 2, 80 * 2**30)
    # And NVML index 0 (the MIG GPU) is not what cuda:0 means.
    assert visible(machine).devices[0].nvml_index == 2


def test_select_visible_rules_on_plain_uuids() -> None:
    devices = ["GPU-1a", "GPU-1b", "GPU-2c"]
    assert select_visible(None, devices).positions == (0, 1, 2)
    assert select_visible("", devices).positions == ()
    assert select_visible("2,0", devices).positions == (2, 0)
    stopped = select_visible("GPU-2,GPU-1,0", devices)
    assert stopped.positions == (2,)
    assert "ambiguous" in stopped.stopped and "'GPU-1'" in stopped.stopped
