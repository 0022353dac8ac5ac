"""How device UUIDs are spelt, and how two spellings are compared.

NVML spells a GPU `GPU-8-4-4-4-12` and a MIG instance `MIG-…`; the CUDA
driver and frameworks hand out 16 raw bytes, or the same text with `GPU-`
for a MIG instance too. Devices are joined by UUID everywhere, so everywhere
compares them through `uuid_key`.
"""

from __future__ import annotations

import uuid as _uuid

UUID_BYTES = 16


def format_uuid(raw: bytes, prefix: str = "GPU-") -> str:
    """NVML's spelling of 16 raw UUID bytes: `GPU-` and 8-4-4-4-12 hex digits."""
    if len(raw) != UUID_BYTES:
        raise ValueError(f"a device UUID is {UUID_BYTES} bytes, got {len(raw)}: {raw!r}")
    return f"{prefix}{_uuid.UUID(bytes=bytes(raw))}"


def uuid_key(uuid: str) -> str:
    """The part of a UUID that names the device, whatever prefix or case it is spelt with."""
    return uuid.split("-", 1)[-1].lower() if uuid[:4].upper() in ("GPU-", "MIG-") else uuid.lower()


def same_device(a: str, b: str) -> bool:
    return uuid_key(a) == uuid_key(b)
