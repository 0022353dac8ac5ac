"""Installed distributions, read from their metadata: versions, requirements, where they came from.

What `gpuserve build` pins into an image, and what a backend reads to tell
which build of its framework is installed, without importing anything.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import attrs
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# NVIDIA's CUDA runtime wheel, which CUDA builds of torch, TensorFlow and JAX pin
# to their CUDA version: nvidia-cuda-runtime-cu12==12.8.90 is CUDA 12.8.
_CUDA_RUNTIME = re.compile(r"^nvidia-cuda-runtime(-cu\d+)?$")
_CUDA_VERSION = re.compile(r"^(\d+)\.(\d+)")


def image_environment() -> dict[str, str]:
    """Marker values for a Linux image running this Python on this machine's architecture."""
    env = default_environment()
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix",
               platform_machine=platform.machine())
    return env


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def requirements_of(name: str, extras: Iterable[str] = (),
                    environment: Mapping[str, str] | None = None) -> list[Requirement]:
    """What installed distribution `name` (with `extras`) requires where `environment` holds (default: an image)."""
    env = dict(environment or image_environment())
    wanted = {""} | {canonicalize_name(extra) for extra in extras}
    found = []
    for line in metadata.distribution(name).requires or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue  # a distribution's own malformed metadata is not ours to reject
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**env, "extra": extra}) for extra in wanted):
            found.append(requirement)
    return found


def cuda_runtime_pinned_by(name: str, extras: Iterable[str] = ()) -> str | None:
    """The CUDA version ("12.8") that installed `name` pins through NVIDIA's CUDA runtime wheel, if it does."""
    if installed_version(name) is None:
        return None
    for requirement in requirements_of(name, extras):
        if _CUDA_RUNTIME.match(canonicalize_name(requirement.name)):
            for spec in requirement.specifier:
                match = _CUDA_VERSION.match(spec.version)
                if spec.operator in ("==", "===", "~=") and match:
                    return f"{match.group(1)}.{match.group(2)}"
    return None


@attrs.frozen
class LocalSource:
    """Where an installed distribution came from, when that was this machine's disk (PEP 610)."""

    path: Path
    is_wheel: bool  # a wheel file; otherwise a source directory (a checkout, editable or not)


def local_source(name: str) -> LocalSource | None:
    """The local directory or wheel file `name` was installed from; None for an index or a remote URL.

    Only an installer writes `direct_url.json`; a `*.egg-info` that a build left
    in the current folder (which is on `sys.path` first) has none, and is skipped.
    """
    raw = next((text for dist in metadata.distributions(name=name) if (text := dist.read_text("direct_url.json"))),
               None)
    if raw is None:
        return None
    try:
        direct = json.loads(raw)
    except ValueError:
        return None
    url = urlparse(direct.get("url", ""))
    if url.scheme != "file":
        return None
    path = Path(unquote(url.path))
    if "dir_info" in direct:
        return LocalSource(path, is_wheel=False)
    if "archive_info" in direct and path.suffix == ".whl":
        return LocalSource(path, is_wheel=True)
    return None


def python_version() -> str:
    """This interpreter's major.minor: the Python an image gets, so that the pins made here hold there."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"
