"""`python -m gpuserve plan MODULE:ATTR`, run as a real subprocess on a fake inventory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpuserve.devices import FAKE_GPUS_ENV
from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

GiB = 2**30
GPUS = [fake_gpu(0, memory_gib=80), fake_gpu(1, memory_gib=80)]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    # Building the service would raise: `plan` must only read its declaration.
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        import gpuserve

        @gpuserve.service(resources={"gpu": 0.5}, workers=3, backend="fake-gpu")
        class Halves:
            def __init__(self):
                raise RuntimeError("plan must not build a replica")

            @gpuserve.api
            def ping(self) -> str:
                return "pong"
    """))
    return tmp_path


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "GPUSERVE_"))}
    env[FAKE_GPUS_ENV] = write_fake_inventory(tmp_path / "gpus.json", GPUS)
    return env


def gpuserve(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuserve", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_plan_json_packs_fractions_with_memory_caps(app_dir: Path, fake_env: dict[str, str]) -> None:
    done = gpuserve("plan", "app:Halves", "--json", env=fake_env, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [[d["uuid"] for d in w["devices"]] for w in data["workers"]] == [
        [GPUS[0]["uuid"]], [GPUS[0]["uuid"]], [GPUS[1]["uuid"]]]
    assert [w["memory_limit"] for w in data["workers"]] == [40 * GiB] * 3
    assert data["fallback_reason"] is None and data["inventory_source"].startswith("fake:")


def test_plan_text_honours_workers_flag_and_visibility(app_dir: Path, fake_env: dict[str, str]) -> None:
    done = gpuserve("plan", "app:Halves", "--workers", "2", env={**fake_env, "CUDA_VISIBLE_DEVICES": "1"},
                    cwd=app_dir)
    assert done.returncode == 0, done.stderr
    assert f"worker 0: cuda:0 NVIDIA H100 80GB HBM3 ({GPUS[1]['uuid']}), memory cap 40.0 GiB" in done.stdout
    assert f"worker 1: cuda:0 NVIDIA H100 80GB HBM3 ({GPUS[1]['uuid']})" in done.stdout
    assert "worker 2" not in done.stdout


def test_plan_that_cannot_fit_exits_2_with_the_message(app_dir: Path, fake_env: dict[str, str]) -> None:
    done = gpuserve("plan", "app:Halves", "--workers", "5", env=fake_env, cwd=app_dir)
    assert done.returncode == 2
    assert "5 worker(s) x 0.5 GPU" in done.stderr and "workers=4" in done.stderr
    assert done.stdout == ""


def test_plan_falls_back_to_cpu_or_fails_with_require_gpu(app_dir: Path, fake_env: dict[str, str]) -> None:
    hidden = {**fake_env, "CUDA_VISIBLE_DEVICES": ""}
    done = gpuserve("plan", "app:Halves", "--json", "--cpu-devices", "2", env=hidden, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [w["devices"][0]["uuid"] for w in data["workers"]] == ["CPU-0", "CPU-1", "CPU-0"]
    assert "CUDA_VISIBLE_DEVICES is empty" in data["fallback_reason"]
    required = gpuserve("plan", "app:Halves", "--require-gpu", env=hidden, cwd=app_dir)
    assert required.returncode == 2 and "GPUs are required" in required.stderr


def test_plan_follows_the_backend_serve_would_use(app_dir: Path, fake_env: dict[str, str]) -> None:
    done = gpuserve("plan", "app:Halves", "--backend", "cpu", "--json", env=fake_env, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert all(d["kind"] == "cpu" for w in plan["workers"] for d in w["devices"])
    assert "backend 'cpu' runs on the CPU only" in plan["fallback_reason"]


def test_a_cut_short_list_is_said_once_and_named_when_the_plan_cannot_fit(
    app_dir: Path, fake_env: dict[str, str]
) -> None:
    cut = {**fake_env, "CUDA_VISIBLE_DEVICES": "0,7,1"}
    done = gpuserve("plan", "app:Halves", "--workers", "2", env=cut, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("CUDA stops at entry '7' (no device has ordinal 7 (ordinals are 0..1))") == 1
    failed = gpuserve("plan", "app:Halves", "--workers", "3", env=cut, cwd=app_dir)
    assert failed.returncode == 2
    # Said as a warning, and again inside the error that explains the plan.
    assert failed.stderr.count("CUDA stops at entry '7'") == 2 and "cannot place the workers" in failed.stderr


def test_mig_devices_get_a_worker_process_each(app_dir: Path, fake_env: dict[str, str], tmp_path: Path) -> None:
    mig = [{"uuid": f"MIG-0000000{i}-0000-4000-8000-000000000000", "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
            "memory_total": 40 * GiB, "memory_used": 0} for i in range(2)]
    (app_dir / "whole.py").write_text(textwrap.dedent("""
        import gpuserve

        @gpuserve.service(resources={"gpu": 1}, workers=2, backend="fake-gpu")
        class Whole:
            @gpuserve.api
            def ping(self) -> str:
                return "pong"

        @gpuserve.service(resources={"gpu": 1}, workers=2, backend="fake-gpu", isolation="thread")
        class Threads(Whole):
            pass
    """))
    env = {**fake_env, FAKE_GPUS_ENV: write_fake_inventory(tmp_path / "mig.json",
                                                           [fake_gpu(0, "NVIDIA A100-SXM4-80GB", mig=mig)])}
    done = gpuserve("plan", "whole:Whole", env=env, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    assert "isolation process" in done.stdout
    assert f"worker 0: cuda:0 NVIDIA A100-SXM4-80GB MIG 3g.40gb ({mig[0]['uuid']})" in done.stdout
    assert f"worker 1: NVIDIA A100-SXM4-80GB MIG 3g.40gb ({mig[1]['uuid']})" in done.stdout
    assert "numbers them from cuda:0" in done.stdout
    refused = gpuserve("plan", "whole:Threads", env=env, cwd=app_dir)
    assert refused.returncode == 2
    assert "isolation='thread' puts every worker in the server process" in refused.stderr
    assert "one CUDA process enumerates a single MIG device" in refused.stderr


def test_host_memory_is_shown_with_the_plan_and_a_host_too_small_refuses_it(
    app_dir: Path, fake_env: dict[str, str]
) -> None:
    (app_dir / "ram.py").write_text(textwrap.dedent("""
        import gpuserve

        @gpuserve.service(resources={"gpu": 0.5, "memory": "1MiB"}, workers=2, backend="fake-gpu")
        class Small:
            @gpuserve.api
            def ping(self) -> str:
                return "pong"

        @gpuserve.service(resources={"memory": "1000TiB"}, backend="cpu")
        class Huge(Small):
            pass
    """))
    done = gpuserve("plan", "ram:Small", env=fake_env, cwd=app_dir)
    assert done.returncode == 0, done.stderr
    assert "  2 worker(s) x 1.0 MiB of host memory (2.0 MiB in all); the host has " in done.stdout
    as_json = json.loads(gpuserve("plan", "ram:Small", "--json", env=fake_env, cwd=app_dir).stdout)
    assert as_json["memory"] == 2**20 and as_json["host_memory"] >= 2**20
    refused = gpuserve("plan", "ram:Huge", env=fake_env, cwd=app_dir)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "asked for 1 worker(s) x 1000.0 TiB of host memory (1000.0 TiB in all), but this host has " in refused.stderr
    instances = gpuserve("plan", "ram:Small", "--instances-per-device", "3", env=fake_env, cwd=app_dir)
    assert "  2 worker(s) x 3 instance(s) x 1.0 MiB of host memory (6.0 MiB in all)" in instances.stdout
