"""`gpuserve selfcheck`: every GPU path, run on this machine's GPUs, with a report.

Run it from a checkout of gpuserve with the backends to check installed
(`tox -e gpu` installs torch, TensorFlow and CuPy with CUDA and runs it):

    python -m gpuserve selfcheck [--out DIR] [--budget SECONDS]

Steps, each in processes of its own:

1. every test marked `gpu` of the core (`tests/`) and of each installed
   backend or plugin that has a suite in the checkout (`backends/<dist>/tests`,
   `plugins/<dist>/tests`; one that is not viable here is reported skipped,
   with its reason), one pytest run per suite: NVML against
   nvidia-smi, the driver's order, `CUDA_VISIBLE_DEVICES` against torch's own
   view, worker processes, memory caps, out-of-memory splitting, each
   framework serving, DataParallel and MirroredStrategy on two GPUs, MIG
   where it is enabled, the examples, the GPU gauges of `/metrics`;
2. the benchmark suite's `device` and `resnet` scenarios.

It writes `selfcheck.json` and `selfcheck.txt` in DIR (the cards, driver and
CUDA version, backends, each check and its result, the ResNet-50 figures)
and prints the text. Exit status 1 when a check failed, else 0. Without a
GPU it says so in one line and exits 0. A fake inventory (`GPUSERVE_FAKE_GPUS`)
is ignored: this checks the real hardware.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

import gpuserve
from gpuserve.cli.selfcheck_report import Check, benchmark_checks, counts, junit_checks, summary
from gpuserve.devices import FAKE_GPUS_ENV, discover
from gpuserve.devices.nvml import driver_versions
from gpuserve.registry import BackendEntry, installed_backends

BUDGET_S = 480.0  # the whole run, on one GPU
STEP_CAP_S = 200.0  # no one step may take the others' time
BENCHMARKS = ("--scenarios", "device,resnet", "--duration", "6", "--rounds", "3")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "selfcheck",
        help="run every GPU check on this machine's GPUs and write a report",
        description="From a gpuserve checkout: run every test marked gpu of the core and of each installed "
        "backend, and the benchmark suite's device and resnet scenarios, on the real GPUs; write "
        "selfcheck.json and selfcheck.txt. Without a GPU, says so and exits 0.",
    )
    parser.add_argument("--out", type=Path, help="folder for the report (default: selfcheck-<UTC time>)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, metavar="SECONDS",
                        help=f"time for the whole run (default {BUDGET_S:g}); a step left without time is not run")
    parser.add_argument("--repo", type=Path, help="the gpuserve checkout (default: the one gpuserve runs from)")
    parser.set_defaults(run=run)


@attrs.frozen
class Step:
    name: str
    command: tuple[str, ...]
    junit: Path | None = None  # pytest's report of this step's tests
    results: Path | None = None  # the benchmark run's folder
    skip: str | None = None  # why the step cannot run here (a backend that is not viable)


def real_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k != FAKE_GPUS_ENV}


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    env = real_environment(os.environ)
    inventory = discover(env)
    if not inventory.devices:
        print(f"gpuserve selfcheck: no NVIDIA GPU visible ({inventory.reason}); nothing to check on this machine")
        return 0
    repo = checkout(args.repo)
    if repo is None:
        print("gpuserve selfcheck: run it from a gpuserve checkout (tests/ and benchmarks/ beside pyproject.toml), "
              "or name one with --repo", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    out = (args.out or Path(f"selfcheck-{started.strftime('%Y%m%d-%H%M%S')}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "machine": {"hostname": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "gpus": [{**attrs.asdict(d), "label": d.label} for d in inventory.devices],
        "driver": driver_versions(),
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        "gpuserve": gpuserve.__version__,
        "backends": backends(repo, env),
        "budget_s": args.budget,
    }
    report.update(run_steps(steps(repo, out, installed_backends()), repo, out, env,
                            args.budget - (time.monotonic() - began)))
    report["seconds"] = time.monotonic() - began  # the whole command, facts included
    (out / "selfcheck.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = summary(report)
    (out / "selfcheck.txt").write_text(text + "\n")
    print(text)
    print(f"\nreport: {out / 'selfcheck.json'}, {out / 'selfcheck.txt'}")
    return 1 if report["counts"]["failed"] or report["counts"]["error"] else 0


def checkout(given: Path | None) -> Path | None:
    """The gpuserve checkout: `given`, else the one gpuserve is imported from (an editable install), else cwd."""
    candidates = [given] if given else [Path(gpuserve.__file__).resolve().parent.parent, Path.cwd()]
    for path in candidates:
        if (path / "tests").is_dir() and (path / "benchmarks").is_dir() and (path / "pyproject.toml").is_file():
            return path.resolve()
    return None


def steps(repo: Path, out: Path, entries: Sequence[BackendEntry]) -> list[Step]:
    """The core's GPU tests, each installed backend's or plugin's with a suite in the checkout, the benchmarks."""
    suites: list[tuple[str, Path, str | None]] = [("core", repo / "tests", None)]
    for entry in entries:
        for kind in ("backends", "plugins"):
            folder = repo / kind / (entry.distribution or "") / "tests"
            # gpuserve's own `cpu` is the core; a backend for simulated GPUs has nothing to check on real ones.
            if entry.distribution not in (None, "gpuserve") and not entry.serves_fake_gpus and folder.is_dir():
                viability = entry.viability()
                skip = None if viability.ok else f"backend {entry.name!r} is not viable here: {viability.reason}"
                suites.append((f"{kind[:-1]} {entry.name}", folder, skip))
    found = []
    for name, folder, skip in suites:
        junit = out / f"junit-{_slug(name)}.xml"
        command = (sys.executable, "-m", "pytest", str(folder), "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                   f"--junitxml={junit}")
        found.append(Step(name, command, junit=junit, skip=skip))
    bench = out / "benchmarks"
    found.append(Step("benchmarks", (sys.executable, "-m", "benchmarks", *BENCHMARKS, "--out", str(bench)),
                      results=bench))
    return found


def backends(repo: Path, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """`gpuserve backends --json` in a process of its own: each backend, viable or why not, the GPUs it sees."""
    done = subprocess.run([sys.executable, "-m", "gpuserve", "backends", "--json"], cwd=repo, env=dict(env),
                          capture_output=True, text=True, timeout=300, check=False)
    try:
        return json.loads(done.stdout)
    except ValueError:
        return [{"name": "?", "version": "?", "viable": False, "gpu_devices": None,
                 "reason": f"gpuserve backends failed ({done.returncode}): {done.stderr.strip()[-500:]}"}]


def run_steps(plan: Sequence[Step], repo: Path, out: Path, env: Mapping[str, str], budget: float) -> dict[str, Any]:
    """Run each step within what is left of `budget`; each step's checks, the benchmark figures, the counts."""
    started = time.monotonic()
    done: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    for step in plan:
        left = budget - (time.monotonic() - started)
        log = out / f"{_slug(step.name)}.log"
        record = {"name": step.name, "command": list(step.command), "log": str(log)}
        if step.skip is not None:
            done.append({**record, "status": "skipped", "seconds": 0.0,
                         "checks": [attrs.asdict(Check(step.name, "skipped", message=step.skip))]})
            continue
        if left < 30:
            late = Check(step.name, "error", message=f"not run: the {budget:g} s budget is spent")
            done.append({**record, "status": "not run", "seconds": 0.0, "checks": [attrs.asdict(late)]})
            continue
        began = time.monotonic()
        code = _run(step.command, repo, env, min(left, STEP_CAP_S), log)
        checks = junit_checks(step.junit) if step.junit is not None and step.junit.is_file() else []
        runs = sorted(step.results.glob("*/results.json")) if step.results is not None else []
        if runs:
            found, figures = benchmark_checks(runs[-1])
            checks += found
        status = _status(step, code)
        if status not in ("ok", "no gpu tests") and not any(c.outcome in ("failed", "error") for c in checks):
            checks.append(Check(step.name, "error", message=f"{status}; see {log}"))
        done.append({**record, "status": status, "seconds": time.monotonic() - began,
                     "checks": [attrs.asdict(c) for c in checks]})
    return {"steps": done, "benchmarks": figures, "counts": counts(done), "seconds": time.monotonic() - started,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _run(command: Sequence[str], repo: Path, env: Mapping[str, str], timeout: float, log: Path) -> int | None:
    """The command's exit status; None when it ran out of time (and was killed)."""
    with open(log, "w") as sink:
        try:
            return subprocess.run(command, cwd=repo, env=dict(env), stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            return None


def _status(step: Step, code: int | None) -> str:
    if code is None:
        return "timeout"
    if code == 5 and step.junit is not None:  # pytest: no test selected, the suite has no GPU tests
        return "no gpu tests"
    return "ok" if code == 0 else f"exit {code}"


def _slug(name: str) -> str:
    return name.replace(" ", "-")
