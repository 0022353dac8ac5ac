"""The interface every backend plugin implements.

The core decides *which* devices a replica gets (the planner); a backend knows
*how* its framework uses them. Backends are found through the entry-point
group `gpuserve.backends` (see `gpuserve.registry`); first-party backends use
it exactly as third-party ones do.

A capability a framework lacks raises `CapabilityError`; a backend never runs
work silently on a device other than the one it was given.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import attrs

from gpuserve.devices.device import Device
from gpuserve.errors import CapabilityError


@attrs.frozen
class Viability:
    """Whether a backend can be used in this process, and why not."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> "Viability":
        return cls(True)

    @classmethod
    def no(cls, reason: str) -> "Viability":
        return cls(False, reason)


@attrs.frozen
class MemoryInfo:
    used: int
    total: int


@attrs.frozen
class ImageRequirements:
    """What a container image installs for a backend's framework (`gpuserve build` pins the rest).

    `requirements` are requirement lines ("torch==2.13.0+cu128"); `index_urls`
    the package indexes they come from, beside the default one; `replaces` the
    distributions installed here that these lines stand for: their own
    dependencies are pinned at the versions installed here, they are not.
    """

    requirements: tuple[str, ...] = ()
    index_urls: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()


def host_memory() -> MemoryInfo:
    """This process's resident memory against the machine's RAM."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = page * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[1]) * page
    except OSError:
        import resource

        used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return MemoryInfo(used=used, total=total)


class Backend:
    """Base class of backends. Override what your framework can do.

    Class attributes:
      `name`       the entry-point name users pass to `--backend`;
      `priority`   higher wins when several viable backends are installed;
      `uses_gpus`  False for a backend that only ever runs on the CPU;
      `auto_select` False for a backend used only when named (`--backend`);
      `serves_fake_gpus` True for a backend that runs on the simulated GPUs
                   of a fake inventory (`GPUSERVE_FAKE_GPUS`): with that
                   variable set, only such a backend is chosen for a GPU plan.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    uses_gpus: ClassVar[bool] = True
    auto_select: ClassVar[bool] = True
    serves_fake_gpus: ClassVar[bool] = False

    @classmethod
    def viable(cls) -> Viability:
        """Cheap check (imports at most; never initialises a device)."""
        return Viability.yes()

    # -- container images (`gpuserve build`); package metadata only, never the framework --
    @classmethod
    def cuda_build(cls) -> str | None:
        """The CUDA version the installed framework was built for ("12.8"; "12" where any 12.x fits).

        None for a CPU build, or when the backend cannot tell: a GPU image then
        needs its CUDA version given (`gpuserve build --cuda`).
        """
        return None

    @classmethod
    def image_requirements(cls, cuda: str | None) -> ImageRequirements:
        """What an image installs for the framework: its build for CUDA `cuda`, or for the CPU when None.

        The default: nothing beyond the backend distribution's own
        dependencies, whatever build of the framework they bring.
        """
        return ImageRequirements()

    # -- discovery and visibility -------------------------------------------------
    def devices(self) -> list[Device]:
        """The GPUs this framework can use in this process, in its own ordinals."""
        raise CapabilityError(self.name, "list devices")

    def visibility_env(self, devices: Sequence[Device]) -> dict[str, str]:
        """Environment a child process needs to see exactly `devices`, as 0..k-1.

        UUIDs rather than ordinals: they mean the same thing in every process,
        whatever `CUDA_DEVICE_ORDER` says.
        """
        gpus = [d for d in devices if d.is_gpu]
        return {"CUDA_VISIBLE_DEVICES": ",".join(d.uuid for d in gpus)}

    def limit_visibility(self, devices: Sequence[Device]) -> None:
        """Limit this process to `devices` before the framework initialises.

        The server has already narrowed `CUDA_VISIBLE_DEVICES`; frameworks that
        read it at initialisation need nothing more. Override to check that the
        framework was not initialised too early, or to configure it in-process.
        """

    # -- placement ---------------------------------------------------------------
    def native_device(self, device: Device) -> Any:
        """The framework's own handle for `device` (what `context().device` returns)."""
        return device.label

    def place(self, obj: Any, device: Device) -> Any:
        raise CapabilityError(self.name, f"place an object on {device.label}")

    def distribute(self, model: Any, devices: Sequence[Device]) -> Any:
        if len(devices) == 1:
            return self.place(model, devices[0])
        raise CapabilityError(self.name, f"distribute a model over {len(devices)} devices")

    @contextlib.contextmanager
    def device_context(self, device: Device) -> Iterator[None]:
        """Make `device` current in the calling thread for the duration."""
        if device.is_gpu:
            raise CapabilityError(self.name, f"make {device.label} current")
        yield

    def limit_memory(self, device: Device, fraction: float) -> None:
        """Cap this process's use of `device` to `fraction` of its memory."""
        raise CapabilityError(self.name, f"cap memory on {device.label} to {fraction:.0%}")

    def set_cpu_threads(self, threads: int) -> None:
        """Let the framework's own parallel work on the CPU (intra-op threads) use `threads` threads.

        gpuserve calls it in a replica's process before building a replica on
        the CPU (`--cpu-threads`, by default the cores left to the replicas
        beside the event loop), so that the framework's thread pool does not
        spin against the event loop for the same cores. Plain Python runs one
        thread: by default nothing is done.
        """

    # -- run time ----------------------------------------------------------------
    def memory(self, device: Device) -> MemoryInfo:
        raise CapabilityError(self.name, f"report memory of {device.label}")

    def synchronize(self, device: Device) -> None:
        """Wait for queued work on `device` (no-op where execution is synchronous)."""

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, MemoryError)
