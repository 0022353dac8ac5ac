"""Which torch an image installs, from the metadata of the torch installed here."""

import pytest
import torch

from gpuserve.plugin import CapabilityError
from gpuserve_torch import TorchBackend

PUBLIC = torch.__version__.split("+")[0]
cpu_build = pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU build of torch")


@cpu_build
def test_a_cpu_build_names_no_cuda():
    assert TorchBackend.cuda_build() is None


def test_the_installed_cuda_build_is_read_from_metadata():
    if torch.version.cuda is None:
        pytest.skip("needs a CUDA build of torch")
    assert TorchBackend.cuda_build() == ".".join(torch.version.cuda.split(".")[:2])


def test_a_cpu_image_installs_the_cpu_build_from_pytorchs_index():
    needs = TorchBackend.image_requirements(None)
    assert needs.requirements == (f"torch=={PUBLIC}+cpu",)
    assert needs.index_urls == ("https://download.pytorch.org/whl/cpu",)
    assert needs.replaces == ("torch",)


@cpu_build
def test_a_gpu_image_installs_the_same_version_built_for_the_cuda_asked():
    needs = TorchBackend.image_requirements("12.8")
    assert needs.requirements == (f"torch=={PUBLIC}+cu128",)
    assert needs.index_urls == ("https://download.pytorch.org/whl/cu128",)
    assert TorchBackend.image_requirements("11.8").requirements == (f"torch=={PUBLIC}+cu118",)


def test_a_cuda_major_alone_names_no_torch_build():
    with pytest.raises(CapabilityError, match=r"one build per CUDA minor version: give one, e.g. 12.8"):
        TorchBackend.image_requirements("12")
