"""Each example runs as its README says.

On every machine: each README's `gpuserve plan` commands print exactly what
the README shows (on `examples/fake-gpus.json`), the torch examples serve on
the CPU and answer what their model computes in-process, and the
framework-free one serves on the fake inventory. On NVIDIA GPUs the `gpu`
tests serve them on the real devices (`python -m gpuserve selfcheck` runs
them); TensorFlow's and CuPy's examples are tested in their backends' suites.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gpuserve.testing.served import serve
from serving import ROOT

torch = pytest.importorskip("torch")
EXAMPLES = ROOT / "examples"
FAKE = EXAMPLES / "fake-gpus.json"
ROW = [0.1 * i for i in range(1, 17)]


def example(folder: str) -> ModuleType:
    """An example's app.py, imported under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"example_{folder.replace('-', '_')}", EXAMPLES / folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_commands() -> list[tuple[str, str, list[str]]]:
    """(folder, command, output lines) for each `$ ... gpuserve plan ...` a README shows.

    The examples' READMEs run from their own folder; the top-level README and
    FAKE_GPUS.md say `$ cd examples/<folder>` first.
    """
    documents = [(readme, readme.parent.name) for readme in sorted(EXAMPLES.glob("*/README.md"))]
    documents += [(ROOT / "README.md", None), (ROOT / "gpuserve" / "testing" / "FAKE_GPUS.md", None)]
    found = []
    for document, folder in documents:
        for block in re.findall(r"```sh\n(.*?)```", document.read_text(), re.DOTALL):
            for command, output in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", block, re.MULTILINE):
                if command.startswith("cd examples/"):
                    folder = command.removeprefix("cd examples/")
                elif "gpuserve plan" in command:
                    assert folder, f"{document}: a plan command with no example folder to run in"
                    found.append((folder, command, output.splitlines()))
    return found


def run_shown(folder: str, command: str) -> list[str]:
    """Run a README's `VAR=value python -m gpuserve ...` from the example's folder; its stderr, then stdout."""
    words = shlex.split(command)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUSERVE_", "CUDA_"))}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[:3] == ["python", "-m", "gpuserve"], command
    done = subprocess.run([sys.executable, *words[1:]], cwd=EXAMPLES / folder, env=env, capture_output=True,
                          text=True, timeout=120)
    return done.stderr.splitlines() + done.stdout.splitlines()


COMMANDS = readme_commands()


def test_every_example_readme_shows_its_plan_on_the_fake_machine() -> None:
    shown = {folder for folder, _, _ in COMMANDS}
    assert shown >= {"one-gpu", "two-models", "worker-per-gpu", "data-parallel", "mirrored-strategy",
                     "cupy-service", "limit-visible"}
    demo = [c for f, c, _ in COMMANDS if f == "worker-per-gpu" and "--workers 3" in c]
    assert len(demo) == 3  # the example's README, the top-level README and FAKE_GPUS.md show the same demo


@pytest.mark.parametrize(("folder", "command", "output"), COMMANDS, ids=[f"{f}: {c}" for f, c, _ in COMMANDS])
def test_readme_plan_commands_print_what_the_readme_shows(folder: str, command: str, output: list[str]) -> None:
    assert run_shown(folder, command) == output


# -- serving on the CPU (no GPU here) or on the fake inventory -------------------------------------
def cpu_only() -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ""}  # on a GPU machine too: these tests are about the CPU fallback


def test_one_gpu_serves_on_the_cpu_what_its_model_computes(tmp_path: Path) -> None:
    code = example("one-gpu")
    with serve("app:OneGpu", cwd=EXAMPLES / "one-gpu", env=cpu_only(), log_dir=tmp_path) as server:
        reply = server.post("predict", {"x": [ROW, ROW[::-1]]})  # a request carries rows: two here
        assert server.log().count("Serving on the CPU") == 1
    assert reply.status == 200
    for answer, want in zip(reply.body, code.predict(code.build_model(), [ROW, ROW[::-1]], torch.device("cpu")),
                            strict=True):
        assert answer["device"] == "cpu" and answer["label"] == want["label"]
        assert answer["scores"] == pytest.approx(want["scores"], rel=1e-5)


def test_two_models_serve_each_model_on_the_cpu_fallback(tmp_path: Path) -> None:
    code = example("two-models")
    with serve("app:TwoModels", cwd=EXAMPLES / "two-models", env=cpu_only(), log_dir=tmp_path) as server:
        first, second = server.post("first_model", {"x": [ROW]}), server.post("second_model", {"x": [ROW]})
    for reply, (seed, outputs) in ((first, (1, 3)), (second, (2, 2))):
        assert reply.status == 200 and reply.body[0]["device"] == "cpu"
        want = code.run(code.build_model(seed, outputs), [ROW], torch.device("cpu"))[0]["output"]
        assert reply.body[0]["output"] == pytest.approx(want, rel=1e-5)


def test_data_parallel_on_the_cpu_fallback_is_the_model_alone(tmp_path: Path) -> None:
    code = example("data-parallel")
    with serve("app:DataParallel", cwd=EXAMPLES / "data-parallel", env=cpu_only(), log_dir=tmp_path) as server:
        reply = server.post("predict", {"x": [ROW]})
    assert reply.status == 200 and reply.body[0]["replicas"] == ["cpu"]
    with torch.inference_mode():
        want = code.build_model()(torch.tensor([ROW])).tolist()[0]
    assert reply.body[0]["output"] == pytest.approx(want, rel=1e-5)


def test_limit_visible_serves_both_workers_on_the_cpu(tmp_path: Path) -> None:
    with serve("app:Limited", cwd=EXAMPLES / "limit-visible", env=cpu_only(), log_dir=tmp_path) as server:
        seen = collect(server, "where", {"x": 3}, workers=2)
    assert {w: (r["device"], r["doubled"]) for w, r in seen.items()} == {0: ("cpu", 6.0), 1: ("cpu", 6.0)}


def test_watch_gpus_serves_and_reports_its_serving_signals(tmp_path: Path) -> None:
    code = example("watch-gpus")
    with serve("app:Busy", cwd=EXAMPLES / "watch-gpus", env=cpu_only(), log_dir=tmp_path) as server:
        reply = server.post("work", {"seed": [3]})
        metrics = server.get("metrics").body
    assert reply.status == 200 and reply.body[0]["device"] == "cpu"
    with torch.inference_mode():
        assert reply.body[0]["checksum"] == pytest.approx(code.checksum(3, code.build_matrix()), rel=1e-4)
    assert 'gpuserve_outcomes_total{api="work",outcome="ok"} 1.0' in metrics
    assert "gpuserve_gpu_" not in metrics  # no GPU was planned


def test_worker_per_gpu_serves_on_the_fake_inventory_each_worker_alone_on_its_gpu(tmp_path: Path) -> None:
    gpus = json.loads(FAKE.read_text())
    with serve("app:WorkerPerGpu", "--workers", "3", cwd=EXAMPLES / "worker-per-gpu",
               env={"GPUSERVE_FAKE_GPUS": str(FAKE)}, log_dir=tmp_path) as server:
        seen = collect(server, "where", {}, workers=3)
        log = server.log()
    assert "backend fake-gpu" in log and "isolation process" in log
    mig = gpus[3]["mig"][0]["uuid"]
    assert [seen[w]["gpu"] for w in range(3)] == [mig, gpus[0]["uuid"], gpus[1]["uuid"]]
    assert len({r["pid"] for r in seen.values()}) == 3
    for answer in seen.values():
        assert answer["device"] == "cuda:0" and answer["cuda_visible_devices"] == answer["gpu"]


def collect(server, api: str, body: dict, workers: int, attempts: int = 80) -> dict[int, dict]:
    """Ask `api` concurrently until every worker has answered; their answers by worker."""
    seen: dict[int, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(attempts // 4):
            for reply in pool.map(lambda _: server.post(api, body), range(4)):
                assert reply.status == 200, reply.body
                seen[reply.body["worker"]] = reply.body
            if len(seen) == workers:
                break
    assert len(seen) == workers, f"only workers {sorted(seen)} answered"
    return seen


# -- on real GPUs (python -m gpuserve selfcheck) ----------------------------------------------------
def real_inventory():
    from gpuserve.devices import FAKE_GPUS_ENV, discover

    return discover({k: v for k, v in os.environ.items() if k != FAKE_GPUS_ENV})


def plain_gpus(at_least: int) -> list:
    """The real whole GPUs this process enumerates (a MIG device cannot be one of a worker's two)."""
    gpus = [d for d in real_inventory().enumerated if not d.is_mig]
    if len(gpus) < at_least:
        pytest.skip(f"needs {at_least} GPUs without MIG; this machine shows {len(gpus)}")
    return gpus


def on_gpu(reply_output: list[float], want: list[float]) -> None:
    # fp32 on the GPU: other kernels, other rounding; not another model.
    assert reply_output == pytest.approx(want, rel=1e-3, abs=1e-3)


@pytest.mark.gpu
def test_one_gpu_on_a_gpu(tmp_path: Path) -> None:
    code = example("one-gpu")
    with serve("app:OneGpu", cwd=EXAMPLES / "one-gpu", log_dir=tmp_path) as server:
        reply = server.post("predict", {"x": [ROW]})
        assert "Serving on the CPU" not in server.log()
    assert reply.status == 200 and reply.body[0]["device"] == "cuda:0"
    on_gpu(reply.body[0]["scores"], code.predict(code.build_model(), [ROW], torch.device("cpu"))[0]["scores"])


@pytest.mark.gpu
def test_two_models_on_cuda_0_and_cuda_1(tmp_path: Path) -> None:
    plain_gpus(2)
    code = example("two-models")
    with serve("app:TwoModels", cwd=EXAMPLES / "two-models", log_dir=tmp_path) as server:
        first, second = server.post("first_model", {"x": [ROW]}), server.post("second_model", {"x": [ROW]})
    assert (first.body[0]["device"], second.body[0]["device"]) == ("cuda:0", "cuda:1")
    on_gpu(first.body[0]["output"], code.run(code.build_model(1, 3), [ROW], torch.device("cpu"))[0]["output"])
    on_gpu(second.body[0]["output"], code.run(code.build_model(2, 2), [ROW], torch.device("cpu"))[0]["output"])


@pytest.mark.gpu
def test_worker_per_gpu_each_process_sees_its_own_gpu_as_cuda_0(tmp_path: Path) -> None:
    inventory = real_inventory()
    workers = min(2, len(inventory.devices))
    with serve("app:WorkerPerGpu", "--workers", str(workers), cwd=EXAMPLES / "worker-per-gpu",
               log_dir=tmp_path) as server:
        seen = collect(server, "where", {}, workers=workers)
    assert len({r["gpu"] for r in seen.values()}) == workers
    for answer in seen.values():
        assert answer["device"] == "cuda:0" and answer["cuda_visible_devices"] == answer["gpu"]
        assert answer["gpu"] in {d.uuid for d in inventory.devices}


@pytest.mark.gpu
def test_data_parallel_over_two_gpus(tmp_path: Path) -> None:
    plain_gpus(2)
    code = example("data-parallel")
    rows = [[(i + j) / 10 for j in range(code.FEATURES)] for i in range(32)]
    with serve("app:DataParallel", cwd=EXAMPLES / "data-parallel", log_dir=tmp_path) as server:
        reply = server.post("predict", {"x": rows})  # one request of 32 rows: split over both GPUs
    assert reply.status == 200
    with torch.inference_mode():
        want = code.build_model()(torch.tensor(rows)).tolist()
    for answer, expected in zip(reply.body, want, strict=True):
        assert answer["replicas"] == ["cuda:0", "cuda:1"]
        on_gpu(answer["output"], expected)


@pytest.mark.gpu
def test_cuda_visible_devices_limits_the_server(tmp_path: Path) -> None:
    count = len(real_inventory().devices)
    visible, workers = ("1,2", 2) if count >= 3 else ("1,0", 2) if count == 2 else ("0", 1)
    allowed = real_inventory_under(visible)
    with serve("app:Limited", "--workers", str(workers), cwd=EXAMPLES / "limit-visible",
               env={"CUDA_VISIBLE_DEVICES": visible}, log_dir=tmp_path) as server:
        seen = collect(server, "where", {"x": 3}, workers=workers)
    planned = [seen[w]["gpu"] for w in range(workers)]
    assert planned == [d.uuid for d in allowed[:workers]]  # in the order the variable lists them
    for worker, answer in seen.items():
        assert answer["device"] == f"cuda:{worker}" and answer["doubled"] == 6.0
        assert answer["cuda_visible_devices"] == ",".join(planned)  # narrowed to the planned GPUs


def real_inventory_under(visible: str) -> list:
    from gpuserve.devices import FAKE_GPUS_ENV, discover

    env = {k: v for k, v in os.environ.items() if k != FAKE_GPUS_ENV}
    return list(discover({**env, "CUDA_VISIBLE_DEVICES": visible}).devices)


@pytest.mark.gpu
def test_watching_a_serving_gpu_in_its_metrics(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    with serve("app:Busy", cwd=EXAMPLES / "watch-gpus", log_dir=tmp_path) as server:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: server.post("work", {"seed": [i]}), range(64)))
        metrics = server.get("metrics").body
        devices = json.loads(subprocess.run([sys.executable, "-m", "gpuserve", "devices", "--json"],
                                            capture_output=True, text=True, timeout=60, check=True).stdout)
    assert {r.status for r in replies} == {200} and replies[0].body[0]["device"] == "cuda:0"
    gpu = real_inventory().devices[0]  # the one planned: the first GPU, as the plan in the log says
    total = re.search(rf'gpuserve_gpu_memory_total_bytes{{name="[^"]*",uuid="{gpu.uuid}"}} (\S+)', metrics)
    used = re.search(rf'gpuserve_gpu_memory_used_bytes{{name="[^"]*",uuid="{gpu.uuid}"}} (\S+)', metrics)
    assert total and float(total.group(1)) == gpu.memory_total
    assert used and 0 < float(used.group(1)) <= gpu.memory_total
    assert [d for d in devices if d["uuid"] == gpu.uuid][0]["memory_used"] > 0
