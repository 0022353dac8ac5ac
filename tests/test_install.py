"""gpuserve installed as a user installs it: wheels, a project that depends on them, no test tools.

Builds every distribution of this checkout with `python -m build` (the sdist,
then the wheel from the sdist, so both are checked), once per session. A
fresh virtual environment then installs a user's project that depends on
`gpuserve[torch,metrics]` from those wheels, and serves the bundled example
from outside the repository.
"""

from __future__ import annotations

import email.parser
import json
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gpuserve.cli.sources import copy_sources
from serving import ROOT, request, serve, server_env

pytest.importorskip("build")
torch = pytest.importorskip("torch")

EXAMPLE = ROOT / "examples" / "classifier"
sys.path.insert(0, str(EXAMPLE))
from model import build_model, predict  # noqa: E402
# Every distribution in the checkout: its folder and the name users install.
DISTRIBUTIONS = {
    ".": "gpuserve",
    "backends/gpuserve-torch": "gpuserve-torch",
    "backends/gpuserve-tensorflow": "gpuserve-tensorflow",
    "backends/gpuserve-cupy": "gpuserve-cupy",
    "backends/gpuserve-fake-gpu": "gpuserve-fake-gpu",
    "plugins/gpuserve-numpy": "gpuserve-numpy",
}
# Files the core reads at run time besides its modules.
PACKAGE_DATA = ("gpuserve/testing/FAKE_GPUS.md", "gpuserve/cli/templates/Dockerfile",
                "gpuserve/cli/templates/base-cuda.dockerfile", "gpuserve/cli/templates/k8s-deployment.yaml",
                "gpuserve/cli/templates/prometheus-adapter-rule.yaml")
USER_PROJECT = textwrap.dedent('''
    [build-system]
    requires = ["setuptools>=77"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "classifier-service"
    version = "1.0.0"
    requires-python = ">=3.10"
    dependencies = ["gpuserve[torch,metrics]>=0.1"]

    [tool.setuptools]
    py-modules = ["app", "model"]
''')
HELLO = textwrap.dedent('''
    import os
    import gpuserve

    @gpuserve.service(backend="cpu", isolation="process")
    class Hello:
        @gpuserve.api
        def hello(self, name: str):
            return {"hello": name, "pid": os.getpid()}
''')
PLUGIN_TROUBLE = ("failed to load", "plugin", "ModuleNotFoundError", "Traceback")


def plugin_trouble(log: str) -> list[str]:
    """Lines of a server's log that speak of a plugin failing (the access log's request lines aside)."""
    return [line for line in log.splitlines()
            if "gpuserve.access" not in line and any(word in line for word in PLUGIN_TROUBLE)]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The sdists and wheels of every distribution, built side by side into one folder.

    Built from a copy of the checkout: setuptools leaves *.egg-info beside the
    sources, and one in the repository's root would shadow the installed
    gpuserve's metadata for any process started there.
    """
    source = tmp_path_factory.mktemp("checkout") / "gpuserve"
    copy_sources(ROOT, source)
    out = tmp_path_factory.mktemp("dist")
    builds = {
        folder: subprocess.Popen([sys.executable, "-m", "build", "--outdir", str(out), str(source / folder)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for folder in DISTRIBUTIONS
    }
    for folder, build in builds.items():
        log, _ = build.communicate(timeout=600)
        assert build.returncode == 0, f"python -m build {folder}:\n{log}"
    return out


def wheel_of(wheels: Path, distribution: str) -> Path:
    (found,) = wheels.glob(f"{distribution.replace('-', '_')}-*.whl")
    return found


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


@pytest.fixture(scope="module")
def user_project(wheels: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A user's project (the example, depending on gpuserve[torch,metrics]) installed into a fresh venv.

    Returns the venv's bin folder and the project folder. Nothing else is installed:
    no pytest, no fake-gpu, no example plugin.
    """
    root = tmp_path_factory.mktemp("user")
    project = root / "classifier"
    project.mkdir()
    for source in ("app.py", "model.py"):
        shutil.copy(EXAMPLE / source, project / source)
    (project / "pyproject.toml").write_text(USER_PROJECT)
    # This machine's CPU build of torch (the only one on its local disk).
    (root / "constraints.txt").write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--find-links", str(wheels),
         "--constraint", str(root / "constraints.txt"), str(project)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return venv / "bin", project


def test_every_distribution_has_its_name_version_license_and_python(wheels: Path):
    import gpuserve

    for distribution in DISTRIBUTIONS.values():
        meta = metadata(wheel_of(wheels, distribution))
        assert meta["Name"] == distribution
        assert meta["Version"] == gpuserve.__version__
        assert meta["License-Expression"] == "Apache-2.0"
        assert meta["Requires-Python"] == ">=3.10"
        assert meta["Description-Content-Type"] == "text/markdown"
        if distribution != "gpuserve":
            assert "gpuserve>=0.1" in meta.get_all("Requires-Dist"), distribution


def test_the_core_names_each_framework_as_an_extra(wheels: Path):
    meta = metadata(wheel_of(wheels, "gpuserve"))
    assert set(meta.get_all("Provides-Extra")) == {"fast", "metrics", "torch", "tensorflow", "tensorflow-cpu",
                                                   "cupy"}
    requires = meta.get_all("Requires-Dist")
    for line in ('gpuserve-torch>=0.1; extra == "torch"',
                 'gpuserve-tensorflow[gpu]>=0.1; extra == "tensorflow"',
                 'gpuserve-tensorflow[cpu]>=0.1; extra == "tensorflow-cpu"',
                 'gpuserve-cupy[cuda12]>=0.1; extra == "cupy"',
                 'prometheus-client>=0.17; extra == "metrics"'):
        assert line in requires


def test_sdist_and_wheel_carry_the_files_read_at_run_time(wheels: Path):
    with zipfile.ZipFile(wheel_of(wheels, "gpuserve")) as archive:
        names = set(archive.namelist())
    with tarfile.open(next(wheels.glob("gpuserve-*.tar.gz"))) as sdist:
        sdist_names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for path in PACKAGE_DATA:
        assert path in names and path in sdist_names, path


def test_a_users_install_has_no_test_tools_and_lists_only_real_backends(user_project):
    bin_dir, _ = user_project
    missing = subprocess.run([str(bin_dir / "python"), "-c", "import pytest"], capture_output=True, timeout=60)
    assert missing.returncode != 0
    # The console script, from outside the repository.
    done = subprocess.run([str(bin_dir / "gpuserve"), "backends", "--json"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT.parent, env=server_env())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert sorted(backend["name"] for backend in json.loads(done.stdout)) == ["cpu", "torch"]


def test_the_example_serves_from_a_users_project(user_project, tmp_path: Path):
    bin_dir, project = user_project
    row = [0.5, -1.2, 3.3, 0.0, 2.1, -0.7, 1.5, 0.9]
    with serve("app:Classifier", cwd=project, log_dir=tmp_path, python=str(bin_dir / "python")) as server:
        reply = server.post("predict", {"x": [row]})
        assert reply.status == 200
        assert reply.body == predict(build_model(), np.array([row], dtype=np.float32), torch.device("cpu"))
        # No plugin route: the example plugin is not part of an install.
        assert server.get("plugins/numpy").status == 404
        # The metrics extra came along: the queue depth the autoscaler reads.
        assert 'gpuserve_queue_depth{api="predict"}' in server.get("metrics").body
    assert plugin_trouble(server.log()) == [], server.log()


def test_serving_from_a_worker_process_logs_no_plugin_warning(user_project, tmp_path: Path):
    bin_dir, _ = user_project
    (tmp_path / "hello_app.py").write_text(HELLO)
    with serve("hello_app:Hello", cwd=tmp_path, log_dir=tmp_path, python=str(bin_dir / "python")) as server:
        reply = request(f"{server.url}/hello", {"name": "plain"})
        assert reply.status == 200 and reply.body["hello"] == "plain"
        assert reply.body["pid"] != server.proc.pid  # answered by the worker process
    text = server.log()
    assert "ready: 1 replica(s) of Hello" in text
    assert plugin_trouble(text) == [], text
