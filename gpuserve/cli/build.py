"""`gpuserve build MODULE:ATTR`: a build context for an OCI image of the service.

Writes a folder that `docker build` (or any OCI builder) turns into an image:
a Dockerfile on a CUDA runtime base matching the framework's build when the
service asks for GPUs, on a slim Python otherwise; the requirements pinned at
the versions installed here; wheels of what was installed from this disk; and
the service's code. The image runs `python -m gpuserve serve` as a non-root
user, listens on all interfaces, and checks its health at `/livez`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import attrs

from gpuserve.backend import ImageRequirements
from gpuserve.cli.images import CUDA_RUNTIMES, BaseImage, cpu_base, cuda_base
from gpuserve.cli.names import dns_label
from gpuserve.cli.pins import Pins, gather_wheels, pin
from gpuserve.cli.sources import copy_sources
from gpuserve.cli.templates import render
from gpuserve.distributions import python_version
from gpuserve.errors import DeclarationError, GpuserveError
from gpuserve.loader import load_service
from gpuserve.registry import BackendEntry, default_registry
from gpuserve.service import ServiceSpec
from gpuserve.settings import Settings

# The extras of gpuserve every image gets: /metrics (the autoscaler's signal) and uvloop.
IMAGE_EXTRAS = ("fast", "metrics")
_CUDA = re.compile(r"^\d+(\.\d+)?$")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build",
        help="write a container image's build context for a service",
        description="Write a build context for an OCI image of MODULE:ATTR (imported from the current "
        "directory, whose files become the image's /app): Dockerfile, pinned requirements, wheels of "
        "what was installed from this disk, the service's code. Build it with `docker build`.",
    )
    p.add_argument("service", metavar="MODULE:ATTR", help="the @gpuserve.service class, e.g. app:Classifier")
    p.add_argument("--output", "-o", type=Path, help="folder to write (default build/<service name>)")
    p.add_argument("--backend", help="backend the image serves with (default: the one serve would choose)")
    p.add_argument("--cuda", type=_cuda_version, metavar="X.Y",
                   help="CUDA version of a GPU image (default: the installed framework's CUDA build); "
                   f"runtime images are known for {', '.join(CUDA_RUNTIMES)}")
    p.add_argument("--base-image", metavar="IMAGE", help="start from IMAGE instead of the base gpuserve picks")
    p.add_argument("--port", type=int, help="port the image serves on (default 3000)")
    p.add_argument("--requirements", "-r", type=Path, metavar="FILE",
                   help="the service's own requirements (a list of requirement lines) to install as well")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave files or folders matching PATTERN out of the service's code (repeatable)")
    p.set_defaults(run=run)


def _cuda_version(text: str) -> str:
    if not _CUDA.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a CUDA version such as 12.8 (or 12 for any 12.x)")
    return text


@attrs.frozen
class Context:
    """A written build context and what went into it."""

    path: Path
    image_name: str
    base: BaseImage
    pins: Pins
    wheels: tuple[str, ...]
    files: int


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_sources({"backend": args.backend, "port": args.port}, os.environ)
        spec = load_service(args.service)
        context = write_context(args, spec, settings)
    except GpuserveError as exc:
        print(f"gpuserve build: {exc}", file=sys.stderr)
        return 2
    kind = f"CUDA {context.base.cuda}" if context.base.cuda else "CPU"
    print(f"wrote the build context of {spec.name} to {context.path}: {kind} image from {context.base.image}, "
          f"Python {context.base.python}, {len(context.pins.lines)} pinned requirements, "
          f"{len(context.wheels)} wheel(s) of what was installed from this disk, {context.files} file(s) of the "
          f"service")
    for line in context.pins.unpinned:
        print(f"  not installed here, resolved when the image is built: {line}")
    gpus = "--gpus all " if context.base.cuda else ""
    print(f"build it:  docker build -t {context.image_name} {context.path}")
    print(f"run it:    docker run {gpus}-p {settings.port}:{settings.port} {context.image_name}")
    return 0


def write_context(args: argparse.Namespace, spec: ServiceSpec, settings: Settings) -> Context:
    entry = default_registry().choose(settings.backend, spec.backend)
    assert entry.cls is not None
    base, framework = _base_and_framework(args, spec, entry)
    pins = pin([("gpuserve", IMAGE_EXTRAS), (entry.distribution or "gpuserve", ())], framework.replaces)
    image_name = dns_label(spec.name)
    out = (args.output or Path("build") / image_name).resolve()
    source = Path(".").resolve()
    if out == source or out in source.parents:
        raise DeclarationError(f"--output {out} would hold the service's own folder {source}; pick another")
    own = _own_requirements(args.requirements)
    _clear(out)
    wheels = gather_wheels(pins.local, out / "wheels")
    files = copy_sources(source, out / "app", exclude=args.exclude, skip=out)
    (out / "requirements.txt").write_text(_requirements(spec, pins, framework.requirements, framework.index_urls,
                                                       own))
    (out / "Dockerfile").write_text(render(
        "Dockerfile", service=spec.name, service_ref=args.service, image_name=image_name, base=base.dockerfile(),
        port=settings.port, backend=entry.name, run_flags="--gpus all " if base.cuda else "",
    ))
    return Context(out, image_name, base, pins, tuple(wheels), files)


def _clear(out: Path) -> None:
    """An empty `out`: a context written earlier is replaced, anything else is left alone."""
    dockerfile = out / "Dockerfile"
    if out.exists() and any(out.iterdir()):
        if not (dockerfile.is_file() and "written by `gpuserve build`" in dockerfile.read_text()):
            raise DeclarationError(f"--output {out} exists and is not a build context gpuserve wrote; "
                                   f"remove it or pick another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _base_and_framework(
    args: argparse.Namespace, spec: ServiceSpec, entry: BackendEntry
) -> tuple[BaseImage, ImageRequirements]:
    """The base image, and what it installs for the framework: a CUDA build for a GPU service."""
    assert entry.cls is not None
    python = python_version()
    if not (spec.resources.gpu > 0 and entry.cls.uses_gpus):
        if args.cuda:
            raise DeclarationError(f"--cuda {args.cuda}: {spec.name} runs on the CPU (it asks for no GPU, or backend "
                                   f"{entry.name!r} uses none), so its image has no CUDA; drop --cuda")
        return cpu_base(python, args.base_image), entry.cls.image_requirements(None)
    cuda = args.cuda or entry.cls.cuda_build()
    if cuda is None:
        raise GpuserveError(
            f"{spec.name} asks for GPUs, but backend {entry.name!r} cannot tell which CUDA version the framework "
            f"installed here was built for (a CPU build?), so neither the image's CUDA base nor the framework's "
            f"build can be picked; give it with --cuda (e.g. --cuda 12.8; runtime images are known for "
            f"{', '.join(CUDA_RUNTIMES)})"
        )
    framework = entry.cls.image_requirements(cuda)
    return cuda_base(cuda, python, args.base_image), framework


def _own_requirements(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DeclarationError(f"--requirements {path}: cannot read it ({exc.strerror or exc})") from None
    kept = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    nested = [line for line in kept if line.startswith("-")]
    if nested:
        raise DeclarationError(f"--requirements {path}: {nested[0]!r} is an option; give plain requirement lines")
    return kept


def _requirements(spec: ServiceSpec, pins: Pins, framework: tuple[str, ...], index_urls: tuple[str, ...],
                  own: list[str]) -> str:
    lines = [
        f"# The requirements of {spec.name}'s image, written by `gpuserve build`: every distribution it",
        "# needs at the version installed where it was built; wheels/ holds those installed from that disk.",
        *(f"--extra-index-url {url}" for url in index_urls),
        *pins.lines,
    ]
    if framework:
        lines += ["# The framework's build for this image:", *framework]
    if pins.unpinned:
        lines += ["# Required but not installed where the context was written:", *pins.unpinned]
    if own:
        lines += ["# The service's own requirements:", *own]
    return "\n".join(lines) + "\n"
