"""`Device`: one device as this process sees it, a frozen fact."""

from __future__ import annotations

import attrs


@attrs.frozen
class Device:
    """A GPU (or MIG instance, or virtual CPU device) seen from this process.

    `index` is the CUDA ordinal under this process's visibility (what `cuda:N`
    means here); `nvml_index` is NVML's own numbering, which is a different
    thing. The two are joined by `uuid`, never by position.
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

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def memory_free(self) -> int:
        return max(self.memory_total - self.memory_used, 0)

    @property
    def label(self) -> str:
        """How frameworks spell this device: `cuda:0`, `cpu:1`."""
        return f"{self.kind}:{self.index}"

    def renumbered(self, index: int) -> "Device":
        return attrs.evolve(self, index=index)

    @classmethod
    def cpu(cls, index: int = 0) -> "Device":
        return cls(index=index, uuid=f"CPU-{index}", name="cpu", kind="cpu")
