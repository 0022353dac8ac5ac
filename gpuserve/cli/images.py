"""Base images for `gpuserve build`: a CUDA runtime matching the framework's build, or a slim Python.

The image runs the Python that the requirements were pinned with (this
interpreter's major.minor). NVIDIA's CUDA images carry no Python, so a
standalone CPython is put into them with uv, whose image is only mounted while
that runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from gpuserve.cli.templates import render
from gpuserve.errors import DeclarationError

# nvidia/cuda runtime tags, one per CUDA minor version: its latest patch
# release. CUDA 12.6 and later on Ubuntu 24.04, earlier ones on 22.04.
CUDA_RUNTIMES: Mapping[str, str] = {
    "11.8": "11.8.0-runtime-ubuntu22.04",
    "12.1": "12.1.1-runtime-ubuntu22.04",
    "12.2": "12.2.2-runtime-ubuntu22.04",
    "12.3": "12.3.2-runtime-ubuntu22.04",
    "12.4": "12.4.1-runtime-ubuntu22.04",
    "12.5": "12.5.1-runtime-ubuntu22.04",
    "12.6": "12.6.3-runtime-ubuntu24.04",
    "12.8": "12.8.1-runtime-ubuntu24.04",
    "12.9": "12.9.1-runtime-ubuntu24.04",
    "13.0": "13.0.1-runtime-ubuntu24.04",
}
UV_IMAGE = "ghcr.io/astral-sh/uv:0.11.7"


@attrs.frozen
class BaseImage:
    """Where an image starts: the `FROM` lines and what puts Python at /opt/venv."""

    image: str
    cuda: str | None  # the CUDA version of a GPU image; None for a CPU one
    python: str

    def dockerfile(self) -> str:
        if self.cuda is None:
            return render("base-cpu.dockerfile", image=self.image)
        return render("base-cuda.dockerfile", image=self.image, uv_image=UV_IMAGE, python=self.python)


def cpu_base(python: str, image: str | None = None) -> BaseImage:
    return BaseImage(image or f"python:{python}-slim", None, python)


def cuda_base(cuda: str, python: str, image: str | None = None) -> BaseImage:
    """The CUDA runtime image for `cuda` ("12.8"; "12": the newest 12.x), unless `image` is given."""
    if image is not None:
        return BaseImage(image, cuda, python)
    versions = [v for v in CUDA_RUNTIMES if v == cuda or v.split(".")[0] == cuda]
    if not versions:
        raise DeclarationError(
            f"CUDA {cuda} has no runtime image known to gpuserve; known: {', '.join(CUDA_RUNTIMES)} "
            f"(or name a base image with --base-image)"
        )
    newest = max(versions, key=lambda v: tuple(map(int, v.split("."))))
    return BaseImage(f"nvidia/cuda:{CUDA_RUNTIMES[newest]}", newest, python)
