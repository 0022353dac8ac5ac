"""Installed distributions read from their metadata: requirements, CUDA builds, local sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuserve.distributions import cuda_runtime_pinned_by, local_source, requirements_of
from installed import install_metadata, site  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent


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
    # This checkout, installed for development (pip install -e .), even with a build's leftover
    # metadata (no direct_url.json) found first on sys.path.
    (site / "gpuserve.egg-info").mkdir()
    (site / "gpuserve.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: gpuserve\nVersion: 0.1.0\n")
    checkout = local_source("gpuserve")
    assert checkout is not None and checkout.path == ROOT and not checkout.is_wheel
