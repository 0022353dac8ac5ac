"""Kinds of executor: where replicas run, found through the entry-point group `gpuserve.executors`.

A kind is registered as `name = "package.module:KindClass"`. gpuserve itself
registers `thread` and `process` (replicas on this machine, planned on its
devices); other distributions add more (`gpuserve-ray`: replicas as Ray
actors). `--executors NAME` chooses one; every kind's executors are driven
by the same batcher through the same pool leases.
"""

from __future__ import annotations

import abc
from collections.abc import MutableMapping
from importlib.metadata import entry_points
from typing import ClassVar

import attrs

from gpuserve.backend import Backend
from gpuserve.devices.device import Device
from gpuserve.errors import DeclarationError
from gpuserve.executors.base import Executor
from gpuserve.service import ServiceSpec
from gpuserve.settings import Settings

EXECUTORS_GROUP = "gpuserve.executors"  # name -> an ExecutorKind subclass


@attrs.frozen
class Target:
    """What a kind is asked to run: `workers` replicas of a service, with a chosen backend."""

    spec: ServiceSpec
    service_ref: str  # `MODULE:ATTR`, to import the service wherever a replica runs
    backend: Backend
    settings: Settings
    environ: MutableMapping[str, str]  # this process's environment (a local kind may narrow it)

    @property
    def workers(self) -> int:
        return self.settings.workers or self.spec.workers


class ExecutorKind(abc.ABC):
    """Plans a service's replicas and makes their executors.

    `__init__` takes the `Target`; `plan()` runs once before the server
    listens (it may block: connect to a cluster, read its resources) and raises
    `PlanError` when the replicas cannot fit; `executors()` makes one executor
    per replica, not yet started; `close()` runs once they have all stopped.
    """

    name: ClassVar[str] = ""

    def __init__(self, target: Target) -> None:
        self.target = target

    @abc.abstractmethod
    def plan(self) -> list[str]:
        """Decide where the replicas go; lines that describe the plan, for the log."""

    @abc.abstractmethod
    def executors(self) -> list[Executor]:
        """One executor per planned replica, not started."""

    def local_gpus(self) -> tuple[Device, ...]:
        """GPUs of this machine that the replicas use (the server reports them at `/metrics`)."""
        return ()

    def close(self) -> None:
        """Release what the kind holds (a cluster connection); every executor has stopped."""


def installed_kinds() -> dict[str, str]:
    """Every registered kind: name -> where it is defined (`module:Class`)."""
    return {ep.name: ep.value for ep in entry_points(group=EXECUTORS_GROUP)}


def load_kind(name: str) -> type[ExecutorKind]:
    """The kind registered as `name`; an error naming the installed ones when it is not there or broken."""
    found = [ep for ep in entry_points(group=EXECUTORS_GROUP) if ep.name == name]
    if not found:
        installed = ", ".join(sorted(installed_kinds())) or "none"
        hint = " (pip install gpuserve-ray)" if name == "ray" else ""
        raise DeclarationError(f"executors={name!r} is not installed{hint}; installed kinds: {installed}")
    try:
        cls = found[0].load()
    except Exception as exc:
        raise DeclarationError(
            f"executor kind {name!r} ({found[0].value}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, ExecutorKind)):
        raise DeclarationError(f"executor kind {name!r}: {found[0].value} is not a gpuserve.plugin.ExecutorKind")
    return cls

