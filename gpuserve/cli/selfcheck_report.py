"""The selfcheck's results: checks read from pytest's JUnit XML and the benchmark suite's JSON, and the summary."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

OUTCOMES = ("passed", "failed", "error", "skipped")


@attrs.frozen
class Check:
    name: str
    outcome: str  # one of OUTCOMES
    seconds: float = 0.0
    message: str = ""  # why it failed or was skipped; empty when it passed


def junit_checks(path: Path) -> list[Check]:
    """Every test case of a pytest `--junitxml` file."""
    checks = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (found.get("message") or found.text or "").strip()
                break
        checks.append(Check(name, outcome, float(case.get("time") or 0), message))
    return checks


def benchmark_checks(results_json: Path) -> tuple[list[Check], dict[str, Any]]:
    """The `device` and `resnet` scenarios of one benchmark run as checks, and the figures behind them."""
    document = json.loads(results_json.read_text())
    results = document.get("results", {})
    checks, figures = [], {}
    device = results.get("device", {})
    if "error" in device:
        checks.append(Check("benchmarks: device scenario", "failed", message=device["error"]))
    else:
        points = device.get("points", [])
        measured = sorted({(p["backend"], p["device"]) for p in points})
        skipped = "; ".join(f"{s['backend']}: {s['reason']}" for s in device.get("skipped", []))
        figures["device"] = {"measured": [f"{b} on {d}" for b, d in measured], "points": len(points),
                             "skipped": device.get("skipped", [])}
        gpu_points = [p for p in points if p["device"].startswith("cuda")]
        checks.append(Check("benchmarks: device scenario", "passed" if gpu_points else "failed",
                            message="" if gpu_points else f"no point measured on a GPU; skipped: {skipped or 'none'}"))
    net = results.get("resnet", {})
    if "error" in net or "ratio" not in net:
        checks.append(Check("benchmarks: resnet scenario", "failed", message=net.get("error", "not measured")))
    else:
        target = next(t for t in document["targets"] if t["target"].startswith("ResNet-50"))
        figures["resnet"] = {k: net.get(k) for k in ("device", "dtype", "image_size", "batch_size", "clients",
                                                     "offline_items_per_s", "served_items_per_s", "ratio", "errors")}
        figures["resnet"]["target"] = target
        on_gpu = net["device"] != "cpu"
        # The scenario ran if it served on the GPU without errors; whether it met its goal is a figure, not a check.
        ran = on_gpu and not net["errors"]
        checks.append(Check("benchmarks: resnet scenario", "passed" if ran else "failed",
                            message="" if ran else f"on {net['device']}, {net['errors']} error answers"))
    return checks, figures


def counts(steps: list[dict[str, Any]]) -> dict[str, int]:
    tally = Counter(check["outcome"] for step in steps for check in step["checks"])
    return {outcome: tally.get(outcome, 0) for outcome in OUTCOMES}


def _sees(backend: dict[str, Any]) -> str:
    return f"sees {backend['gpu_devices']} GPU(s)" if backend["viable"] else backend["reason"]


def summary(report: dict[str, Any]) -> str:
    """The readable page: the machine, then one line per step, then what failed and what was skipped."""
    driver = report.get("driver") or {}
    gpus = ", ".join(f"{g['label']} {g['name']} ({g['uuid']})" for g in report["gpus"])
    lines = [
        f"gpuserve selfcheck on {report['machine']['hostname']}, {report['started']}",
        f"GPUs: {gpus}",
        f"NVIDIA driver {driver.get('version', '?')}, CUDA {driver.get('cuda', '?')}",
        "backends: " + "; ".join(f"{b['name']} {b['version']} ({_sees(b)})" for b in report["backends"]),
        "",
    ]
    for step in report["steps"]:
        tally = Counter(check["outcome"] for check in step["checks"])
        told = ", ".join(f"{tally[o]} {o}" for o in OUTCOMES if tally[o]) or "no checks"
        lines.append(f"{step['name']:<22} {step['status']:<13} {told:<32} {step['seconds']:>4.0f} s")
    figures = report.get("benchmarks", {}).get("resnet")
    if figures:
        lines.append(f"\nResNet-50 ({figures['dtype']}, {figures['image_size']}px, batch {figures['batch_size']}, "
                     f"{figures['clients']} clients, {figures['device']}): offline "
                     f"{figures['offline_items_per_s']:.0f} items/s, served {figures['served_items_per_s']:.0f} "
                     f"items/s, ratio {figures['ratio']:.2f} (goal {figures['target']['op']} "
                     f"{figures['target']['limit']:g}: {'met' if figures['target']['met'] else 'NOT met'})")
    for outcome in ("failed", "error", "skipped"):
        found = [(step["name"], c) for step in report["steps"] for c in step["checks"] if c["outcome"] == outcome]
        if found:
            lines.append(f"\n{outcome.upper()}:")
            lines += [f"  [{name}] {c['name']}: {c['message'].splitlines()[0] if c['message'] else ''}"
                      for name, c in found]
    total = report["counts"]
    lines.append(f"\n{total['passed']} passed, {total['failed']} failed, {total['error']} errors, "
                 f"{total['skipped']} skipped in {report['seconds']:.0f} s (budget {report['budget_s']:.0f} s)")
    return "\n".join(lines)
