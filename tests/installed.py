"""Distributions' metadata written to disk, as an installer leaves it: real metadata, no code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path where `install_metadata` puts distributions for this test only."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def install_metadata(site: Path, name: str, requires: list[str], direct_url: dict | None = None,
                     version: str = "1.0") -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    lines = "\n".join(f"Requires-Dist: {line}" for line in requires)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{lines}\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
