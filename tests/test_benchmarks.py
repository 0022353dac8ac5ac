"""The benchmark suite's own logic on tiny sizes: it runs, writes the documented JSON, draws the plots.

No test here asserts a speed: these sizes say nothing about one.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `benchmarks` runs from the repository root; it is not installed

from benchmarks import loadgen, overload, report, streaming  # noqa: E402
from benchmarks.__main__ import SCHEMA  # noqa: E402
from benchmarks.config import DEFAULT_SCENARIOS  # noqa: E402
from benchmarks.hotpath import BATCHER_STEP  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
TOP_KEYS = {"schema", "started", "finished", "command", "config", "cpu_only", "environment", "results",
            "ratios", "targets", "plots"}
ENVIRONMENT_KEYS = {"machine", "cpu", "gpus", "gpu_source", "no_gpu_reason", "cuda_visible_devices", "driver",
                    "event_loop", "loadgen", "packages", "git"}
SERVE_KEYS = {"workload", "path", "concurrency", "tool", "rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "requests",
              "errors", "cpu_us_per_request", "loop_cpu_us_per_request", "mean_batch", "rounds"}
RESNET_KEYS = {"model", "dtype", "device", "image_size", "batch_size", "clients", "offline_items_per_s",
               "served_items_per_s", "ratio", "mean_batch", "p50_ms", "p99_ms", "errors", "rounds"}
STREAMING_KEYS = {"workload", "concurrency", "values_per_s", "streams", "errors", "first_value_p50_ms",
                  "first_value_p99_ms", "cpu_us_per_value", "rounds"}
DEVICE_KEYS = {"backend", "version", "device", "device_name", "model", "batch_size", "iterations", "batch_ms",
               "items_per_s", "memory_bytes", "memory_kind", "timing"}


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG


def test_a_tiny_run_of_every_scenario_writes_the_documented_json_and_plots(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--duration", "0.3", "--concurrency", "1,4",
         "--backends", "torch", "--loadgen", "python",
         "--scenarios", ",".join(s for s in DEFAULT_SCENARIOS if s != "chaos"),
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first_lines = done.stdout.splitlines()[:2]
    assert any(line.startswith(("NO GPU", "GPUs:")) for line in first_lines), done.stdout
    assert "targets" in done.stdout

    (run_dir,) = tmp_path.iterdir()
    document = json.loads((run_dir / "results.json").read_text())
    assert TOP_KEYS <= document.keys()
    assert document["schema"] == SCHEMA
    assert ENVIRONMENT_KEYS <= document["environment"].keys()
    assert document["environment"]["git"]["commit"]
    assert document["cpu_only"] == (not document["environment"]["gpus"])

    results = document["results"]
    assert {"device", "serve", "baseline", "v2", "streaming", "scaling", "hotpath", "resnet", "overload",
            "threads"} <= results.keys()
    assert "soak" not in results  # ten minutes: only when asked for
    assert results["device"]["points"] and all(DEVICE_KEYS <= p.keys() for p in results["device"]["points"])
    assert {p["model"] for p in results["device"]["points"]} == {"mlp", "conv"}
    for side, workloads in (("serve", {"echo", "echo_batched", "echo_access_log", "mlp", "mlp_batched",
                                       "mlp_batched_process"}),
                            ("baseline", {"echo", "mlp", "mlp_batched"})):
        rows = results[side]
        assert {r["workload"] for r in rows} == workloads
        assert {r["concurrency"] for r in rows} == {1, 4}
        assert all(SERVE_KEYS <= r.keys() and r["rps"] > 0 and r["errors"] == 0 for r in rows)
    assert [r["executors"] for r in results["scaling"]] == [1, 2]
    assert any(r["step"].startswith("Batcher") for r in results["hotpath"])
    net = results["resnet"]
    assert RESNET_KEYS <= net.keys() and net["batch_size"] == 32 and net["errors"] == 0
    assert net["offline_items_per_s"] > 0 and net["served_items_per_s"] > 0 and net["ratio"] > 0
    assert net["dtype"] == ("float16" if document["environment"]["gpus"] else "float32")

    overload = results["overload"]
    assert {(r["layout"], r["clients"]) for r in overload["rows"]} == {
        (layout, clients) for layout in ("threads", "processes", "floor", "floor-echo")
        for clients in (64, 4 * 32, 20 * 32)}
    for row in overload["rows"]:  # every request sent is accounted for, by its fate
        assert sum(row["outcomes"].values()) == row["requests"] > 0 and row["server_rss_mib"] > 0
    # gpuserve's layouts x multiples x what clients do with Retry-After; the floors' multiples (never a 503)
    assert len(overload["ratios"]) == 2 * 2 * 2 + 2 * 2
    assert all(r["floor_ratio"] > 0 for r in overload["ratios"] if not r["layout"].startswith("floor"))
    assert [r["workload"] for r in results["threads"]["rows"]] == ["example_derived", "example_torch_default"]

    assert len(document["ratios"]) == 6 * 2  # every gpuserve workload at every concurrency, beside its baseline
    assert all(r["rps_ratio"] > 0 for r in document["ratios"])
    # The chaos scenario's five are not measured here; per overload point: goodput, answers.
    assert len(document["targets"]) == 15 + 8 * 2
    v2 = results["v2"]  # the v2 protocol beside raw aiohttp and the hand-written batcher (Triton only when given)
    assert {(r["workload"], r["against"]) for r in v2["ratios"]} == {
        ("image_v2", "image"), ("mlp_native", "mlp_batched"), ("mlp_v2_json", "mlp_batched"),
        ("mlp_v2_binary", "mlp_batched")}
    assert all(r["rps_ratio"] > 0 and r["errors"] == 0 for r in v2["ratios"]) and v2["triton"] is False
    kinds = results["scaling_kinds"]  # Ray beside processes where gpuserve-ray is installed; said so where not
    assert "gpuserve-ray is not installed" in kinds["skipped"] if "skipped" in kinds else kinds["rps_ratio"] > 0
    streamed = results["streaming"]["rows"]
    assert {(r["workload"], r["concurrency"]) for r in streamed} == {
        (w, c) for w in ("gpuserve", "gpuserve_process", "baseline") for c in (1, 64)}
    assert all(STREAMING_KEYS <= r.keys() and r["values_per_s"] > 0 and r["errors"] == 0 for r in streamed)
    assert len(results["streaming"]["ratios"]) == 2 * 2
    assert set(document["plots"]) == {"device_throughput.png", "device_memory.png", "serve_latency.png",
                                      "serve_throughput.png", "gpuserve_vs_baseline.png", "scaling.png",
                                      "overload.png"}
    assert all(_png(run_dir / name) for name in document["plots"])



def test_a_tiny_soak_reports_each_interval_and_its_drift(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--duration", "0.5", "--scenarios", "soak",
         "--loadgen", "python", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = tmp_path.iterdir()
    document = json.loads((run_dir / "results.json").read_text())
    soak = document["results"]["soak"]
    assert 0 < soak["rate_rps"] < soak["capacity_rps"]
    assert len(soak["intervals"]) == 3 and all(i["server_rss_mib"] for i in soak["intervals"])
    assert sum(sum(i["answers"].values()) for i in soak["intervals"]) == soak["sent"]
    assert {c["target"] for c in document["targets"] if c["value"] is not None} == {
        "soak RSS, last minute / first minute", "soak p99, last minute / first minute"}
    assert document["plots"] == ["soak.png"] and _png(run_dir / "soak.png")


SERVED = ("echo", "echo_batched", "mlp", "mlp_batched", "mlp_batched_process")


def _serve_rows(side: str, rps: float, **own: float) -> list[dict]:
    return [
        {"workload": w, "path": f"/{w}", "concurrency": 64, "tool": "python", "rps": own.get(w, rps), "p50_ms": 10.0,
         "p90_ms": 15.0, "p99_ms": 19.0, "mean_ms": 11.0, "requests": 1000, "errors": 0, "cpu_us_per_request": 100.0,
         "loop_cpu_us_per_request": 80.0, "mean_batch": None, "rounds": []}
        for w in (SERVED if side == "serve" else ("echo", "mlp", "mlp_batched"))
    ]


def test_ratios_targets_plots_and_table_from_figures(tmp_path: Path) -> None:
    results = {
        # The thread-isolated MLP beats the baseline, the process-isolated one does not:
        # the MLP target reads the latter.
        "serve": _serve_rows("serve", 950.0, mlp_batched=1050.0, mlp_batched_process=990.0),
        "baseline": _serve_rows("baseline", 1000.0),
        "hotpath": [{"step": BATCHER_STEP, "clients": 64, "us_per_item": 12.0,
                     "overhead_us_per_item": 11.0}],
        "scaling_kinds": {"rps_ratio": 0.75, "extra_overhead_us_per_batch": 900.0, "rows": [
            {"executors": kind, "concurrency": 64, "rps": rps, "p50_ms": 2.0, "p99_ms": 4.0, "mean_batch": 32.0,
             "batch_turn_us": turn, "exec_us_per_batch": 150.0, "overhead_us_per_batch": turn - 150.0}
            for kind, rps, turn in (("process", 1000.0, 2000.0), ("ray", 750.0, 2900.0))]},
    }
    compared = report.ratios(results)
    assert {(r["workload"], r["baseline"]) for r in compared} == {
        ("echo", "echo"), ("echo_batched", "echo"), ("mlp", "mlp"), ("mlp_batched", "mlp_batched"),
        ("mlp_batched_process", "mlp_batched")}
    expected = {"mlp_batched": 1.05, "mlp_batched_process": 0.99}
    assert all(r["rps_ratio"] == pytest.approx(expected.get(r["workload"], 0.95)) for r in compared)

    results["resnet"] = {"ratio": 0.93}
    checks = {c["target"].split(" ")[0] + c["op"]: c["met"] for c in report.targets(results, compared)
              if not c["target"].startswith("chaos")}
    assert checks == {"echo>=": True, "echo_batched>=": True, "batched>=": False, "batched<=": True, "v2>=": None,
                      "Ray>=": True, "batcher<=": True, "ResNet-50>=": True, "streaming>=": None}
    del results["resnet"]

    plots = report.plots(tmp_path, results, compared)
    assert plots == ["serve_latency.png", "serve_throughput.png", "gpuserve_vs_baseline.png"]
    assert all(_png(tmp_path / name) for name in plots)

    table = report.summary({"results": results, "ratios": compared, "targets": report.targets(results, compared)})
    assert "mlp_batched_process" in table and "NO" in table
    assert "Ray / process req/s 0.75, Ray's extra overhead per batch 900 us" in table


def test_overload_ratios_set_gpuserve_beside_the_floor_and_only_gpuserve_has_targets() -> None:
    def row(layout: str, clients: int, mode: str, ok_rps: float, number: int) -> dict:
        return {"layout": layout, "clients": clients, "mode": mode, "multiple": clients / 32, "round": number,
                "ok_rps": ok_rps, "ok_p99_ms": 5.0, "slowest_answer_ms": 9.0, "outcomes": {"200": 10},
                "unanswered": 0, "server_rss_mib": 100.0}

    rows = [row("processes", 64, "ignore", 1000.0, 0), row("processes", 128, "ignore", 700.0, 0),
            row("processes", 128, "honour", 900.0, 0),
            row("floor", 64, "ignore", 1000.0, 0), row("floor", 128, "ignore", 500.0, 0),
            row("floor-echo", 64, "ignore", 2000.0, 0), row("floor-echo", 128, "ignore", 800.0, 0)]
    measured = {(r["layout"], r["mode"]): r for r in overload.ratios(rows)}
    assert measured[("processes", "ignore")]["goodput_ratio"] == pytest.approx(0.7)
    assert measured[("processes", "ignore")]["floor_ratio"] == pytest.approx(1.4)
    assert measured[("processes", "honour")]["floor_ratio"] == pytest.approx(1.8)
    assert measured[("floor", "ignore")]["goodput_ratio"] == pytest.approx(0.5)
    assert measured[("floor", "ignore")]["floor_ratio"] is None
    assert measured[("floor-echo", "ignore")]["goodput_ratio"] == pytest.approx(0.4)
    assert measured[("floor-echo", "ignore")]["floor_ratio"] is None

    checks = [c["target"] for c in report.targets({"overload": {"ratios": list(measured.values())}}, [])]
    overloaded = [t for t in checks if t.startswith("overload")]
    assert len(overloaded) == 2 * 2 and not any("floor" in t for t in overloaded)


def test_streaming_targets_read_the_round_by_round_ratios_of_the_default_isolation() -> None:
    def row(workload, concurrency, *rates):
        return {"workload": workload, "concurrency": concurrency, "values_per_s": rates[0], "cpu_us_per_value": 2.0,
                "errors": 0, "rounds": [{"values_per_s": rate} for rate in rates]}

    rows = [row("baseline", 1, 100.0, 200.0, 100.0), row("gpuserve", 1, 90.0, 150.0, 70.0),
            row("gpuserve_process", 1, 40.0, 40.0, 40.0), row("baseline", 64, 100.0, 100.0, 100.0),
            row("gpuserve", 64, 200.0, 200.0, 200.0)]
    compared = streaming.ratios(rows)
    assert {(r["workload"], r["concurrency"]): r["ratio"] for r in compared} == {
        ("gpuserve", 1): pytest.approx(0.75), ("gpuserve_process", 1): pytest.approx(0.4), ("gpuserve", 64): 2.0}
    checks = [c for c in report.targets({"streaming": {"rows": rows, "ratios": compared}}, []) if "stream" in c["target"]]
    assert [(c["value"], c["met"]) for c in checks] == [(pytest.approx(0.75), False), (2.0, True)]
    assert "gpuserve_process" in report.summary({"results": {"streaming": {"ratios": compared}}, "targets": checks})


def test_the_tail_target_compares_each_round_with_its_own_median() -> None:
    def rounds(*pairs):
        return [{"rps": 1.0, "p50_ms": p50, "p90_ms": p50, "p99_ms": p99, "errors": 0, "duration_s": 1.0,
                 "cpu_s": None, "loop_cpu_s": None} for p50, p99 in pairs]

    def tail(*pairs):
        row = {**_serve_rows("serve", 1.0)[-1], "rounds": rounds(*pairs)}
        [check] = [c for c in report.targets({"serve": [row]}, []) if "p99" in c["target"]]
        return check

    # A fast second and a slow one: each round against itself, not one's p99 against the other's p50.
    assert tail((4, 6), (4, 6), (10, 19), (10, 19))["value"] == pytest.approx(1.7)
    assert tail((4, 6), (4, 6), (10, 19), (10, 19))["met"] is True
    assert tail((4, 9), (4, 9), (10, 25))["met"] is False


CHAOS_KEYS = {"fault", "what", "flags", "clients", "requests", "answered", "lost", "not_connected", "rps_before",
              "recovery_s", "readyz", "readyz_not_200_from_s", "readyz_200_again_s", "detected_s", "detected"}


def test_a_quick_chaos_run_applies_its_faults_under_load_and_reports_each(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--scenarios", "chaos", "--faults", "oom_item,group_ctrl_c",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = tmp_path.iterdir()
    document = json.loads((run_dir / "results.json").read_text())
    rows = {r["fault"]: r for r in document["results"]["chaos"]}
    assert set(rows) == {"oom_item", "group_ctrl_c"} and all(CHAOS_KEYS <= r.keys() for r in rows.values())
    assert all(r["requests"] > 0 and r["detected"] for r in rows.values())
    assert rows["oom_item"]["fault_answer"] == 500 and rows["oom_item"]["fault_type"] == "MemoryError"
    assert rows["group_ctrl_c"]["exit_code"] == 0 and rows["group_ctrl_c"]["workers_rebuilt"] == 0
    checks = {c["target"]: c for c in document["targets"] if c["target"].startswith("chaos")}
    assert len(checks) == 5 and checks["chaos: share of faults detected"]["met"] is True
    assert "chaos: faults under load" in done.stdout


def test_chaos_targets_from_figures() -> None:
    row = {"lost": 0, "detected": True, "exit_s": None, "budget_s": None}
    rows = [{**row, "fault": "oom_item", "recovery_s": 0.5},
            {**row, "fault": "group_ctrl_c", "exit_s": 5.4, "budget_s": 5.0},
            {**row, "fault": "server_killed", "lost": 64, "workers_gone_s": 0.05}]
    checks = {c["target"].split(",")[0]: (c["value"], c["met"]) for c in report.targets({"chaos": rows}, [])
              if c["target"].startswith("chaos")}
    assert checks["chaos: requests lost"] == (0, True)  # the killed server's own losses are its nature
    assert checks["chaos: share of faults detected"] == (1.0, True)
    assert checks["chaos: stops (SIGTERM with a stuck replica"] == (pytest.approx(0.4), True)
    rows[1]["exit_s"] = 6.5
    assert not next(c for c in report.targets({"chaos": rows}, []) if "stops" in c["target"])["met"]


def test_unmeasured_targets_say_so() -> None:
    assert all(c["met"] is None and c["value"] is None for c in report.targets({}, []))


@pytest.fixture
def echo_server() -> Iterator[str]:
    """A plain aiohttp echo on a free port, in a thread of its own."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    found: dict[str, object] = {}

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/json")

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        found["runner"] = runner
        found["port"] = runner.addresses[0][1]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    ready.wait(10)
    yield f"http://127.0.0.1:{found['port']}/echo"
    asyncio.run_coroutine_threadsafe(found["runner"].cleanup(), loop).result(10)  # type: ignore[attr-defined]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.parametrize("tool", ["python", "wrk"])
def test_load_generators_report_the_same_shape(tool: str, echo_server: str) -> None:
    if tool == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed; the suite falls back to the Python client")
    load = loadgen.measure(tool, echo_server, b'{"x": [1.0]}', concurrency=2, duration_s=1.0)
    assert load.tool == tool and load.concurrency == 2
    assert load.requests > 0 and load.errors == 0 and load.rps > 0
    assert 0 < load.p50_ms <= load.p90_ms <= load.p99_ms
