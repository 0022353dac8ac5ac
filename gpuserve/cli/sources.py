"""Copying a source folder without what never belongs in an image or a wheel."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

# Version control, environments, caches and packaging leftovers, at any depth.
IGNORED = (".git", ".hg", ".svn", ".venv*", "venv", ".tox", ".nox", "__pycache__", "*.pyc", ".pytest_cache",
           ".mypy_cache", ".ruff_cache", "*.egg-info", ".ipynb_checkpoints")
# Build outputs, at the top only: deeper down a folder may well be a package named so.
TOP_LEVEL_OUTPUTS = ("build", "dist")


def copy_sources(source: Path, into: Path, exclude: Sequence[str] = (), skip: Path | None = None) -> int:
    """Copy `source` to `into`, leaving out IGNORED, `exclude` patterns and the folder `skip`; files copied."""
    ignore = shutil.ignore_patterns(*IGNORED, *exclude)

    def ignored(folder: str, names: list[str]) -> set[str]:
        left_out = set(ignore(folder, names))
        if Path(folder) == source:
            left_out |= set(TOP_LEVEL_OUTPUTS) & set(names)
        return left_out | {name for name in names if skip is not None and (Path(folder) / name).resolve() == skip}

    shutil.copytree(source, into, ignore=ignored)
    return sum(1 for path in into.rglob("*") if path.is_file())
