import subprocess
import sys

import pytest

import gpuserve


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gpuserve", *args], capture_output=True, text=True, **kw)


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"gpuserve {gpuserve.__version__}"


@pytest.mark.parametrize("command", ["serve", "devices", "backends", "plan", "build", "k8s"])
def test_every_subcommand_has_help(command):
    out = run(command, "--help")
    assert out.returncode == 0 and f"gpuserve {command}" in out.stdout


def test_serve_defaults_to_loopback():
    assert "127.0.0.1" in run("serve", "--help").stdout


def test_console_script_is_installed():
    import shutil

    script = shutil.which("gpuserve") or str(__import__("pathlib").Path(sys.executable).with_name("gpuserve"))
    out = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "gpuserve" in out.stdout


def test_serve_names_a_bad_service_reference():
    out = run("serve", "no_such_module:Thing")
    assert out.returncode == 2 and "no_such_module" in out.stderr


def test_serve_names_an_unknown_backend(tmp_path):
    out = run("serve", "basics:Basics", "--backend", "nope",
              cwd=__import__("serving").APPS)
    assert out.returncode == 2
    assert "'nope'" in out.stderr and "cpu" in out.stderr


def test_serve_names_an_executor_kind_that_is_not_installed_and_the_installed_ones(monkeypatch):
    monkeypatch.setenv("GPUSERVE_EXECUTORS", "nowhere")
    out = run("serve", "basics:Basics", cwd=__import__("serving").APPS)
    assert out.returncode == 2
    assert "executors='nowhere' is not installed" in out.stderr
    assert "process" in out.stderr and "thread" in out.stderr


def test_serve_refuses_executors_and_isolation_that_disagree():
    out = run("serve", "basics:Basics", "--executors", "process", "--isolation", "thread",
              cwd=__import__("serving").APPS)
    assert out.returncode == 2
    assert "--executors process and --isolation thread disagree" in out.stderr
