"""A GPU source read from a JSON file, for machines without the GPUs a test needs.

Set `GPUSERVE_FAKE_GPUS=<path to a JSON file>`. The file holds a list of
GPUs; each is an object with

    name          str   NVML device name, e.g. "NVIDIA H100 80GB HBM3"
    uuid          str   "GPU-" followed by the UUID
    memory_total  int   bytes
    memory_used   int   bytes, at most memory_total
    pci_bus_id    str   "00000000:01:00.0" (or "0000:01:00.0", "01:00.0"), unique
    utilization   int   percent, 0..100
    temperature   int   degrees C (optional)
    mig           list  MIG instances (optional); each an object with
                        uuid ("MIG-…"), name, memory_total, memory_used, and
                        optionally gpu_instance and compute_instance (the ids
                        `MIG-<GPU UUID>/<gi>/<ci>` names). Present means MIG
                        is enabled: CUDA then sees the GPU only as these
                        instances (none, if the list is empty), and one
                        process sees one MIG device (see `visibility`).

The list order stands for the CUDA driver's own order (what the default
`CUDA_DEVICE_ORDER=FASTEST_FIRST` enumerates). NVML indices are given by PCI
bus id order, as NVML numbers real GPUs, so a list not sorted by bus id gives
CUDA ordinals that differ from NVML indices, as on real machines.

Example:

    [
      {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5e3b0c1a-9d2f-4c8e-a1b7-3f6d2e9c0a41",
       "memory_total": 85520809984, "memory_used": 1048576,
       "pci_bus_id": "00000000:1B:00.0", "utilization": 3, "temperature": 34},
      {"name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-0c7d1e2f-3a4b-5c6d-7e8f-9a0b1c2d3e4f",
       "memory_total": 42949672960, "memory_used": 0,
       "pci_bus_id": "00000000:07:00.0", "utilization": 0,
       "mig": [{"uuid": "MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
                "name": "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
                "memory_total": 21474836480, "memory_used": 0}]}
    ]

The records enter the same code that real NVML's do (`inventory.discover`):
visibility, ordering, planning and the `devices` view behave the same.
A file that cannot be read or does not follow this format raises
`FakeInventoryError` naming the path and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gpuserve.devices.source import NvmlGpu
from gpuserve.devices.visibility import pci_key
from gpuserve.errors import GpuserveError

FAKE_GPUS_ENV = "GPUSERVE_FAKE_GPUS"

_GPU_FIELDS = {
    "name": (str, True),
    "uuid": (str, True),
    "memory_total": (int, True),
    "memory_used": (int, True),
    "pci_bus_id": (str, True),
    "utilization": (int, True),
    "temperature": (int, False),
    "mig": (list, False),
}
_JSON_NAMES = {str: "string", int: "integer", list: "list"}
_MIG_FIELDS = {
    "uuid": (str, True),
    "name": (str, True),
    "memory_total": (int, True),
    "memory_used": (int, True),
    "gpu_instance": (int, False),
    "compute_instance": (int, False),
}


class FakeInventoryError(GpuserveError, ValueError):
    """The fake GPU file cannot be read or does not follow the documented format."""


class FakeSource:
    """GPUs listed in a JSON file (format in this module's docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.label = f"fake:{path}"

    def read(self) -> list[NvmlGpu]:
        entries = self._load()
        uuids = [gpu["uuid"] for gpu in entries] + [
            mig["uuid"] for gpu in entries for mig in gpu.get("mig", [])
        ]
        self._require_unique("uuid", uuids, key=str)
        self._require_unique("pci_bus_id", [gpu["pci_bus_id"] for gpu in entries], key=pci_key)
        self._require_unique(
            "GPU uuid/gpu_instance/compute_instance",
            [
                f"{gpu['uuid']}/{mig['gpu_instance']}/{mig['compute_instance']}"
                for gpu in entries
                for mig in gpu.get("mig", [])
                if "gpu_instance" in mig and "compute_instance" in mig
            ],
            key=str.lower,
        )
        by_bus = sorted(range(len(entries)), key=lambda i: pci_key(entries[i]["pci_bus_id"]))
        nvml_index = {position: rank for rank, position in enumerate(by_bus)}
        return [self._gpu(gpu, nvml_index[position]) for position, gpu in enumerate(entries)]

    def driver_order(self, env: Mapping[str, str]) -> list[str] | None:
        return None  # the file's list order stands for the driver's

    def _gpu(self, entry: dict[str, Any], nvml_index: int) -> NvmlGpu:
        mig = tuple(
            NvmlGpu(
                nvml_index=nvml_index,
                uuid=child["uuid"],
                name=child["name"],
                memory_total=child["memory_total"],
                memory_used=child["memory_used"],
                pci_bus_id=entry["pci_bus_id"],
                mig_parent=entry["uuid"],
                gpu_instance=child.get("gpu_instance"),
                compute_instance=child.get("compute_instance"),
            )
            for child in entry.get("mig", [])
        )
        return NvmlGpu(
            nvml_index=nvml_index,
            uuid=entry["uuid"],
            name=entry["name"],
            memory_total=entry["memory_total"],
            memory_used=entry["memory_used"],
            pci_bus_id=entry["pci_bus_id"],
            utilization=entry["utilization"],
            temperature=entry.get("temperature"),
            mig_enabled="mig" in entry,
            mig=mig,
        )

    def _load(self) -> list[dict[str, Any]]:
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except OSError as exc:
            raise self._error(f"cannot read the file: {exc.strerror or exc}") from None
        try:
            entries = json.loads(text)
        except ValueError as exc:
            raise self._error(f"not valid JSON: {exc}") from None
        if not isinstance(entries, list):
            raise self._error(f"must hold a JSON list of GPUs, not {type(entries).__name__}")
        for position, entry in enumerate(entries):
            where = f"GPU {position}"
            self._check(entry, _GPU_FIELDS, where, uuid_prefix="GPU-")
            if not 0 <= entry["utilization"] <= 100:
                raise self._error(f"{where}: utilization={entry['utilization']} is not a percent (0..100)")
            if pci_key(entry["pci_bus_id"]) is None:
                raise self._error(
                    f"{where}: pci_bus_id={entry['pci_bus_id']!r} is not a PCI bus id "
                    f"such as '00000000:01:00.0'"
                )
            for child_position, child in enumerate(entry.get("mig", [])):
                self._check(child, _MIG_FIELDS, f"{where} MIG {child_position}", uuid_prefix="MIG-")
        return entries

    def _check(
        self, entry: Any, fields: Mapping[str, tuple[type, bool]], where: str, uuid_prefix: str
    ) -> None:
        if not isinstance(entry, dict):
            raise self._error(f"{where} must be a JSON object, not {type(entry).__name__}")
        valid = ", ".join(name if required else f"{name} (optional)" for name, (_, required) in fields.items())
        unknown = sorted(set(entry) - set(fields))
        if unknown:
            raise self._error(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; fields: {valid}")
        for name, (kind, required) in fields.items():
            if name not in entry:
                if required:
                    raise self._error(f"{where}: missing field {name!r}; fields: {valid}")
                continue
            value = entry[name]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise self._error(f"{where}: {name}={value!r} should be a JSON {_JSON_NAMES[kind]}")
        if entry["memory_total"] < 0 or not 0 <= entry["memory_used"] <= entry["memory_total"]:
            raise self._error(
                f"{where}: memory_used={entry['memory_used']} and memory_total={entry['memory_total']} "
                f"must satisfy 0 <= memory_used <= memory_total"
            )
        if not entry["uuid"].startswith(uuid_prefix):
            raise self._error(f"{where}: uuid={entry['uuid']!r} should start with {uuid_prefix!r}")

    def _require_unique(self, field: str, values: list[str], key: Callable[[str], Any]) -> None:
        seen = set()
        for value in values:
            if key(value) in seen:
                raise self._error(f"two devices share {field} {value!r}; each must be unique")
            seen.add(key(value))

    def _error(self, problem: str) -> FakeInventoryError:
        return FakeInventoryError(f"{FAKE_GPUS_ENV}={self.path}: {problem}")

