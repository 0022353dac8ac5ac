"""Which TensorFlow an image installs, from the metadata of the TensorFlow installed here."""

from importlib import metadata

import pytest

from gpuserve.plugin import CapabilityError
from gpuserve_tensorflow import TensorFlowBackend
from gpuserve_tensorflow.builds import installed


def test_the_installed_distribution_and_version_are_pinned_for_a_cpu_image():
    name, version = installed()
    assert version == metadata.version(name)
    needs = TensorFlowBackend.image_requirements(None)
    assert needs.requirements == (f"tensorflow-cpu=={version}",)
    assert needs.replaces == (name,) and needs.index_urls == ()


def test_a_gpu_image_installs_tensorflow_with_its_own_cuda_libraries():
    name, version = installed()
    own = TensorFlowBackend.cuda_build()
    if name == "tensorflow-cpu":
        assert own is None  # a CPU build pins no CUDA runtime
    needs = TensorFlowBackend.image_requirements(own or "12")
    assert needs.requirements == (f"tensorflow[and-cuda]=={version}",)
    assert needs.replaces == (name,)


def test_another_cuda_than_tensorflows_own_is_refused():
    own = TensorFlowBackend.cuda_build()
    if own is None:
        pytest.skip("tensorflow-cpu here: the GPU build's CUDA version is not in its metadata")
    other = "11.8" if own != "11.8" else "12.8"
    with pytest.raises(CapabilityError, match=f"built for CUDA {own}"):
        TensorFlowBackend.image_requirements(other)
