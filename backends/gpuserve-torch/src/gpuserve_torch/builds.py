"""Which build of torch is installed, and which one an image installs (`gpuserve build`).

PyTorch publishes one build per CUDA minor version, named by a local version
label (`2.13.0+cu128`, `2.13.0+cpu`) on its own index; the build on the default
index carries no label and pins NVIDIA's CUDA runtime wheel instead. Read
from package metadata: torch is never imported here.
"""

from __future__ import annotations

import re

from gpuserve.plugin import CapabilityError, ImageRequirements, cuda_runtime_pinned_by

INDEX = "https://download.pytorch.org/whl"
_CUDA_LABEL = re.compile(r"^cu(\d+)(\d)$")  # cu128 -> CUDA 12.8, cu118 -> 11.8


def installed() -> str:
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        raise CapabilityError("torch", "say which torch an image needs",
                              "torch is not installed here: pip install gpuserve-torch") from None


def cuda_of(version: str) -> str | None:
    """The CUDA version of torch `version` as installed here; None for a CPU (or ROCm) build."""
    _, _, label = version.partition("+")
    if not label:
        return cuda_runtime_pinned_by("torch")
    match = _CUDA_LABEL.match(label)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def label_for(cuda: str) -> str:
    """The local version label of torch's build for CUDA `cuda` ("12.8" -> "cu128")."""
    major, _, minor = cuda.partition(".")
    if not minor:
        raise CapabilityError("torch", f"pick a build for CUDA {cuda}",
                              f"PyTorch publishes one build per CUDA minor version: give one, e.g. {major}.8")
    return f"cu{major}{minor}"


def image_requirements(cuda: str | None) -> ImageRequirements:
    version = installed()
    public, _, label = version.partition("+")
    if cuda is not None and cuda_of(version) == cuda:
        # The build installed here: the same wheel, from where it came.
        return ImageRequirements((f"torch=={version}",), (f"{INDEX}/{label}",) if label else (), ("torch",))
    wanted = "cpu" if cuda is None else label_for(cuda)
    return ImageRequirements((f"torch=={public}+{wanted}",), (f"{INDEX}/{wanted}",), ("torch",))
