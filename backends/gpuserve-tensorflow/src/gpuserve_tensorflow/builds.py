"""Which TensorFlow is installed, and which one an image installs (`gpuserve build`).

`tensorflow-cpu` and `tensorflow` provide the same module. A TensorFlow
release is built for one CUDA version, which its `and-cuda` extra pins through
NVIDIA's runtime wheel (with cuDNN and the rest), so a GPU image installs
`tensorflow[and-cuda]` and its CUDA is TensorFlow's own. Read from package
metadata: TensorFlow is never imported here.
"""

from __future__ import annotations

from importlib import metadata

from gpuserve.plugin import CapabilityError, ImageRequirements, cuda_runtime_pinned_by

DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu")
_INSTALL = "TensorFlow is not installed here: pip install gpuserve-tensorflow[cpu] or gpuserve-tensorflow[gpu]"


def installed() -> tuple[str, str]:
    """The distribution that provides `tensorflow` here, and its version."""
    for name in DISTRIBUTIONS:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    raise CapabilityError("tensorflow", "say which TensorFlow an image needs", _INSTALL)


def cuda_build() -> str | None:
    """The CUDA version of the installed TensorFlow's GPU build; None where only tensorflow-cpu is here."""
    name, _ = installed()
    return cuda_runtime_pinned_by(name, ["and-cuda"]) if name == "tensorflow" else None


def image_requirements(cuda: str | None) -> ImageRequirements:
    name, version = installed()
    if cuda is None:
        return ImageRequirements((f"tensorflow-cpu=={version}",), replaces=(name,))
    own = cuda_build()
    if own is not None and not _same(own, cuda):
        raise CapabilityError("tensorflow", f"run TensorFlow {version} on CUDA {cuda}",
                              f"that release is built for CUDA {own}: use {own}, or another TensorFlow")
    return ImageRequirements((f"tensorflow[and-cuda]=={version}",), replaces=(name,))


def _same(built: str, asked: str) -> bool:
    """Whether `asked` ("12" or "12.5") names the CUDA `built` ("12.5") was made for."""
    return built == asked or ("." not in asked and built.split(".")[0] == asked)
