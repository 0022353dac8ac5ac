"""`gpuserve build`: the build context of an image, linted, and run the way the image would run it.

Where a container engine answers (`docker info`), the CPU image is built and
run for real. gpuserve's own test machines have none (at most a `docker`
client), so there the context is checked instead: the Dockerfile is lint-clean
under hadolint, the requirements are the versions installed here, the wheels
of what was installed from this disk are there, and the Dockerfile's own
ENTRYPOINT, ENV, WORKDIR and HEALTHCHECK, run with this interpreter on the
context's copy of the code, serve the service.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from serving import ROOT, free_port, request, serve

torch = pytest.importorskip("torch")
HADOLINT = Path(sys.executable).with_name("hadolint")
EXAMPLE = ROOT / "examples" / "classifier"
sys.path.insert(0, str(EXAMPLE))
from model import build_model, predict  # noqa: E402
CPU_APP = textwrap.dedent('''
    """The example's model, served without asking for a GPU."""
    from typing import Annotated

    import numpy as np
    from numpy.typing import NDArray

    import gpuserve
    from model import FEATURES, build_model, predict

    @gpuserve.service
    class CpuClassifier:
        def __init__(self) -> None:
            self.device = gpuserve.context().device
            self.model = build_model().to(self.device)

        @gpuserve.api(batchable=True)
        def predict(self, x: Annotated[NDArray[np.float32], gpuserve.Shape(-1, FEATURES)]) -> list[dict]:
            return predict(self.model, x, self.device)
''')
ROW = [0.5, -1.2, 3.3, 0.0, 2.1, -0.7, 1.5, 0.9]


def expected(row: list[float]) -> list[dict]:
    """What the example's model answers for one request of one row, computed in this process."""
    return predict(build_model(), np.array([row], dtype=np.float32), torch.device("cpu"))
needs_a_cpu_build = pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU build of torch")


def gpuserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuserve", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The example's folder, as a user's project outside the repository, with a CPU service beside it."""
    folder = tmp_path_factory.mktemp("project") / "classifier"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "cpu_app.py").write_text(CPU_APP)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "stale.pyc").write_bytes(b"")
    return folder


def checkout_entries() -> set[Path]:
    """What is in the folders of this checkout's gpuserve and gpuserve-torch, ignored files included."""
    return {*ROOT.iterdir(), *(ROOT / "backends" / "gpuserve-torch").iterdir()}


@pytest.fixture(scope="module")
def cpu_context(project: Path) -> Path:
    (project / "requirements.txt").write_text("# the service's own needs\nscipy>=1.10\n\nPillow==10.4.0\n")
    before = checkout_entries()
    done = gpuserve("build", "cpu_app:CpuClassifier", "--requirements", "requirements.txt", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "docker build -t cpuclassifier " in done.stdout
    # The wheels of this checkout were built from copies: no build/ or *.egg-info left in it.
    assert checkout_entries() - before == set()
    return project / "build" / "cpuclassifier"


@pytest.fixture(scope="module")
def gpu_context(project: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contexts") / "gpu"
    done = gpuserve("build", "app:Classifier", "--cuda", "12.8", "--output", str(out), cwd=project)
    assert done.returncode == 0, done.stderr
    assert "docker run --gpus all -p 3000:3000 classifier" in done.stdout
    return out


def requirements(context: Path) -> list[str]:
    return [line for line in (context / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]


def instructions(context: Path) -> dict[str, list[str]]:
    """The Dockerfile's instructions by keyword, continuation lines joined (the last stage's win)."""
    text = re.sub(r"\\\n\s*", " ", (context / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword, []).append(rest)
    return found


@pytest.mark.parametrize("variant", ["cpu_context", "gpu_context"])
def test_the_dockerfile_is_lint_clean(variant: str, request):
    context = request.getfixturevalue(variant)
    done = subprocess.run([str(HADOLINT), str(context / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_a_cpu_service_gets_a_slim_python_image(cpu_context: Path):
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    steps = instructions(cpu_context)
    assert steps["FROM"] == [f"python:{python}-slim"]
    assert steps["EXPOSE"] == ["3000"] and steps["USER"] == ["10001"]


def sections(context: Path) -> dict[str, list[str]]:
    """requirements.txt's lines under each comment that heads them ("" for those before any)."""
    found: dict[str, list[str]] = {"": []}
    heading = ""
    for line in (context / "requirements.txt").read_text().splitlines():
        if line.startswith("# ") and line.endswith(":"):
            heading = line[2:-1]
            found[heading] = []
        elif line and not line.startswith("#"):
            found[heading].append(line)
    return found


def test_the_requirements_are_pinned_at_the_versions_installed_here(cpu_context: Path):
    parts = sections(cpu_context)
    lines = parts[""] + parts["The framework's build for this image"]
    pins = [line for line in lines if not line.startswith("--")]
    # What is required but absent here (uvloop, where only the core is installed) is named, unpinned.
    for wanted in parts.get("Required but not installed where the context was written", []):
        name = re.match(r"[A-Za-z0-9_.-]+", wanted).group()
        with pytest.raises(metadata.PackageNotFoundError):
            metadata.version(name)
    assert pins, lines
    for line in pins:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?==(\S+)", line).groups()
        if name == "torch":  # the framework's CPU build, whichever build is installed here
            assert version == f"{torch.__version__.split('+')[0]}+cpu"
        else:
            assert metadata.version(name) == version, line
    assert f"gpuserve[fast,metrics]=={metadata.version('gpuserve')}" in pins
    assert {"gpuserve-torch", "aiohttp", "prometheus-client", "numpy"} <= {p.split("==")[0] for p in pins}
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines


def test_distributions_installed_from_this_disk_come_as_wheels(cpu_context: Path):
    # gpuserve and gpuserve-torch are installed from this checkout: no index has them.
    wheels = sorted(path.name for path in (cpu_context / "wheels").iterdir())
    version = metadata.version("gpuserve")
    assert wheels == [f"gpuserve-{version}-py3-none-any.whl",
                      f"gpuserve_torch-{metadata.version('gpuserve-torch')}-py3-none-any.whl"]


def test_the_code_is_the_services_folder_without_caches_or_the_context(cpu_context: Path):
    files = sorted(str(path.relative_to(cpu_context / "app")) for path in (cpu_context / "app").rglob("*"))
    assert files == ["app.py", "cpu_app.py", "model.py", "requirements.txt"]


def test_a_gpu_service_gets_the_cuda_runtime_of_its_frameworks_build(gpu_context: Path):
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    steps = instructions(gpu_context)
    assert steps["FROM"] == ["ghcr.io/astral-sh/uv:0.11.7 AS uv", "nvidia/cuda:12.8.1-runtime-ubuntu24.04"]
    assert f"--python {python} /opt/venv" in steps["RUN"][0]
    lines = requirements(gpu_context)
    assert f"torch=={torch.__version__.split('+')[0]}+cu128" in lines
    assert "--extra-index-url https://download.pytorch.org/whl/cu128" in lines
    assert steps["ENTRYPOINT"] == ['["python", "-m", "gpuserve", "serve", "app:Classifier"]']


@needs_a_cpu_build
def test_a_gpu_service_with_a_cpu_build_here_asks_which_cuda(project: Path):
    done = gpuserve("build", "app:Classifier", "--output", str(project.parent / "unused"), cwd=project)
    assert done.returncode == 2
    assert "Classifier asks for GPUs, but backend 'torch' cannot tell which CUDA version" in done.stderr
    assert "give it with --cuda (e.g. --cuda 12.8" in done.stderr
    unknown = gpuserve("build", "app:Classifier", "--cuda", "12.7", "-o", str(project.parent / "unused"),
                       cwd=project)
    assert unknown.returncode == 2 and "CUDA 12.7 has no runtime image known to gpuserve; known: 11.8" in (
        unknown.stderr)
    assert not (project.parent / "unused").exists()


def test_a_folder_that_is_not_a_context_is_never_overwritten(project: Path, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine")
    done = gpuserve("build", "cpu_app:CpuClassifier", "-o", str(tmp_path), cwd=project)
    assert done.returncode == 2 and "exists and is not a build context gpuserve wrote" in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
    cuda = gpuserve("build", "cpu_app:CpuClassifier", "--cuda", "12.8", "-o", str(tmp_path / "x"), cwd=project)
    assert cuda.returncode == 2 and "CpuClassifier runs on the CPU" in cuda.stderr


def test_the_services_own_requirements_are_installed_too(cpu_context: Path, project: Path):
    assert requirements(cpu_context)[-2:] == ["scipy>=1.10", "Pillow==10.4.0"]
    (project / "nested.txt").write_text("-r other.txt\n")
    refused = gpuserve("build", "cpu_app:CpuClassifier", "-r", "nested.txt", "-o", str(project.parent / "unused"),
                       cwd=project)
    assert refused.returncode == 2 and "'-r other.txt' is an option; give plain requirement lines" in refused.stderr
    assert not (project.parent / "unused").exists()


def test_the_context_serves_as_the_image_would_run_it(cpu_context: Path, tmp_path: Path):
    steps = instructions(cpu_context)
    env = dict(pair.split("=", 1) for pair in steps["ENV"][0].split() if pair.startswith("GPUSERVE_"))
    assert env == {"GPUSERVE_HOST": "0.0.0.0", "GPUSERVE_PORT": "3000", "GPUSERVE_BACKEND": "torch"}
    assert steps["WORKDIR"] == ["/app"] and steps["COPY"][-1] == "app/ /app/"
    entrypoint = json.loads(steps["ENTRYPOINT"][0])
    assert entrypoint[:4] == ["python", "-m", "gpuserve", "serve"]
    health = json.loads(steps["HEALTHCHECK"][0].split(" CMD ", 1)[1])
    # As `docker run -e GPUSERVE_PORT=... -e GPUSERVE_HOST=127.0.0.1` would: a free port, loopback only.
    env["GPUSERVE_HOST"] = "127.0.0.1"
    with serve(entrypoint[4], cwd=cpu_context / "app", env=env, log_dir=tmp_path, port_from_env=True) as server:
        reply = server.post("predict", {"x": [ROW]})
        assert reply.status == 200 and reply.body == expected(ROW)
        env["GPUSERVE_PORT"] = server.url.rsplit(":", 1)[1]
        healthy = subprocess.run([sys.executable, *health[1:]], env=env, capture_output=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    unhealthy = subprocess.run([sys.executable, *health[1:]], env=env, capture_output=True, timeout=30)
    assert unhealthy.returncode != 0


def engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not engine_answers(), reason="no container engine answers `docker info` here")
def test_the_image_builds_and_serves(cpu_context: Path):
    tag = f"gpuserve-test-{uuid.uuid4().hex[:12]}"
    port = free_port()
    built = subprocess.run(["docker", "build", "-t", tag, str(cpu_context)], capture_output=True, text=True,
                           timeout=1800)
    assert built.returncode == 0, built.stdout + built.stderr
    try:
        started = subprocess.run(["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:3000", tag],
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        container = started.stdout.strip()
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if request(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, subprocess.run(["docker", "logs", container],
                                                                    capture_output=True, text=True).stdout
                time.sleep(0.5)
            reply = request(f"http://127.0.0.1:{port}/predict", {"x": [ROW]})
            assert reply.status == 200 and reply.body == expected(ROW)
            user = subprocess.run(["docker", "exec", container, "id", "-u"], capture_output=True, text=True,
                                  timeout=60)
            assert user.stdout.strip() == "10001"
        finally:
            subprocess.run(["docker", "stop", container], capture_output=True, timeout=120)
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)
