"""The pinned requirements of an image: every distribution a service needs, at the version installed here.

Walked from gpuserve and the backend's distribution through their installed
requirements (markers evaluated for a Linux image), so the image gets what
was tested here. A distribution installed from this machine's disk (a
checkout, editable or not, or a wheel file) has no index to come from: its
wheel goes into the build context.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path

import attrs
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from gpuserve.cli.sources import copy_sources
from gpuserve.distributions import LocalSource, installed_version, local_source, requirements_of
from gpuserve.errors import GpuserveError


class PinError(GpuserveError):
    """A requirement of the image cannot be pinned or its wheel not built."""


@attrs.frozen
class Pins:
    lines: tuple[str, ...]  # "name==version", by name
    unpinned: tuple[str, ...]  # required but not installed here: resolved when the image is built
    local: tuple[tuple[str, str, LocalSource], ...]  # (name, version, source) of those from this disk


def pin(roots: Sequence[tuple[str, Collection[str]]], replaced: Collection[str] = ()) -> Pins:
    """`roots` (distribution, extras) and all they require, pinned as installed.

    A `replaced` distribution installed here has its own requirements pinned,
    whether the roots require it or not (a backend may leave its framework to
    an extra); it is not pinned itself: the caller installs another build of it.
    """
    skip = {canonicalize_name(name) for name in replaced}
    extras_of: dict[str, set[str]] = {}
    names: dict[str, str] = {}
    unpinned: dict[str, str] = {}
    todo = [(name, set(extras)) for name, extras in roots]
    todo += [(name, set()) for name in replaced if installed_version(name) is not None]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in extras_of and extras <= extras_of[key]:
            continue
        extras_of.setdefault(key, set()).update(extras)
        names[key] = name
        for requirement in requirements_of(name, extras_of[key]):
            child = canonicalize_name(requirement.name)
            if installed_version(requirement.name) is None:
                unpinned[child] = _unmarked(requirement)
                continue
            todo.append((requirement.name, set(requirement.extras)))
    lines, local = [], []
    for key in sorted(extras_of):
        if key in skip:
            continue
        version = installed_version(names[key])
        assert version is not None
        extras = f"[{','.join(sorted(extras_of[key]))}]" if extras_of[key] else ""
        lines.append(f"{key}{extras}=={version}")
        source = local_source(names[key])
        if source is not None:
            local.append((key, version, source))
    return Pins(tuple(lines), tuple(unpinned[k] for k in sorted(unpinned) if k not in extras_of), tuple(local))


def _unmarked(requirement: Requirement) -> str:
    """A requirement without its marker: the marker already held for the image."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def gather_wheels(local: Sequence[tuple[str, str, LocalSource]], into: Path) -> list[str]:
    """Wheels of the distributions installed from this disk, in `into`: copied, or built from their source.

    Returns their file names. A source whose version moved on since it was
    installed is an error: the pin would name a wheel that does not exist.
    """
    into.mkdir(parents=True, exist_ok=True)
    sources = []
    for name, version, source in local:
        if source.is_wheel:
            if not source.path.is_file():
                raise PinError(f"{name} {version} was installed from {source.path}, which is gone; reinstall it")
            shutil.copy2(source.path, into / source.path.name)
        else:
            sources.append(source.path)
    if sources:
        _build_wheels(sources, into)
    built: dict[str, tuple[Version, str]] = {}
    for wheel in into.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        built[name] = (version, wheel.name)
    for name, version, source in local:
        found = built.get(name)
        if found is None or found[0] != Version(version):
            raise PinError(
                f"{name} {version} is installed from {source.path}, which now builds "
                f"{'no wheel' if found is None else f'version {found[0]}'}; reinstall it (pip install {source.path})"
            )
    return sorted(name for _, name in built.values())



def _build_wheels(sources: Sequence[Path], into: Path) -> None:
    """Wheels of source folders, built from copies.

    pip builds in the folder it is given: setuptools would leave build/ and
    *.egg-info in the user's checkout (an egg-info there shadows the installed
    metadata for any process started in it), and reuse a stale build/lib.
    """
    with tempfile.TemporaryDirectory(prefix="gpuserve-build-") as scratch:
        copies = []
        for position, source in enumerate(sources):
            copy = Path(scratch) / f"{position}-{source.name}"
            copy_sources(source, copy)
            copies.append(str(copy))
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(into), *copies],
            capture_output=True, text=True, check=False,
        )
    if done.returncode != 0:
        listed = ", ".join(str(source) for source in sources)
        raise PinError(f"cannot build wheels of {listed} (pip wheel):\n{done.stderr.strip()}")
