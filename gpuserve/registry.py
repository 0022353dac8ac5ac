"""Backends found through the entry-point group `gpuserve.backends`.

The group is read once. A plugin that fails to import or whose checks raise is
logged and listed as broken; it never stops the others from loading.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import EntryPoint, entry_points

import attrs

from gpuserve.backend import Backend, Viability
from gpuserve.devices import FAKE_GPUS_ENV
from gpuserve.errors import BackendError

BACKENDS_GROUP = "gpuserve.backends"  # name -> a Backend subclass
PLUGINS_GROUP = "gpuserve.plugins"  # name -> setup(app), called with the aiohttp application
log = logging.getLogger(__name__)


@attrs.frozen
class BackendEntry:
    """One registered backend: its class, or why it could not be loaded."""

    name: str
    distribution: str | None
    version: str | None
    cls: type[Backend] | None
    error: str | None = None

    @property
    def priority(self) -> int:
        return self.cls.priority if self.cls is not None else -(2**31)

    @property
    def auto_select(self) -> bool:
        return self.cls is not None and self.cls.auto_select

    @property
    def serves_fake_gpus(self) -> bool:
        return self.cls is not None and self.cls.serves_fake_gpus

    def viability(self) -> Viability:
        if self.cls is None:
            return Viability.no(f"broken plugin: {self.error}")
        try:
            result = self.cls.viable()
        except Exception as exc:  # a plugin's bug must not break the registry
            log.warning("backend %r: viable() raised %s: %s", self.name, type(exc).__name__, exc)
            return Viability.no(f"viable() raised {type(exc).__name__}: {exc}")
        if not isinstance(result, Viability):
            return Viability.no(f"viable() returned {result!r}, expected a gpuserve.plugin.Viability")
        return result


def _load(ep: EntryPoint) -> BackendEntry:
    dist = getattr(ep, "dist", None)
    dist_name = dist.metadata["Name"] if dist is not None else None
    version = dist.version if dist is not None else None
    try:
        cls = ep.load()
    except Exception as exc:
        log.warning("backend plugin %r (%s) failed to load: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
        return BackendEntry(ep.name, dist_name, version, None, f"{type(exc).__name__}: {exc}")
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        error = f"{ep.value} is not a subclass of gpuserve.plugin.Backend"
        log.warning("backend plugin %r: %s", ep.name, error)
        return BackendEntry(ep.name, dist_name, version, None, error)
    return BackendEntry(ep.name, dist_name, version, cls)


class Registry:
    def __init__(self, entries: list[BackendEntry]) -> None:
        self._entries = {e.name: e for e in sorted(entries, key=lambda e: (-e.priority, e.name))}

    @classmethod
    def from_entry_points(cls) -> "Registry":
        seen: dict[str, BackendEntry] = {}
        for ep in entry_points(group=BACKENDS_GROUP):
            if ep.name not in seen:  # the same dist on sys.path twice lists it twice
                seen[ep.name] = _load(ep)
        return cls(list(seen.values()))

    @property
    def entries(self) -> list[BackendEntry]:
        return list(self._entries.values())

    def get(self, name: str) -> BackendEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise BackendError(
                f"backend {name!r} is not installed; installed backends: {sorted(self._entries)}"
            ) from None

    def choose(
        self, requested: str | None, service_default: str | None = None, *, fake_gpus: bool = False
    ) -> BackendEntry:
        """`requested` (CLI/env), else the service's `backend=`, else the best viable one.

        With `fake_gpus` (a fake inventory is set) the best viable one is the
        best that serves fake GPUs: no framework can run on simulated devices.
        """
        name = requested or service_default
        if name:
            entry = self.get(name)
            viability = entry.viability()
            if not viability.ok:
                raise BackendError(f"backend {name!r} cannot be used: {viability.reason}")
            return entry
        reasons = []
        for entry in self.entries:
            if not (entry.serves_fake_gpus if fake_gpus else entry.auto_select):
                continue
            viability = entry.viability()
            if viability.ok:
                return entry
            reasons.append(f"{entry.name}: {viability.reason}")
        if fake_gpus:
            raise BackendError(
                f"{FAKE_GPUS_ENV} is set, so the GPUs are simulated, and no installed backend serves on "
                f"simulated GPUs{': ' if reasons else ''}{'; '.join(reasons)}; pip install gpuserve-fake-gpu "
                f"(it is then chosen, as --backend fake-gpu), or unset {FAKE_GPUS_ENV}"
            )
        raise BackendError("no usable backend; " + "; ".join(reasons or ["none installed"]))


@functools.cache
def default_registry() -> Registry:
    """The registry of this process, read once."""
    return Registry.from_entry_points()


def installed_backends() -> list[BackendEntry]:
    """Every registered backend, loaded afresh, best first (a broken one carries its error)."""
    return Registry.from_entry_points().entries


def installed_backend(name: str) -> BackendEntry:
    """The backend registered as `name`, loaded afresh (as the server would load it)."""
    return Registry.from_entry_points().get(name)
