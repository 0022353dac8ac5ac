"""The server obeys the plan, on a fake inventory (the one thing faked: the hardware)."""

import concurrent.futures

from gpuserve.testing import fake_gpu, write_fake_inventory
from serving import serve


def inventory(tmp_path, n=4):
    gpus = [fake_gpu(i) for i in range(n)]
    return gpus, write_fake_inventory(tmp_path / "gpus.json", gpus)


def collect(server, want_workers, attempts=60):
    """Ask `where` concurrently until every worker has answered."""
    seen = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(attempts // 4):
            for reply in pool.map(lambda _: server.post("where", {}), range(4)):
                assert reply.status == 200, reply.body
                seen[reply.body["worker"]] = reply.body
            if len(seen) == want_workers:
                break
    return seen


def test_thread_workers_get_disjoint_planned_gpus_inside_the_inherited_limit(tmp_path):
    gpus, path = inventory(tmp_path)
    env = {"GPUSERVE_FAKE_GPUS": path, "CUDA_VISIBLE_DEVICES": "3,1"}
    with serve("placement:TwoWorkers", env=env, log_dir=tmp_path) as server:
        seen = collect(server, 2)
        log = server.log()
    # Inherited order 3,1: ordinal 0 is GPU 3, ordinal 1 is GPU 1; nothing else is ever used.
    assert seen[0]["uuids"] == [gpus[3]["uuid"]] and seen[1]["uuids"] == [gpus[1]["uuid"]]
    # The server narrowed its own visibility to the union, so cuda:N are exactly the planned GPUs.
    assert seen[0]["cuda_visible_devices"] == f"{gpus[3]['uuid']},{gpus[1]['uuid']}"
    assert seen[0]["device"] == "cuda:0" and seen[1]["device"] == "cuda:1"
    assert seen[0]["pid"] == seen[1]["pid"]
    # The plan is logged once, worker by worker, with names and UUIDs.
    for worker, gpu in ((0, gpus[3]), (1, gpus[1])):
        lines = [l for l in log.splitlines() if f"worker {worker}:" in l]
        assert len(lines) == 1 and gpu["uuid"] in lines[0] and gpu["name"] in lines[0]


def test_process_workers_see_exactly_their_own_gpus_from_cuda_0(tmp_path):
    gpus, path = inventory(tmp_path)
    env = {"GPUSERVE_FAKE_GPUS": path}
    with serve("placement:TwoProcessWorkers", env=env, log_dir=tmp_path) as server:
        seen = collect(server, 2)
    assert seen[0]["pid"] != seen[1]["pid"]
    for worker, pair in ((0, gpus[0:2]), (1, gpus[2:4])):
        info = seen[worker]
        expected = ",".join(g["uuid"] for g in pair)
        assert info["cuda_visible_devices"] == expected  # the child's environment: its devices, no more
        assert info["at_init"]["cuda_visible_devices"] == expected  # already set when __init__ ran
        assert info["devices"] == ["cuda:0", "cuda:1"]
        assert info["uuids"] == [g["uuid"] for g in pair]


def test_process_workers_only_narrow_an_inherited_limit(tmp_path):
    gpus, path = inventory(tmp_path)
    env = {"GPUSERVE_FAKE_GPUS": path, "CUDA_VISIBLE_DEVICES": "0,2,3,1"}
    with serve("placement:TwoProcessWorkers", env=env, log_dir=tmp_path) as server:
        seen = collect(server, 2)
    assert seen[0]["cuda_visible_devices"] == f"{gpus[0]['uuid']},{gpus[2]['uuid']}"
    assert seen[1]["cuda_visible_devices"] == f"{gpus[3]['uuid']},{gpus[1]['uuid']}"


def test_fractional_workers_share_one_gpu_each_capped_in_its_own_process(tmp_path):
    gpus, path = inventory(tmp_path, n=2)
    with serve("placement:HalfGpuEach", env={"GPUSERVE_FAKE_GPUS": path}, log_dir=tmp_path) as server:
        seen = collect(server, 2)
        log = server.log()
    # Memory caps are per process, so sharing workers run as processes by default.
    assert "isolation process" in log
    assert seen[0]["pid"] != seen[1]["pid"]
    for info in seen.values():
        assert info["uuids"] == [gpus[0]["uuid"]]
        assert info["memory_limit"] == gpus[0]["memory_total"] // 2
        assert info["process_memory_caps"] == {gpus[0]["uuid"]: 0.5}
        assert info["cuda_visible_devices"] == gpus[0]["uuid"]


def test_fractional_thread_workers_share_the_process_cap_and_are_warned(tmp_path):
    gpus, path = inventory(tmp_path, n=2)
    with serve("placement:HalfGpuEachAsThreads", env={"GPUSERVE_FAKE_GPUS": path}, log_dir=tmp_path) as server:
        seen = collect(server, 2)
        log = server.log()
    assert seen[0]["pid"] == seen[1]["pid"]
    assert seen[0]["process_memory_caps"] == {gpus[0]["uuid"]: 1.0}  # one process: the sum of the shares
    assert "share one cap" in log


def test_a_plan_that_cannot_fit_stops_the_start_with_its_reason(tmp_path):
    _, path = inventory(tmp_path, n=1)
    import subprocess, sys
    from serving import APPS, server_env

    out = subprocess.run(
        [sys.executable, "-m", "gpuserve", "serve", "placement:TwoWorkers"],
        cwd=APPS, env=server_env({"GPUSERVE_FAKE_GPUS": path}), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "2 worker" in out.stderr and "cuda:0" in out.stderr


def test_require_gpu_refuses_the_cpu_fallback(tmp_path):
    import subprocess, sys
    from serving import ROOT, server_env

    out = subprocess.run(
        [sys.executable, "-m", "gpuserve", "serve", "app:Classifier", "--require-gpu"],
        cwd=ROOT / "examples" / "classifier", env=server_env({"CUDA_VISIBLE_DEVICES": ""}),
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "GPU" in out.stderr


def test_each_executor_thread_has_its_own_device_current(tmp_path):
    gpus, path = inventory(tmp_path, n=2)
    with serve("placement:CurrentDevice", env={"GPUSERVE_FAKE_GPUS": path}, log_dir=tmp_path) as server:
        seen = collect(server, 2)
    for worker in (0, 1):
        assert seen[worker]["current"] == seen[worker]["current_at_init"] == gpus[worker]["uuid"]


def test_a_cut_short_list_is_logged_once_and_named_when_the_workers_cannot_be_placed(tmp_path):
    import subprocess, sys
    from serving import APPS, server_env

    gpus, path = inventory(tmp_path, n=3)
    with serve("placement:TwoWorkers", env={"GPUSERVE_FAKE_GPUS": path, "CUDA_VISIBLE_DEVICES": "2,0,9,1"},
               log_dir=tmp_path) as server:
        seen = collect(server, 2)
        log = server.log()
    assert [seen[w]["uuids"] for w in (0, 1)] == [[gpus[2]["uuid"]], [gpus[0]["uuid"]]]
    assert log.count("CUDA stops at entry '9' (no device has ordinal 9 (ordinals are 0..2))") == 1

    out = subprocess.run(
        [sys.executable, "-m", "gpuserve", "serve", "placement:TwoWorkers"], cwd=APPS,
        env=server_env({"GPUSERVE_FAKE_GPUS": path, "CUDA_VISIBLE_DEVICES": "0,7,1"}),
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "cannot place the workers" in out.stderr and "CUDA stops at entry '7'" in out.stderr.split("cannot place")[1]


def test_without_a_backend_named_the_fake_inventory_is_served_by_fake_gpu(tmp_path):
    gpus, path = inventory(tmp_path, n=2)
    with serve("placement:Unnamed", env={"GPUSERVE_FAKE_GPUS": path}, log_dir=tmp_path) as server:
        seen = collect(server, 2)
        log = server.log()
    assert "backend fake-gpu" in log
    assert {seen[w]["uuids"][0] for w in (0, 1)} == {gpus[0]["uuid"], gpus[1]["uuid"]}


def test_a_framework_backend_on_the_fake_inventory_is_refused_naming_the_flag(tmp_path):
    import subprocess, sys
    from serving import APPS, server_env

    _, path = inventory(tmp_path, n=1)
    out = subprocess.run(
        [sys.executable, "-m", "gpuserve", "serve", "placement:Unnamed", "--backend", "torch", "--workers", "1"],
        cwd=APPS, env=server_env({"GPUSERVE_FAKE_GPUS": path}), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert f"simulated GPUs of GPUSERVE_FAKE_GPUS={path}, which backend 'torch' cannot run on" in out.stderr
    assert "--backend fake-gpu" in out.stderr
