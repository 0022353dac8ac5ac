"""`python -m gpuserve selfcheck`: what of it can run without a GPU.

The whole command needs NVIDIA GPUs; here it must say in one line that there
are none and exit 0. Its parts run for real on small stand-ins: steps are
real processes, pytest writes real JUnit files, and the report is read back.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpuserve.cli.selfcheck import BENCHMARKS, Step, run_steps, steps
from gpuserve.cli.selfcheck_report import summary
from gpuserve.registry import BackendEntry, installed_backends
from gpuserve.testing.pytest_plugin import real_gpu_count
from serving import ROOT


@pytest.mark.skipif(real_gpu_count() > 0, reason="a GPU is here: the command would run every check")
@pytest.mark.parametrize("fake", [False, True])
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path: Path, fake: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSERVE_")}
    if fake:  # simulated GPUs are not GPUs to check
        env["GPUSERVE_FAKE_GPUS"] = str(ROOT / "examples" / "fake-gpus.json")
    done = subprocess.run([sys.executable, "-m", "gpuserve", "selfcheck", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("gpuserve selfcheck: no NVIDIA GPU visible (")
    assert done.stdout.rstrip().endswith("nothing to check on this machine") and done.stderr == ""
    assert not (tmp_path / "out").exists()


def test_it_runs_the_core_each_installed_backends_gpu_tests_and_the_benchmarks(tmp_path: Path) -> None:
    entries = installed_backends()
    plan = steps(ROOT, tmp_path, entries)
    names = [step.name for step in plan]
    expected = ["core"] + [f"backend {e.name}" for e in entries
                           if (ROOT / "backends" / str(e.distribution)).is_dir() and not e.serves_fake_gpus]
    assert names[0] == "core" and set(expected) <= set(names) and names[-1] == "benchmarks"
    assert "backend torch" in names and "backend fake-gpu" not in names  # simulated GPUs: nothing to check
    for step in plan[:-1]:
        folder = Path(step.command[3])
        assert folder.name == "tests" and folder.is_dir()
        assert step.command[4:6] == ("-m", "gpu") and step.junit is not None
    assert plan[-1].command[1:3] == ("-m", "benchmarks") and set(BENCHMARKS) <= set(plan[-1].command)
    assert "device,resnet" in plan[-1].command


def test_tox_has_a_gpu_env_that_runs_it_outside_the_default_run() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    assert "gpu" not in tox["tox"]["env_list"].replace(" ", "").split(",")
    assert "python -m gpuserve selfcheck" in tox["testenv:gpu"]["commands"]


PASSING_AND_NOT = """
    import pytest

    def test_fine():
        pass

    def test_broken():
        assert 1 == 2, "one is not two"

    @pytest.mark.skip(reason="needs two GPUs; this machine shows 1")
    def test_two():
        pass
"""


def test_steps_report_each_test_why_it_failed_or_was_skipped_and_the_benchmark_figures(tmp_path: Path) -> None:
    suite = tmp_path / "repo" / "tests"
    suite.mkdir(parents=True)
    (suite / "test_suite.py").write_text(textwrap.dedent(PASSING_AND_NOT))
    out = tmp_path / "out"
    out.mkdir()
    bench = out / "benchmarks"
    (bench / "run").mkdir(parents=True)
    (bench / "run" / "results.json").write_text(json.dumps(BENCHMARK_RESULTS))
    junit = out / "junit-suite.xml"
    plan = [
        Step("suite", (sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
                       f"--junitxml={junit}"), junit=junit),
        Step("crashes", (sys.executable, "-c", "raise SystemExit(3)")),
        Step("benchmarks", (sys.executable, "-c", "pass"), results=bench),
    ]
    result = run_steps(plan, tmp_path / "repo", out, dict(os.environ), budget=300)
    by_step = {step["name"]: step for step in result["steps"]}
    outcomes = {c["name"].split("::")[-1]: (c["outcome"], c["message"]) for c in by_step["suite"]["checks"]}
    assert outcomes["test_fine"] == ("passed", "")
    assert outcomes["test_broken"][0] == "failed" and "one is not two" in outcomes["test_broken"][1]
    assert outcomes["test_two"] == ("skipped", "needs two GPUs; this machine shows 1")
    assert by_step["suite"]["status"] == "exit 1"
    assert by_step["crashes"]["status"] == "exit 3" and by_step["crashes"]["checks"][0]["outcome"] == "error"
    assert [c["outcome"] for c in by_step["benchmarks"]["checks"]] == ["passed", "passed"]
    assert result["benchmarks"]["resnet"]["ratio"] == 0.94
    assert result["counts"] == {"passed": 3, "failed": 1, "error": 1, "skipped": 1}

    report = {"machine": {"hostname": "gpu-box"}, "started": "now", "driver": {"version": "570.86", "cuda": "12.8"},
              "gpus": [{"label": "cuda:0", "name": "NVIDIA H200", "uuid": "GPU-1"}],
              "backends": [{"name": "torch", "version": "0.1.0", "viable": True, "gpu_devices": 1, "reason": None}],
              "budget_s": 480, **result}
    text = summary(report)
    assert "NVIDIA H200 (GPU-1)" in text and "driver 570.86, CUDA 12.8" in text
    assert "torch 0.1.0 (sees 1 GPU(s))" in text
    assert "served 470 items/s, ratio 0.94 (goal >= 0.9: met)" in text
    assert "FAILED:\n  [suite] " in text and "test_broken: " in text
    assert "SKIPPED:\n  [suite] " in text and "needs two GPUs; this machine shows 1" in text


def test_a_step_left_without_time_is_not_run_and_says_so(tmp_path: Path) -> None:
    result = run_steps([Step("late", (sys.executable, "-c", "pass"))], tmp_path, tmp_path, dict(os.environ), budget=10)
    [step] = result["steps"]
    assert step["status"] == "not run" and "budget is spent" in step["checks"][0]["message"]


def test_a_backend_that_cannot_run_here_is_skipped_with_its_reason(tmp_path: Path) -> None:
    broken = BackendEntry("torch", "gpuserve-torch", "0.1.0", None, "ImportError: libcudart.so.12: cannot open")
    [step] = [s for s in steps(ROOT, tmp_path, [broken]) if s.name == "backend torch"]
    assert step.skip == "backend 'torch' is not viable here: broken plugin: ImportError: libcudart.so.12: cannot open"
    [done] = run_steps([step], ROOT, tmp_path, dict(os.environ), budget=300)["steps"]
    assert done["status"] == "skipped" and done["checks"][0]["outcome"] == "skipped"
    assert done["checks"][0]["message"] == step.skip


BENCHMARK_RESULTS = {
    "results": {
        "device": {"points": [{"backend": "torch", "device": "cuda:0", "model": "mlp"}], "skipped": []},
        "resnet": {"device": "cuda:0", "dtype": "float16", "image_size": 224, "batch_size": 32, "clients": 128,
                   "offline_items_per_s": 500.0, "served_items_per_s": 470.0, "ratio": 0.94, "errors": 0},
    },
    "targets": [{"target": "ResNet-50 (fp16 on GPUs) served items/s / offline items/s, batch 32", "value": 0.94,
                 "op": ">=", "limit": 0.9, "met": True}],
}
