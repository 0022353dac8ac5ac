"""torch on real GPUs, end to end: what CUDA_VISIBLE_DEVICES means to torch, worker processes,
memory caps, out-of-memory splitting. Every test needs a GPU (`gpu` marker; `python -m gpuserve selfcheck`).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from gpuserve.plugin import FAKE_GPUS_ENV, discover, uuid_key
from gpuserve.testing.batching_client import post_all, queued, stats, wait_until_running
from gpuserve.testing.served import Server, serve

pytestmark = pytest.mark.gpu

_TORCH_VIEW = """
import json, torch
uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
print(json.dumps(uuids))
"""


def real_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAKE_GPUS_ENV, "CUDA_VISIBLE_DEVICES")}
    return {**env, **extra}


def torch_view(visible: str) -> list[str]:
    """The UUIDs torch's cuda:0, cuda:1, … have in a fresh process under CUDA_VISIBLE_DEVICES=visible."""
    done = subprocess.run([sys.executable, "-c", _TORCH_VIEW], env=real_env(CUDA_VISIBLE_DEVICES=visible),
                          capture_output=True, text=True, check=True, timeout=180)
    return [uuid_key(uuid) for uuid in json.loads(done.stdout)]


def gpuserve_view(visible: str) -> list[str]:
    return [uuid_key(d.uuid) for d in discover(real_env(CUDA_VISIBLE_DEVICES=visible)).enumerated]


def plain_gpus() -> list:
    gpus = [d for d in discover(real_env()).enumerated if not d.is_mig]
    if not gpus:
        pytest.skip("no whole GPU without MIG is enumerated here")
    return gpus


def unique_prefix(uuid: str, others: list[str]) -> str:
    """The shortest prefix of `uuid` with at least 8 hex digits that no other UUID starts with."""
    for length in range(len("GPU-") + 8, len(uuid) + 1):
        if not any(other.startswith(uuid[:length]) for other in others if other != uuid):
            return uuid[:length]
    return uuid


def test_cuda_visible_devices_means_to_torch_what_it_means_to_gpuserve() -> None:
    gpus = plain_gpus()
    uuids = [d.uuid for d in gpus]
    forms = [str(gpus[0].index), uuids[0], unique_prefix(uuids[0], uuids)]
    for device in gpus[1:]:
        forms += [str(device.index), device.uuid, unique_prefix(device.uuid, uuids)]
    if len(gpus) >= 2:
        forms += [f"{gpus[1].index},{gpus[0].index}", f"{gpus[1].uuid},{unique_prefix(uuids[0], uuids)}",
                  f"{gpus[0].index},99,{gpus[1].index}"]  # cut short at 99: the first alone
    for visible in forms:
        assert torch_view(visible) == gpuserve_view(visible), f"CUDA_VISIBLE_DEVICES={visible!r}"


def write_service(folder: Path, source: str) -> Path:
    (folder / "svc.py").write_text(textwrap.dedent(source))
    return folder


def answers(server: Server, api: str, body: dict, workers: int, attempts: int = 120) -> dict[int, dict]:
    seen: dict[int, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(attempts // 4):
            for reply in pool.map(lambda _: server.post(api, body), range(4)):
                assert reply.status == 200, reply.body
                seen[reply.body["worker"]] = reply.body
            if len(seen) == workers:
                return seen
    raise AssertionError(f"only workers {sorted(seen)} answered")


def test_each_worker_process_sees_exactly_its_gpu_as_cuda_0(tmp_path: Path) -> None:
    gpus = discover(real_env()).devices
    folder = write_service(tmp_path, """
        import os
        import gpuserve, torch

        @gpuserve.service(resources={"gpu": 1}, isolation="process", backend="torch")
        class Own:
            def __init__(self):
                self.x = torch.ones(4, device=gpuserve.context().device)

            @gpuserve.api
            def seen(self) -> dict:
                return {"worker": gpuserve.context().worker_index, "count": torch.cuda.device_count(),
                        "current": torch.cuda.current_device(), "x_on": str(self.x.device),
                        "uuid": str(torch.cuda.get_device_properties(0).uuid),
                        "planned": gpuserve.context().planned[0].uuid,
                        "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    """)
    with serve("svc:Own", "--workers", str(len(gpus)), cwd=folder, env=real_env(), log_dir=tmp_path) as server:
        seen = answers(server, "seen", {}, workers=len(gpus))
    assert sorted(a["planned"] for a in seen.values()) == sorted(d.uuid for d in gpus)
    for answer in seen.values():
        assert (answer["count"], answer["current"], answer["x_on"]) == (1, 0, "cuda:0")
        assert uuid_key(answer["uuid"]) == uuid_key(answer["planned"]) and answer["visible"] == answer["planned"]


HALVES = """
    import os
    import gpuserve, torch

    @gpuserve.service(resources={"gpu": 0.5}, workers=2, backend="torch")
    class Halves:
        @gpuserve.api
        def allocate(self, fraction: float) -> dict:
            total = torch.cuda.get_device_properties(0).total_memory
            block = torch.empty(int(fraction * total), dtype=torch.uint8, device="cuda:0")
            del block
            torch.cuda.empty_cache()
            return {"worker": gpuserve.context().worker_index, "pid": os.getpid()}
"""


def test_two_half_gpu_workers_are_each_held_to_their_cap(tmp_path: Path) -> None:
    folder = write_service(tmp_path, HALVES)
    with serve("svc:Halves", cwd=folder, env=real_env(), log_dir=tmp_path) as server:
        before = answers(server, "allocate", {"fraction": 0.3}, workers=2)
        too_much = server.post("allocate", {"fraction": 0.6})  # fits the GPU, not the worker's half
        after = answers(server, "allocate", {"fraction": 0.3}, workers=2)
        log = server.log()
    assert "isolation process" in log and log.count("memory cap") == 2
    assert before[0]["pid"] != before[1]["pid"]
    assert too_much.status == 500 and too_much.body["type"] == "OutOfMemoryError"
    # The failure stayed in its worker: both still serve, in the same processes.
    assert {w: a["pid"] for w, a in after.items()} == {w: a["pid"] for w, a in before.items()}


SPLITS = """
    import time
    import gpuserve, torch

    @gpuserve.service(resources={"gpu": 1}, backend="torch")
    class Splits:
        def __init__(self):
            free, _ = torch.cuda.mem_get_info()
            self.row_bytes = free // 6  # 4 rows fit, 8 do not

        @gpuserve.api
        def hold(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

        @gpuserve.api(batchable=True, max_batch_size=16, max_latency_ms=120_000)
        def grow(self, item: list[str]) -> list[int]:
            block = torch.empty(len(item) * self.row_bytes, dtype=torch.uint8, device=gpuserve.context().device)
            del block
            return [len(item)] * len(item)
"""


def test_an_out_of_memory_batch_is_split_and_retried(tmp_path: Path) -> None:
    folder = write_service(tmp_path, SPLITS)
    with serve("svc:Splits", "--queue-size", "64", cwd=folder, env=real_env(), log_dir=tmp_path) as server:
        holder = threading.Thread(target=server.post, args=("hold", {"seconds": 2.0}))
        holder.start()
        wait_until_running(server, "hold")  # the one executor is busy: the 16 rows queue up together
        replies = post_all(server, "grow", [f"row-{i}" for i in range(16)])  # a request of one row each
        queued(server, "grow", 16)
        results = [f.result(timeout=120) for f in replies]
        holder.join()
        ceiling = stats(server, "grow")["batch_ceiling"]
    assert {r.status for r in results} == {200}
    assert [r.body for r in results] == [4] * 16  # tried as 16 rows, then 8, both out of memory; ran as 4 x 4
    assert list(ceiling.values()) == [4]
