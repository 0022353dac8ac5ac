"""Ray actors on a real two-node cluster: placement, fractional GPUs, plans that cannot fit, a replica
killed under load, arrays through the object store, loopback only, nothing left behind."""

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from conftest import APPS, RAY_ENV
from processes import descendants, listening, wait_gone

from gpuserve.plugin import Settings, Target, import_service, installed_backend
from gpuserve.testing.batching_client import one_row, stats, wait_until
from gpuserve.testing.served import serve, server_env
from gpuserve_ray import RayKind

GiB = 1024**3


def on_ray(cluster, *args):
    return ("--executors", "ray", "--ray-address", cluster.address, *args)


def replicas(server, count):
    """What each of `count` replicas says about itself, asked concurrently until all have answered."""
    seen = {}
    with concurrent.futures.ThreadPoolExecutor(2 * count) as pool:
        for _ in range(50):
            for reply in pool.map(lambda _: server.post("where", {}), range(2 * count)):
                assert reply.status == 200, reply.body
                seen[reply.body["worker"]] = reply.body
            if len(seen) == count:
                return [seen[w] for w in sorted(seen)]
    raise AssertionError(f"only replicas {sorted(seen)} of {count} answered")


def test_replicas_are_placed_across_the_nodes_each_on_its_own_gpu_as_cuda_0_on_loopback_only(ray_cluster, tmp_path):
    with serve("placed:Whole", *on_ray(ray_cluster), cwd=APPS, env=ray_cluster.server_env, log_dir=tmp_path) as server:
        placed = replicas(server, 2)
        sockets = listening(descendants(os.getpid()))  # the cluster's processes, the server, its actors
    assert {r["node"] for r in placed} == set(ray_cluster.gpu_of_node)  # one per node: each has one GPU
    for replica in placed:
        assert replica["cuda_visible_devices"] == "0"  # the node's GPU 0, as Ray numbers it there
        assert replica["device"] == "cuda:0"
        assert replica["planned"] == [ray_cluster.gpu_of_node[replica["node"]]]  # that node's GPU, by UUID
        assert replica["memory_limit"] is None and replica["memory_caps"] == {}
        assert replica["assigned"]["memory"] == GiB  # the host memory the service declared, reserved by Ray
    assert "accelerator_type=H100" in server.log()
    assert server.log().count("batches through a compiled graph") == 2  # on either node, not plain actor calls
    names = {name for _, name in sockets}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::ReplicaAct") for n in names), sockets
    assert all(address.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for address, _ in sockets), sockets


def test_fractional_gpus_pack_two_replicas_on_one_logical_gpu(ray_cluster, tmp_path):
    with serve("placed:Shared", *on_ray(ray_cluster), cwd=APPS, env=ray_cluster.server_env, log_dir=tmp_path) as server:
        placed = replicas(server, 4)
    by_node = collections.defaultdict(list)
    for replica in placed:
        by_node[replica["node"]].append(replica)
    assert sorted(len(group) for group in by_node.values()) == [2, 2]  # four halves on two GPUs
    for node, group in by_node.items():
        uuid = ray_cluster.gpu_of_node[node]
        assert {r["cuda_visible_devices"] for r in group} == {"0"}
        assert all(r["planned"] == [uuid] and r["device"] == "cuda:0" for r in group)
        assert all(r["memory_limit"] == 40 * GiB and r["memory_caps"] == {uuid: 0.5} for r in group)
        assert len({r["pid"] for r in group}) == 2  # two actors, two processes


def run_serve(cluster, *args):
    return subprocess.run([sys.executable, "-m", "gpuserve", "serve", *args], cwd=APPS, env=server_env(cluster.server_env),
                          capture_output=True, text=True, timeout=120)


def test_a_plan_the_cluster_cannot_hold_says_what_was_asked_and_what_each_node_has(ray_cluster):
    out = run_serve(ray_cluster, "placed:Whole", *on_ray(ray_cluster, "--workers", "3"))
    assert out.returncode == 2
    assert ("cannot place the workers on the Ray cluster: asked for 3 worker(s) x 1 GPU (type nvidia-h100, "
            "1.0 GiB memory each), each an actor asking for num_gpus=1, accelerator_type=H100, num_cpus=1, "
            "memory=1.0 GiB") in out.stderr
    assert out.stderr.count("1 GPU (H100), 4 CPU, 2.0 GiB memory: room for 1") == 2
    assert "Write instead one of: workers=2; gpu=0.66; gpu=0 (CPU)" in out.stderr

    out = run_serve(ray_cluster, "placed:WrongType", *on_ray(ray_cluster))
    assert out.returncode == 2
    assert out.stderr.count("room for 0  [not A100]") == 2
    assert "a gpu_type of the cluster's (H100)" in out.stderr


def test_a_replica_killed_under_load_loses_no_request_and_readyz_reports_it_until_replaced(ray_cluster, tmp_path):
    journal = ray_cluster.journal
    total = 400
    with serve("gpuserve.testing.batching_app:Batching", *on_ray(ray_cluster, "--workers", "2"), cwd=APPS,
               env={**RAY_ENV, "BATCH_APPS_DIR": str(journal)}, log_dir=tmp_path) as server:
        # Free executors are handed out in turn: two requests in a row reach both replicas.
        pids = {r["worker"]: r["pid"] for r in (one_row(server, "work", f"who-{i}").body for i in range(2))}
        assert set(pids) == {0, 1}
        victim, victim_key = pids[0], "ray#0.0"
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            load = [pool.submit(one_row, server, "work", f"load-{i}", timeout=90) for i in range(total)]
            wait_until(lambda: sum(f.done() for f in load) >= 40, "the load is under way")
            os.kill(victim, signal.SIGKILL)
            readiness = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                reply = server.get("readyz")
                readiness.append((reply.status, reply.body.get("status"), tuple(reply.body.get("replacing", ()))))
                if readiness[-1][1] == "ready" and any(r[1] == "degraded" for r in readiness):
                    break
                time.sleep(0.01)
            replies = [f.result() for f in load]
        after = stats(server, "work")
        new_pids = {r["worker"]: r["pid"] for r in (one_row(server, "work", f"after-{i}").body for i in range(8))}
    assert (200, "degraded", (victim_key,)) in readiness, readiness  # while the lost replica was rebuilt
    assert readiness[-1] == (200, "ready", ()), readiness
    statuses = collections.Counter(r.status for r in replies)
    # Every request answered, and answered well: what the killed replica was running ran again.
    assert statuses == {200: total}, [r.body for r in replies if r.status != 200][:2]
    assert after["outcomes"]["ok"] == total + 2  # the load and the two "who"
    assert "executor_lost" not in after["outcomes"]
    assert victim not in new_pids.values()


def test_arrays_reach_a_replica_through_the_object_store_read_only(ray_cluster):
    spec = import_service("placed:Arrays", [str(APPS)])
    backend = installed_backend("cpu").cls()
    settings = Settings(executors="ray", ray_address=ray_cluster.address)
    kind = RayKind(Target(spec, "placed:Arrays", backend, settings, dict(os.environ)))
    kind.plan()
    [executor] = kind.executors()
    big, small = np.ones((512, 1024)), np.ones(3)  # 4 MiB: the object store; 24 bytes: inline

    async def scenario():
        await executor.start()
        try:
            return await executor.run("inspect", [{"x": big}, {"x": small}], [json.dumps, json.dumps])
        finally:
            await executor.stop()

    try:
        result = asyncio.run(scenario())
    finally:
        kind.close()
    big_seen, small_seen = (json.loads(outcome) for outcome in result.outcomes)
    for seen, array in ((big_seen, big), (small_seen, small)):
        assert seen["writeable"] is False and seen["sum"] == array.size
        assert "read-only" in seen["in_place"]  # an in-place change raises; a copy is the user's to change
        assert seen["copy_sum"] == 2 * array.size
    assert big.sum() == big.size and small.sum() == small.size  # the sender's arrays are untouched


def test_a_batch_given_up_while_it_runs_leaves_its_replica_serving(ray_cluster, caplog):
    """A batch cancelled mid-run (the server stopping, say) must not wedge the compiled graph behind it."""
    spec = import_service("placed:Naps", [str(APPS)])
    settings = Settings(executors="ray", ray_address=ray_cluster.address)
    kind = RayKind(Target(spec, "placed:Naps", installed_backend("cpu").cls(), settings, dict(os.environ)))
    kind.plan()
    [executor] = kind.executors()

    async def scenario():
        await executor.start()
        try:
            running = asyncio.ensure_future(executor.run("nap", [{"seconds": 1.0}], [json.dumps]))
            await asyncio.sleep(0.3)
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            return await asyncio.wait_for(executor.run("nap", [{"seconds": 0.0}], [json.dumps]), 30)
        finally:
            await executor.stop()

    caplog.set_level(logging.INFO, logger="gpuserve.ray")
    try:
        result = asyncio.run(scenario())
    finally:
        kind.close()
    assert "batches through a compiled graph" in caplog.text  # the path under test, not the fallback
    assert [json.loads(outcome) for outcome in result.outcomes] == [0.0]


def test_a_local_ray_started_by_the_server_ends_with_it(tmp_path, request):
    # A Ray folder of its own: in the tests' folder, Ray would find the test cluster and join it.
    own = tempfile.mkdtemp(prefix="gsl-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**RAY_ENV, "BATCH_APPS_DIR": str(tmp_path), "RAY_TMPDIR": own}
    request.addfinalizer(lambda: shutil.rmtree(own, ignore_errors=True))
    with serve("gpuserve.testing.batching_app:Batching", "--executors", "ray", cwd=APPS, env=env,
               log_dir=tmp_path) as server:
        assert "Ray cluster at 127.0.0.1:" in server.log()
        reply = server.post("whoami", {})
        assert reply.status == 200 and reply.body["pid"] != server.proc.pid
        started = descendants(server.proc.pid)
        assert reply.body["pid"] in started  # the local Ray, and its actor, are the server's own
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
    assert not wait_gone(started, timeout=30)
