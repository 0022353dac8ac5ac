"""Backends come from the gpuserve.backends entry points; a broken one never breaks the rest."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gpuserve.errors import BackendError
from gpuserve.registry import Registry, default_registry
from serving import APPS, serve


def install_distribution(site, name, entry_points, modules):
    """A real (if tiny) installed distribution: a .dist-info with entry points, on a path entry."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugin_site(tmp_path):
    site = tmp_path / "site"
    install_distribution(site, "gpuserve-broken", "[gpuserve.backends]\nbroken = broken_backend:Backend\n",
                         {"broken_backend": "raise ImportError('libfoo.so: cannot open shared object file')\n"})
    install_distribution(site, "gpuserve-notabackend", "[gpuserve.backends]\nodd = odd_backend:Thing\n",
                         {"odd_backend": "class Thing: pass\n"})
    install_distribution(site, "gpuserve-grumpy", "[gpuserve.backends]\ngrumpy = grumpy_backend:Grumpy\n",
                         {"grumpy_backend": """
                             from gpuserve.backend import Backend
                             class Grumpy(Backend):
                                 name = "grumpy"
                                 priority = 10_000  # would win, were it usable
                                 @classmethod
                                 def viable(cls):
                                     raise RuntimeError("driver probe crashed")
                         """})
    return site


def env_with(site):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def backends_json(env):
    out = subprocess.run([sys.executable, "-m", "gpuserve", "backends", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return {row["name"]: row for row in json.loads(out.stdout)}


def test_builtin_cpu_backend_is_registered_through_the_same_group():
    entry = default_registry().get("cpu")
    assert entry.distribution == "gpuserve" and entry.cls is not None and entry.viability().ok


def test_backends_lists_name_distribution_version_viability_and_devices():
    rows = backends_json(os.environ)
    assert rows["cpu"]["viable"] is True and rows["cpu"]["distribution"] == "gpuserve"
    assert rows["cpu"]["version"] and rows["cpu"]["gpu_devices"] == 0
    assert rows["fake-gpu"]["viable"] is False and "GPUSERVE_FAKE_GPUS" in rows["fake-gpu"]["reason"]


def test_broken_plugins_are_listed_with_their_reason_and_the_rest_still_work(plugin_site):
    rows = backends_json(env_with(plugin_site))
    assert rows["broken"]["viable"] is False and "libfoo.so" in rows["broken"]["reason"]
    assert rows["odd"]["viable"] is False and "not a subclass" in rows["odd"]["reason"]
    assert rows["grumpy"]["viable"] is False and "driver probe crashed" in rows["grumpy"]["reason"]
    assert rows["cpu"]["viable"] is True


def test_a_server_starts_beside_broken_plugins(plugin_site, tmp_path):
    install_distribution(plugin_site, "gpuserve-badhook", "[gpuserve.plugins]\nbadhook = bad_hook:setup\n",
                         {"bad_hook": "def setup(app):\n    raise RuntimeError('hook exploded')\n"})
    install_distribution(plugin_site, "gpuserve-goodhook", "[gpuserve.plugins]\ngoodhook = good_hook:setup\n",
                         {"good_hook": """
                             from aiohttp import web

                             async def hello(request):
                                 return web.json_response({"hello": "from a plugin"})

                             def setup(app):
                                 app.router.add_get("/hello", hello)
                         """})
    with serve("basics:Basics", env={"PYTHONPATH": str(plugin_site)}, log_dir=tmp_path) as server:
        assert server.post("echo", {"value": 3}).body["value"] == 3
        assert server.get("hello").body == {"hello": "from a plugin"}  # hooks may add routes
        log = server.log()
    assert "broken" in log and "libfoo.so" in log
    assert "badhook" in log and "hook exploded" in log


def test_unknown_backend_lists_the_installed_ones():
    with pytest.raises(BackendError) as info:
        default_registry().choose("tensorrt")
    assert "'tensorrt'" in str(info.value) and "'cpu'" in str(info.value)


def test_choice_order_flag_then_service_then_priority():
    registry = Registry.from_entry_points()
    assert registry.choose("cpu", "fake-gpu").name == "cpu"
    with pytest.raises(BackendError, match="GPUSERVE_FAKE_GPUS"):
        registry.choose(None, "fake-gpu")  # the service's choice, not viable here: an error, no fallback
    best = registry.choose(None, None)
    viable = [e for e in registry.entries if e.auto_select and e.viability().ok]
    assert best.name == max(viable, key=lambda e: e.priority).name


def test_a_fake_inventory_chooses_a_backend_that_serves_fake_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUSERVE_FAKE_GPUS", str(tmp_path / "gpus.json"))  # fake-gpu's viability reads it
    registry = Registry.from_entry_points()
    assert registry.choose(None, None, fake_gpus=True).name == "fake-gpu"
    assert registry.choose("cpu", None, fake_gpus=True).name == "cpu"  # a named backend stays named
    without = Registry([e for e in registry.entries if e.name != "fake-gpu"])
    with pytest.raises(BackendError) as info:
        without.choose(None, None, fake_gpus=True)
    assert "GPUSERVE_FAKE_GPUS is set" in str(info.value) and "pip install gpuserve-fake-gpu" in str(info.value)


def test_backend_env_variable_selects_the_backend(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gpuserve", "serve", "basics:Basics"], cwd=APPS,
                         env={**os.environ, "GPUSERVE_BACKEND": "no-such"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "'no-such'" in out.stderr
