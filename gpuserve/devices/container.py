"""Inside a container: what the NVIDIA container runtime exposed, and what gpuserve sees because of it.

The NVIDIA Container Toolkit reads `NVIDIA_VISIBLE_DEVICES` once, when it
creates a container (`docker run --gpus` sets it; Kubernetes' device plugin
sets it to the UUIDs of the GPUs it allocated), and mounts only those devices.
Inside, NVML and CUDA see just them, numbered from 0, so the inventory is
already right: the variable must never be applied a second time (its indices
are the host's). What this module adds is the explanation, where a user needs
one:

- `all`: every GPU of the host; `none`: no GPU, but the driver's libraries
  and tools; `void`, or empty: the runtime does nothing (no GPU, no driver);
- a comma-separated list of host GPU indices (as the host's `nvidia-smi`
  numbers them), `GPU-` UUIDs, MIG devices as `GPU:MIG` indices or `MIG-`
  UUIDs;
- a path (`/var/run/nvidia-container-devices`): Kubernetes' device plugin
  passed the devices as volume mounts instead.

Outside a container (or under another runtime) the variable does nothing at
all; gpuserve says so when it sees more GPUs than the variable lists.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from gpuserve.devices.inventory import Inventory, discover

NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
_REMEDY = "start the container with --gpus all or --gpus '\"device=0,1\"', or give the pod an nvidia.com/gpu limit"


@attrs.frozen
class Exposure:
    """A value of `NVIDIA_VISIBLE_DEVICES`, as the NVIDIA container runtime reads it."""

    value: str
    kind: str  # "all", "none", "void", "list" or "mounts"
    entries: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Exposure:
        word = value.strip().lower()
        if word in ("all", "none"):
            return cls(value, word)
        if word in ("", "void"):
            return cls(value, "void")
        if word.startswith("/"):
            return cls(value, "mounts")
        return cls(value, "list", tuple(entry.strip() for entry in value.split(",") if entry.strip()))

    @property
    def spelt(self) -> str:
        return f"{NVIDIA_VISIBLE_DEVICES}={self.value!r}"

    def does_not_cover(self, seen: Inventory) -> str | None:
        """How `seen` (this process's GPUs, before CUDA_VISIBLE_DEVICES) shows the runtime did not apply this.

        None when it may have: a container only ever sees what the runtime exposed.
        """
        if not seen.devices or self.kind in ("all", "mounts"):
            return None
        if self.kind in ("none", "void"):
            return f"it asks for no GPU, yet {len(seen.devices)} GPU(s) are visible"
        if all(entry.lower().startswith(("gpu-", "mig-")) for entry in self.entries):
            prefixes = [_uuid_prefix(entry) for entry in self.entries]
            unlisted = [
                device.uuid for device in seen.devices
                if not any(key.lower().startswith(prefix) for prefix in prefixes
                           for key in (device.uuid, device.mig_parent or device.uuid))
            ]
            if unlisted:
                return f"it does not list {', '.join(unlisted)}, yet {'it is' if len(unlisted) == 1 else 'they are'} visible"
            return None
        physical = {device.mig_parent or device.uuid for device in seen.devices}
        if len(physical) > len(self.entries):
            return f"it lists {len(self.entries)} device(s), yet {len(physical)} GPUs are visible"
        return None


def _uuid_prefix(entry: str) -> str:
    """What a listed UUID matches: itself, or for the old `MIG-GPU-<uuid>/<gi>/<ci>` form its parent GPU."""
    entry = entry.lower()
    return entry[len("mig-"):].split("/")[0] if entry.startswith("mig-gpu-") else entry


@attrs.frozen
class InContainer:
    """The inventory, explained by what the container runtime was asked to expose."""

    inventory: Inventory  # an empty one's reason says what the runtime did
    note: str | None = None  # what NVIDIA_VISIBLE_DEVICES did for the visible GPUs; None when unset or none
    ignored: bool = False  # the variable cannot have acted on this process: the note is a warning


def exposure(env: Mapping[str, str]) -> Exposure | None:
    value = env.get(NVIDIA_VISIBLE_DEVICES)
    return None if value is None else Exposure.parse(value)


def in_container(inventory: Inventory, env: Mapping[str, str]) -> InContainer:
    """`inventory` (discovered under `env`) with what `NVIDIA_VISIBLE_DEVICES` in `env` tells about it."""
    asked = exposure(env)
    if asked is None:
        return InContainer(inventory)
    narrowed = env.get("CUDA_VISIBLE_DEVICES") is not None
    # What the runtime left visible, before CUDA_VISIBLE_DEVICES narrows it further.
    seen = discover({k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}) if narrowed else inventory
    contradiction = asked.does_not_cover(seen)
    if contradiction is not None:
        note = (
            f"{asked.spelt} has not acted here: {contradiction}. The NVIDIA container runtime applies it when "
            f"it creates a container; outside one, or under another runtime, it selects nothing. "
            f"Limit the GPUs gpuserve uses with CUDA_VISIBLE_DEVICES instead"
        )
        return InContainer(inventory, note, ignored=True)
    if inventory.devices:
        return InContainer(inventory, _what_was_exposed(asked, seen))
    return InContainer(attrs.evolve(inventory, reason=f"{inventory.reason}; {_why_none(asked, seen)}"))


def _what_was_exposed(asked: Exposure, seen: Inventory) -> str:
    what = {
        "all": "every GPU of the host",
        "list": f"{len(asked.entries)} device(s)",
        "mounts": "the devices Kubernetes' device plugin mounted",
    }[asked.kind]
    return (
        f"{asked.spelt}: the container runtime exposed {what}, numbered 0..{len(seen.devices) - 1} in here; "
        f"cuda:N and CUDA_VISIBLE_DEVICES count these, not the host's indices"
    )


def _why_none(asked: Exposure, seen: Inventory) -> str:
    if seen.devices:
        last = len(seen.devices) - 1
        return (
            f"inside this container the GPUs {asked.spelt} exposed are numbered 0..{last}: CUDA_VISIBLE_DEVICES "
            f"counts those (or names them by UUID), not the host's indices"
        )
    if asked.kind == "none":
        return f"the container runtime exposed no GPU to this container ({asked.spelt}): {_REMEDY}"
    if asked.kind == "void":
        return f"{asked.spelt} asks the container runtime for no GPU and no driver: {_REMEDY}"
    return (
        f"{asked.spelt} asks for GPUs, but none reached this container: it was not started by the NVIDIA "
        f"container runtime (the NVIDIA Container Toolkit, or Kubernetes' NVIDIA device plugin); {_REMEDY}"
    )
