"""Which CuPy wheel an image installs, from the metadata of the one installed here."""

import re

import pytest

from gpuserve.plugin import CapabilityError
from gpuserve_cupy import CupyBackend
from gpuserve_cupy.builds import installed


def test_the_wheel_names_its_cuda_major_version():
    name, _ = installed()
    wheel = re.fullmatch(r"cupy-cuda(\d+)x", name)
    assert CupyBackend.cuda_build() == (wheel.group(1) if wheel else None)


def test_an_image_installs_the_same_wheel_for_any_minor_version_of_its_cuda():
    name, version = installed()
    major = CupyBackend.cuda_build() or "12"
    for cuda in (major, f"{major}.4", None):
        needs = CupyBackend.image_requirements(cuda)
        assert needs.requirements == (f"{name}=={version}",) and needs.replaces == (name,)


def test_another_cuda_major_version_names_the_wheel_to_install():
    major = CupyBackend.cuda_build()
    if major is None:
        pytest.skip("a source build of CuPy names no CUDA version")
    other = "13" if major != "13" else "12"
    with pytest.raises(CapabilityError, match=f"install cupy-cuda{other}x"):
        CupyBackend.image_requirements(f"{other}.0")
