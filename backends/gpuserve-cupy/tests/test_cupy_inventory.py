"""Device descriptions built from the runtime's device properties."""

from __future__ import annotations

from typing import Any


from gpuserve_cupy.inventory import describe, pci_bus_id

UUID = bytes(range(16))
SPELLED = "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"


def props(uuid: bytes) -> dict[str, Any]:
    return {
        "name": b"NVIDIA H100 80GB HBM3",
        "totalGlobalMem": 85_000_000_000,
        "pciDomainID": 0,
        "pciBusID": 0x3B,
        "pciDeviceID": 0,
        "uuid": uuid,
    }


def no_driver(ordinal: int) -> bytes:
    raise AssertionError(f"the driver was asked for device {ordinal}'s UUID")


def test_pci_bus_id_is_spelled_as_nvml_does() -> None:
    assert pci_bus_id(props(UUID)) == "00000000:3B:00.0"


def test_describe() -> None:
    device = describe(2, props(UUID), no_driver)
    assert (device.index, device.uuid, device.kind) == (2, SPELLED, "cuda")
    assert device.name == "NVIDIA H100 80GB HBM3"
    assert device.memory_total == 85_000_000_000
    assert device.pci_bus_id == "00000000:3B:00.0"


def test_describe_ignores_bytes_past_the_uuid() -> None:
    assert describe(0, props(UUID + b"\x07\x07"), no_driver).uuid == SPELLED


def test_describe_asks_the_driver_for_a_uuid_cut_at_a_zero_byte() -> None:
    cut = bytes([0xAB, 0xCD])  # the C string stopped at the third byte, a zero
    asked: list[int] = []

    def driver_uuid(ordinal: int) -> bytes:
        asked.append(ordinal)
        return UUID

    assert describe(1, props(cut), driver_uuid).uuid == SPELLED
    assert asked == [1]
