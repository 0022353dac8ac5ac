"""`Device`: one device as this process sees it, a frozen fact."""

from __future__ import annotations

import attrs


@attrs.frozen
class Device:
    """A GPU (or MIG instance, or virtual CPU device) seen from this process.

    `index` is the CUDA ordinal under this process's visibility (what `cuda:N`
    means here); `nvml_index` is NVML's own numbering, which is a different
    thing. The two are joined by `uuid`, never by position.

    `enumerated` is False for a device `CUDA_VISIBLE_DEVICES` lets this
    process use that CUDA nevertheless does not enumerate beside the others:
    one process sees one MIG device and no plain GPU beside it (see
    `visibility`). Such a device is usable from a worker process of its own,
    where it is `cuda:0`; its `index` only numbers it after the enumerated ones.
    """

    index: int
    uuid: str
    name: str
    kind: str = "cuda"  # "cuda" or "cpu"
    nvml_index: int | None = None
    memory_total: int = 0
    memory_used: int = 0
    pci_bus_id: str = ""
    utilization: int | None = None
    temperature: int | None = None
    mig_parent: str | None = None  # uuid of the parent GPU for a MIG instance
    enumerated: bool = True  # CUDA enumerates it in this process, as cuda:<index>

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def memory_free(self) -> int:
        return max(self.memory_total - self.memory_used, 0)

    @property
    def is_mig(self) -> bool:
        return self.mig_parent is not None

    @property
    def label(self) -> str:
        """How frameworks spell this device: `cuda:0`, `cpu:1`."""
        return f"{self.kind}:{self.index}"

    @property
    def described(self) -> str:
        """`cuda:0 NVIDIA H100 (GPU-…)`; without the ordinal where this process does not enumerate it."""
        if not self.is_gpu:
            return self.label
        return f"{self.label + ' ' if self.enumerated else ''}{self.name} ({self.uuid})"

    def renumbered(self, index: int) -> "Device":
        """As a process whose `CUDA_VISIBLE_DEVICES` lists exactly its group sees it."""
        return attrs.evolve(self, index=index, enumerated=True)

    @classmethod
    def cpu(cls, index: int = 0) -> "Device":
        return cls(index=index, uuid=f"CPU-{index}", name="cpu", kind="cpu")
