"""Exceptions gpuserve raises. Each message names the bad value and what would be valid."""

from __future__ import annotations


class GpuserveError(Exception):
    """Base of every gpuserve error."""


class DeclarationError(GpuserveError, ValueError):
    """A `@service` or `@api` declaration (or its resources) is invalid."""


class PlanError(GpuserveError):
    """The requested resources cannot be placed on the devices that exist."""


class BackendError(GpuserveError):
    """A backend cannot be found, loaded or used."""


class CapabilityError(BackendError, NotImplementedError):
    """A backend was asked for something its framework cannot do."""

    def __init__(self, backend: str, capability: str, hint: str = "") -> None:
        message = f"backend {backend!r} cannot {capability}"
        super().__init__(f"{message}: {hint}" if hint else message)
