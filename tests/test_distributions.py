"""Installed distributions read from their metadata: requirements, CUDA builds, local sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuserve.distributions import cuda_runtime_pinned_by, local_source, requirements_of

ROOT = Path(__file__).resolve().parent.parent


def install_metadata(site: Path, name: str, requires: list[str], direct_url: dict | None = None) -> None:
    """A distribution's metadata on disk, as an installer leaves it (no code needed to read it)."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    lines = "\n".join(f"Requires-Dist: {line}" for line in requires)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{lines}\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_requirements_hold_for_a_linux_image_and_the_extras_asked(site: Path):
    install_metadata(site, "framework", [
        "numpy>=1.22", 'colorama; sys_platform == "win32"', 'triton==3.1; sys_platform == "linux"',
        'nvidia-cuda-runtime-cu12==12.5.82; extra == "and-cuda"'])
    assert [r.name for r in requirements_of("framework")] == ["numpy", "triton"]
    assert [r.name for r in requirements_of("framework", ["and-cuda"])][-1] == "nvidia-cuda-runtime-cu12"


@pytest.mark.parametrize(("requires", "cuda"), [
    (['nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"'], "12.8"),
    (["nvidia-cuda-runtime==13.0.48"], "13.0"),
    (["nvidia-cuda-runtime-cu11>=11.8"], None),  # not a pin: it says no one version
    (["numpy"], None),
])
def test_the_cuda_a_distribution_pins_through_the_runtime_wheel(site: Path, requires: list[str], cuda: str | None):
    install_metadata(site, "framework", requires)
    assert cuda_runtime_pinned_by("framework") == cuda


def test_a_cuda_pin_behind_an_extra_counts_only_with_it(site: Path):
    install_metadata(site, "framework", ['nvidia-cuda-runtime-cu12==12.5.82; extra == "and-cuda"'])
    assert cuda_runtime_pinned_by("framework") is None
    assert cuda_runtime_pinned_by("framework", ["and-cuda"]) == "12.5"
    assert cuda_runtime_pinned_by("not-installed-anywhere") is None


def test_where_a_distribution_was_installed_from(site: Path):
    wheel = site / "wheel-1.0-py3-none-any.whl"
    install_metadata(site, "from-a-wheel", [], {"url": wheel.as_uri(), "archive_info": {}})
    install_metadata(site, "from-an-index", [])
    install_metadata(site, "from-a-url", [], {"url": "https://example.org/x-1.0.tar.gz", "archive_info": {}})
    source = local_source("from-a-wheel")
    assert source is not None and source.path == wheel and source.is_wheel
    assert local_source("from-an-index") is None and local_source("from-a-url") is None
    # This checkout, installed for development (pip install -e .).
    checkout = local_source("gpuserve")
    assert checkout is not None and checkout.path == ROOT and not checkout.is_wheel
