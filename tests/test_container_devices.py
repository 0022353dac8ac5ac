"""Inside a container: devices, plans and serving as the NVIDIA container runtime leaves them.

The runtime mounts only the GPUs `NVIDIA_VISIBLE_DEVICES` names (host indices
or UUIDs), so NVML inside reports just those. Here the fake inventory stands
for what NVML reports inside such a container, and the variable is set as
`docker run --gpus` or Kubernetes' device plugin sets it.
"""

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
from serving import serve

HOST = [fake_gpu(i) for i in range(4)]  # the host's GPUs, host index i on PCI bus i + 1
# `docker run --gpus '"device=1,3"'`: the container gets host GPUs 1 and 3, and nothing else.
EXPOSED = [HOST[1], HOST[3]]
MIG_UUID = "MIG-9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
APP = textwrap.dedent("""
    import gpuserve

    @gpuserve.service(resources={"gpu": 1}, workers=2, backend="fake-gpu")
    class Pair:
        @gpuserve.api
        def ping(self) -> str:
            return "pong"

    @gpuserve.service(resources={"gpu": 1}, backend="fake-gpu")
    class One:
        @gpuserve.api
        def ping(self) -> str:
            return "pong"
""")


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def container(tmp_path: Path, gpus: list[dict], visible: str, **extra: str) -> dict[str, str]:
    """The environment of a process in a container whose runtime exposed `gpus` for `visible`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "GPUSERVE_", "NVIDIA_"))}
    env[FAKE_GPUS_ENV] = write_fake_inventory(tmp_path / "gpus.json", gpus)
    return {**env, "NVIDIA_VISIBLE_DEVICES": visible, **extra}


def gpuserve(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuserve", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def planned_uuids(done: subprocess.CompletedProcess[str]) -> list[list[tuple[int, str]]]:
    assert done.returncode == 0, done.stderr
    return [[(d["index"], d["uuid"]) for d in w["devices"]] for w in json.loads(done.stdout)["workers"]]


def test_the_exposed_gpus_are_numbered_from_0_and_the_view_says_why(tmp_path: Path):
    env = container(tmp_path, EXPOSED, "1,3")
    done = gpuserve("devices", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert [(d["index"], d["nvml_index"], d["uuid"]) for d in json.loads(done.stdout)] == [
        (0, 0, HOST[1]["uuid"]), (1, 1, HOST[3]["uuid"])]
    note = ("NVIDIA_VISIBLE_DEVICES='1,3': the container runtime exposed 2 device(s), numbered 0..1 in here; "
            "cuda:N and CUDA_VISIBLE_DEVICES count these, not the host's indices")
    assert note in done.stderr and "warning" not in done.stderr
    table = gpuserve("devices", env=env)
    assert table.stdout.rstrip().endswith(note)


def test_the_plan_places_workers_on_the_exposed_gpus(tmp_path: Path, app_dir: Path):
    env = container(tmp_path, EXPOSED, "1,3")
    done = gpuserve("plan", "app:Pair", "--json", env=env, cwd=app_dir)
    assert planned_uuids(done) == [[(0, HOST[1]["uuid"])], [(1, HOST[3]["uuid"])]]


def test_a_host_index_in_cuda_visible_devices_is_explained(tmp_path: Path, app_dir: Path):
    # Host GPU 3 is inside this container, but as cuda:1: CUDA's list ends at the unknown ordinal 3.
    env = container(tmp_path, EXPOSED, "1,3", CUDA_VISIBLE_DEVICES="3")
    hint = ("inside this container the GPUs NVIDIA_VISIBLE_DEVICES='1,3' exposed are numbered 0..1: "
            "CUDA_VISIBLE_DEVICES counts those (or names them by UUID), not the host's indices")
    view = gpuserve("devices", env=env)
    assert view.returncode == 0
    assert "No GPU visible: CUDA_VISIBLE_DEVICES='3' selects no device (entry '3': no device has ordinal 3" in (
        view.stdout)
    assert hint in view.stdout
    required = gpuserve("plan", "app:One", "--require-gpu", env=env, cwd=app_dir)
    assert required.returncode == 2 and hint in required.stderr
    # Counted from 0 inside, the same GPU is found.
    inside = gpuserve("plan", "app:One", "--json", env={**env, "CUDA_VISIBLE_DEVICES": "1"}, cwd=app_dir)
    assert planned_uuids(inside) == [[(0, HOST[3]["uuid"])]]


def test_the_uuids_kubernetes_device_plugin_sets_are_the_gpus_seen(tmp_path: Path, app_dir: Path):
    env = container(tmp_path, EXPOSED, f"{HOST[3]['uuid']},{HOST[1]['uuid']}")
    done = gpuserve("devices", env=env)
    assert done.returncode == 0, done.stderr
    assert "the container runtime exposed 2 device(s), numbered 0..1 in here" in done.stdout
    assert "warning" not in done.stdout
    assert planned_uuids(gpuserve("plan", "app:Pair", "--json", env=env, cwd=app_dir)) == [
        [(0, HOST[1]["uuid"])], [(1, HOST[3]["uuid"])]]


def test_a_mig_instance_from_kubernetes_is_the_one_gpu(tmp_path: Path, app_dir: Path):
    # nvidia.com/mig-3g.40gb: 1 gives the pod one MIG instance; NVML inside shows it under its GPU.
    parent = fake_gpu(0, "NVIDIA A100-SXM4-80GB", mig=[{
        "uuid": MIG_UUID, "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb", "memory_total": 40 * 2**30,
        "memory_used": 0}])
    env = container(tmp_path, [parent], MIG_UUID)
    done = gpuserve("devices", "--json", env=env)
    assert [(d["index"], d["uuid"], d["mig_parent"]) for d in json.loads(done.stdout)] == [
        (0, MIG_UUID, parent["uuid"])]
    assert "exposed 1 device(s), numbered 0..0 in here" in done.stderr and "warning" not in done.stderr
    assert planned_uuids(gpuserve("plan", "app:One", "--json", env=env, cwd=app_dir)) == [[(0, MIG_UUID)]]


@pytest.mark.parametrize(("visible", "why"), [
    ("none", "the container runtime exposed no GPU to this container (NVIDIA_VISIBLE_DEVICES='none')"),
    ("void", "NVIDIA_VISIBLE_DEVICES='void' asks the container runtime for no GPU and no driver"),
    ("all", "NVIDIA_VISIBLE_DEVICES='all' asks for GPUs, but none reached this container: it was not started "
            "by the NVIDIA container runtime"),
])
def test_a_container_without_gpus_says_what_the_runtime_did(tmp_path: Path, app_dir: Path, visible: str, why: str):
    env = container(tmp_path, [], visible)
    view = gpuserve("devices", env=env)
    assert view.returncode == 0 and why in view.stdout
    assert "--gpus all" in view.stdout and "nvidia.com/gpu" in view.stdout
    # The planner's CPU fallback (the warning `serve` logs) carries the same reason.
    fallback = json.loads(gpuserve("plan", "app:One", "--json", env=env, cwd=app_dir).stdout)["fallback_reason"]
    assert why in fallback


def test_outside_a_container_the_variable_selects_nothing_and_gpuserve_says_so(tmp_path: Path):
    by_index = gpuserve("devices", "--json", env=container(tmp_path, HOST, "1"))
    assert len(json.loads(by_index.stdout)) == 4  # every GPU: NVML and CUDA never read the variable
    assert ("warning: NVIDIA_VISIBLE_DEVICES='1' has not acted here: it lists 1 device(s), yet 4 GPUs are "
            "visible") in by_index.stderr
    assert "Limit the GPUs gpuserve uses with CUDA_VISIBLE_DEVICES instead" in by_index.stderr
    by_uuid = gpuserve("devices", env=container(tmp_path, HOST[:2], HOST[0]["uuid"]))
    assert f"it does not list {HOST[1]['uuid']}, yet it is visible" in by_uuid.stdout
    asked_none = gpuserve("devices", env=container(tmp_path, HOST[:1], "none"))
    assert "it asks for no GPU, yet 1 GPU(s) are visible" in asked_none.stdout


def test_a_server_in_a_container_serves_on_the_exposed_gpus(tmp_path: Path):
    env = container(tmp_path, EXPOSED, "1,3")
    with serve("placement:TwoWorkers", env=env, log_dir=tmp_path) as server:
        reply = server.post("where", {})
        log = server.log()
    assert reply.status == 200, reply.body
    placed = {0: (HOST[1]["uuid"], "cuda:0"), 1: (HOST[3]["uuid"], "cuda:1")}
    assert (reply.body["uuids"][0], reply.body["device"]) == placed[reply.body["worker"]]
    for worker, (uuid, label) in placed.items():
        assert f"worker {worker}: {label} NVIDIA H100 80GB HBM3 ({uuid})" in log
    assert "the container runtime exposed 2 device(s), numbered 0..1 in here" in log
    assert "WARNING" not in log
