"""CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, exactly as CUDA applies them.

Every test runs the real discovery path on a fake inventory. The plain machine:

    list (driver) order   uuid prefix   PCI bus   NVML index
    0  A  H100            GPU-aaaa1111  3B        2
    1  B  H100            GPU-aaaa2222  1B        1
    2  C  L4              GPU-cccc3333  5E        3
    3  D  A100            GPU-dddd4444  07        0

so CUDA (FASTEST_FIRST) enumerates A, B, C, D, while PCI_BUS_ID order is D, B, A, C.
The MIG machine is A and B, then D with MIG on and instances MIG-eeee5555
(GPU instance 1) and MIG-ffff6666 (GPU instance 2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpuserve.devices import FAKE_GPUS_ENV, Inventory, NvmlGpu, discover, select_visible
from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

A = "GPU-aaaa1111-0000-4000-8000-000000000001"
B = "GPU-aaaa2222-0000-4000-8000-000000000002"
C = "GPU-cccc3333-0000-4000-8000-000000000003"
D = "GPU-dddd4444-0000-4000-8000-000000000004"
MIG_E = "MIG-eeee5555-0000-4000-8000-000000000005"
MIG_F = "MIG-ffff6666-0000-4000-8000-000000000006"
FAKE_GPUS_MD = Path(__file__).resolve().parent.parent / "gpuserve" / "testing" / "FAKE_GPUS.md"


def _mig(uuid: str, memory_gib: int, gpu_instance: int) -> dict:
    return {"uuid": uuid, "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb", "memory_total": memory_gib * 2**30,
            "memory_used": 0, "gpu_instance": gpu_instance, "compute_instance": 0}


@pytest.fixture
def machine(tmp_path: Path) -> str:
    return write_fake_inventory(
        tmp_path / "gpus.json",
        [
            fake_gpu(1, uuid=A, pci_bus=0x3B, memory_gib=80),
            fake_gpu(2, uuid=B, pci_bus=0x1B, memory_gib=81),
            fake_gpu(3, "NVIDIA L4", uuid=C, pci_bus=0x5E, memory_gib=22),
            fake_gpu(4, "NVIDIA A100-SXM4-80GB", uuid=D, pci_bus=0x07),
        ],
    )


@pytest.fixture
def mig_machine(tmp_path: Path) -> str:
    return write_fake_inventory(
        tmp_path / "mig.json",
        [
            fake_gpu(1, uuid=A, pci_bus=0x3B),
            fake_gpu(2, uuid=B, pci_bus=0x1B),
            fake_gpu(4, "NVIDIA A100-SXM4-80GB", uuid=D, pci_bus=0x07,
                     mig=[_mig(MIG_E, 40, gpu_instance=1), _mig(MIG_F, 39, gpu_instance=2)]),
        ],
    )


def visible(machine: str, **env: str) -> Inventory:
    return discover({FAKE_GPUS_ENV: machine, **env})


def uuids(inventory: Inventory) -> list[str]:
    assert [d.index for d in inventory.devices] == list(range(len(inventory.devices)))
    return [d.uuid for d in inventory.devices]


def test_unset_means_all(machine: str) -> None:
    inventory = visible(machine)
    assert uuids(inventory) == [A, B, C, D]
    assert inventory.enumerated == inventory.devices and inventory.cut_short is None


def test_empty_means_no_devices(machine: str) -> None:
    inventory = visible(machine, CUDA_VISIBLE_DEVICES="")
    assert inventory.devices == ()
    assert inventory.reason == "CUDA_VISIBLE_DEVICES is empty"
    assert inventory.cut_short is None


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


def test_list_stops_at_first_invalid_entry(machine: str) -> None:
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="1,9,0")) == [B]
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="1,GPU-0bad,0")) == [B]
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="1,cuda:0,0")) == [B]
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="1,-1,0")) == [B]


@pytest.mark.parametrize(
    ("value", "entry", "why", "counts"),
    [
        ("0,7,1", "'7'", "no device has ordinal 7 (ordinals are 0..3)", "only '0' counts"),
        ("2,GPU-aaaa,0", "'GPU-aaaa'", f"ambiguous, it is a prefix of {A}, {B}", "only '2' counts"),
        ("0,2,0,1", "'0'", f"{A} is already listed", "only '0', '2' count"),
        ("GPU-0bad,1", "'GPU-0bad'", "no device has that UUID", "no device is visible"),
    ],
)
def test_a_cut_short_list_names_the_entry_where_cuda_stops_and_why(
    machine: str, value: str, entry: str, why: str, counts: str
) -> None:
    said = visible(machine, CUDA_VISIBLE_DEVICES=value).cut_short
    assert said.startswith(f"CUDA_VISIBLE_DEVICES={value!r} is cut short: CUDA stops at entry {entry} ({why}")
    assert said.endswith(counts)


def test_invalid_first_entry_gives_no_devices_and_says_why(machine: str) -> None:
    inventory = visible(machine, CUDA_VISIBLE_DEVICES="9,0")
    assert inventory.devices == ()
    assert "'9'" in inventory.reason and "0..3" in inventory.reason


def test_duplicates_are_invalid(machine: str) -> None:
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="0,2,0,1")) == [A, C]
    # The same device by UUID and by ordinal is a repeat too.
    assert uuids(visible(machine, CUDA_VISIBLE_DEVICES="GPU-aaaa1,0,1")) == [A]


def test_pci_bus_id_order(machine: str) -> None:
    assert uuids(visible(machine, CUDA_DEVICE_ORDER="PCI_BUS_ID")) == [D, B, A, C]


def test_ordinals_count_in_pci_bus_id_order(machine: str) -> None:
    assert uuids(visible(machine, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES="1,2")) == [B, A]


def test_fastest_first_is_fake_list_order(machine: str) -> None:
    assert uuids(visible(machine, CUDA_DEVICE_ORDER="FASTEST_FIRST")) == [A, B, C, D]
    # CUDA treats an unknown order as the default.
    assert uuids(visible(machine, CUDA_DEVICE_ORDER="SLOWEST_FIRST")) == [A, B, C, D]


def test_ordinal_maps_to_nvml_by_uuid_not_index(machine: str) -> None:
    inventory = visible(machine, CUDA_VISIBLE_DEVICES="2,0")
    first, second = inventory.devices
    # cuda:0 is C, which NVML numbers 3; cuda:1 is A, NVML index 2.
    assert (first.uuid, first.nvml_index, first.name, first.pci_bus_id) == (
        C, 3, "NVIDIA L4", "00000000:5E:00.0")
    assert first.memory_total == 22 * 2**30
    assert (second.uuid, second.nvml_index, second.memory_total) == (A, 2, 80 * 2**30)
    # And NVML index 0 (D, first by bus id) is not what cuda:0 means.
    assert visible(machine).devices[0].nvml_index == 2


# -- MIG: one MIG device per CUDA process, no plain GPU beside it (MIG user guide) ----------------
def enumerated(inventory: Inventory) -> list[str]:
    return [d.uuid for d in inventory.enumerated]


def test_one_process_enumerates_only_the_first_mig_device(mig_machine: str) -> None:
    inventory = visible(mig_machine)
    # CUDA order is A, B, MIG-e, MIG-f; a process sees MIG-e alone, as cuda:0.
    assert enumerated(inventory) == [MIG_E]
    assert inventory.devices[0].label == "cuda:0" and inventory.devices[0].mig_parent == D
    # The rest stay usable from worker processes of their own, listed after it, in list order.
    assert uuids(inventory) == [MIG_E, A, B, MIG_F]
    assert [d.enumerated for d in inventory.devices] == [True, False, False, False]
    assert inventory.devices[3].described == f"NVIDIA A100-SXM4-80GB MIG 3g.40gb ({MIG_F})"
    assert inventory.devices[0].described == f"cuda:0 NVIDIA A100-SXM4-80GB MIG 3g.40gb ({MIG_E})"


def test_plain_gpus_listed_beside_a_mig_device_are_not_enumerated(mig_machine: str) -> None:
    inventory = visible(mig_machine, CUDA_VISIBLE_DEVICES=f"0,{MIG_F},1")
    assert enumerated(inventory) == [MIG_F]
    assert uuids(inventory) == [MIG_F, A, B]
    # Without a MIG device in the list, plain GPUs are enumerated as usual.
    assert enumerated(visible(mig_machine, CUDA_VISIBLE_DEVICES="1,0")) == [B, A]


def test_a_mig_enabled_gpu_is_enumerated_as_its_instances(mig_machine: str) -> None:
    inventory = visible(mig_machine, CUDA_VISIBLE_DEVICES="MIG-ffff")
    assert uuids(inventory) == [MIG_F] and enumerated(inventory) == [MIG_F]
    assert inventory.devices[0].memory_total == 39 * 2**30
    assert uuids(visible(mig_machine, CUDA_VISIBLE_DEVICES="2,3")) == [MIG_E, MIG_F]
    # The parent itself is not a CUDA device once MIG is on.
    assert "no device has that UUID" in visible(mig_machine, CUDA_VISIBLE_DEVICES=D).reason


def test_the_mig_form_of_drivers_before_r470_names_gpu_and_instance_ids(mig_machine: str) -> None:
    assert uuids(visible(mig_machine, CUDA_VISIBLE_DEVICES=f"MIG-{D}/2/0")) == [MIG_F]
    assert uuids(visible(mig_machine, CUDA_VISIBLE_DEVICES=f"mig-{D.lower()}/1/0")) == [MIG_E]
    said = visible(mig_machine, CUDA_VISIBLE_DEVICES=f"MIG-{D}/2/0,MIG-{D}/3/0").cut_short
    assert f"entry 'MIG-{D}/3/0' (no MIG device has that GPU and instance ids" in said
    assert f"MIG-{D}/1/0, MIG-{D}/2/0" in said


def test_select_visible_rules_on_plain_uuids() -> None:
    devices = [NvmlGpu(i, uuid, "gpu", 1, 0, f"0:{i}:0.0") for i, uuid in enumerate(["GPU-1a", "GPU-1b", "GPU-2c"])]
    assert select_visible(None, devices).positions == (0, 1, 2)
    assert select_visible("", devices).positions == ()
    assert select_visible("2,0", devices).positions == (2, 0)
    stopped = select_visible("GPU-2,GPU-1,0", devices)
    assert stopped.positions == (2,)
    assert "ambiguous" in stopped.stopped and "'GPU-1'" in stopped.stopped


def test_the_fake_inventory_docs_example_says_what_discovery_does(tmp_path: Path) -> None:
    text = FAKE_GPUS_MD.read_text()
    example = json.loads(re.search(r"```json\n(.*?)```", text, re.DOTALL).group(1))
    inventory = visible(write_fake_inventory(tmp_path / "example.json", example))
    h100, a100 = example
    # As FAKE_GPUS.md says: one process sees only the MIG instance; the H100 follows, for a worker of its own.
    assert enumerated(inventory) == [a100["mig"][0]["uuid"]]
    assert uuids(inventory) == [a100["mig"][0]["uuid"], h100["uuid"]]
    assert "cuda:0` is the A100's MIG instance" in text and "H100 is not enumerated" in text
    path = str(tmp_path / "example.json")
    for value, order, shown in (("GPU-5e3b", None, h100["uuid"]), ("0", None, h100["uuid"]),
                                ("0", "PCI_BUS_ID", a100["mig"][0]["uuid"]),
                                (f"MIG-{a100['uuid']}/1/0", None, a100["mig"][0]["uuid"])):
        env = {"CUDA_VISIBLE_DEVICES": value, **({"CUDA_DEVICE_ORDER": order} if order else {})}
        assert f"`{value}`" in text or f"CUDA_VISIBLE_DEVICES={value}`" in text
        assert uuids(visible(path, **env)) == [shown]
