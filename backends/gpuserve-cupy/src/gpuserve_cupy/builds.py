"""Which CuPy wheel is installed, and which one an image installs (`gpuserve build`).

CuPy publishes one wheel per CUDA major version (`cupy-cuda12x`, `cupy-cuda13x`),
each working with any minor release of it; a source build (`cupy`) says
nothing. Read from package metadata: CuPy is never imported here.
"""

from __future__ import annotations

import re
from importlib import metadata

from gpuserve.plugin import CapabilityError, ImageRequirements

_WHEEL = re.compile(r"^cupy-cuda(\d+)x$")
_INSTALL = "CuPy is not installed here: pip install gpuserve-cupy[cuda12] (or [cuda13])"


def installed() -> tuple[str, str]:
    """The distribution that provides `cupy` here, and its version."""
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if _WHEEL.match(name) or name == "cupy":
            return name, dist.version
    raise CapabilityError("cupy", "say which CuPy an image needs", _INSTALL)


def cuda_build() -> str | None:
    """The CUDA major version of the installed CuPy wheel ("12"); None for a source build."""
    match = _WHEEL.match(installed()[0])
    return match.group(1) if match else None


def image_requirements(cuda: str | None) -> ImageRequirements:
    name, version = installed()
    major = cuda_build()
    if cuda is not None and major is not None and cuda.split(".")[0] != major:
        wanted = cuda.split(".")[0]
        raise CapabilityError("cupy", f"run {name} on CUDA {cuda}",
                              f"it is built for CUDA {major}: install cupy-cuda{wanted}x (gpuserve-cupy[cuda{wanted}])")
    return ImageRequirements((f"{name}=={version}",), replaces=(name,))
