"""`python -m benchmarks [--scenarios ...] [--quick] [--duration S] [--out DIR]`."""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import (
    RESULTS, chaos, device, environment, hotpath, loadgen, overload, report, resnet, scaling, serve, servers, soak,
    streaming, threads, v2,
)
from benchmarks.config import DEFAULT_SCENARIOS, SCENARIOS, RunConfig

SCHEMA = 1


def parse(argv: Sequence[str] | None) -> RunConfig:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="gpuserve's benchmark suite (see benchmarks/README.md).")
    p.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                   help=f"comma-separated, from {','.join(SCENARIOS)} (default: all but soak)")
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes: checks the plumbing, not the speed")
    p.add_argument("--duration", type=float, help="seconds of load per measured point (default 10, quick 1)")
    p.add_argument("--rounds", type=int, help="rounds the duration is split into, targets alternating (default 10, quick 1)")
    p.add_argument("--concurrency", help="comma-separated client counts (default 1,16,64,256)")
    p.add_argument("--backends", help="device scenario: comma-separated backends (default: every viable one)")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                   help="load generator (default: wrk when installed, else the Python client)")
    p.add_argument("--faults", help=f"chaos scenario: comma-separated, from {','.join(chaos.NAMES)} (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"folder for results (default {RESULTS})")
    p.add_argument("--triton-python", metavar="PYTHON",
                   help="v2 scenario: a Python with nvidia-pytriton and torch, to run the same MLP on Triton beside "
                        "gpuserve (see benchmarks/triton.py)")
    args = p.parse_args(argv)
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {sorted(unknown)}; choose from {','.join(SCENARIOS)}")
    overrides: dict[str, Any] = {"scenarios": scenarios, "loadgen": args.loadgen, "out": args.out,
                                 "triton_python": args.triton_python}
    if args.duration is not None:
        overrides["duration_s"] = args.duration
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.concurrency:
        overrides["concurrency"] = tuple(int(c) for c in args.concurrency.split(","))
    if args.backends:
        overrides["backends"] = tuple(b.strip() for b in args.backends.split(","))
    if args.faults:
        overrides["faults"] = tuple(f.strip() for f in args.faults.split(",") if f.strip())
        if set(overrides["faults"]) - set(chaos.NAMES):
            p.error(f"unknown fault(s) {sorted(set(overrides['faults']) - set(chaos.NAMES))}; "
                    f"choose from {','.join(chaos.NAMES)}")
    return RunConfig.quick_run(**overrides) if args.quick else RunConfig(**overrides)


def _banner(env: dict[str, Any]) -> str:
    cpu = env["cpu"]
    lines = [f"gpuserve benchmarks on {env['machine']['hostname']}: {cpu['model']}, {cpu['usable_cores']} usable core(s), "
             f"{env['event_loop']}, load generator {env['loadgen']}"]
    if env["gpus"]:
        driver = env["driver"] or {}
        names = ", ".join(f"{g['label']} {g['name']}" for g in env["gpus"])
        lines.append(f"GPUs: {names} (driver {driver.get('version', '?')}, CUDA {driver.get('cuda', '?')})")
    else:
        lines.append(f"NO GPU ({env['no_gpu_reason']}): running on the CPU; every figure below is a CPU figure.")
    if (cpu["usable_cores"] or 0) <= 4:
        lines.append(f"Note: with {cpu['usable_cores']} cores the load generator and the server share CPUs; "
                     "ratios measured in the same run are meaningful, absolute req/s much less so.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse(argv)
    tool = loadgen.choose_tool(config.loadgen)
    env = environment.collect(os.environ, loadgen.tool_version(tool))
    print(_banner(env), flush=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    run_dir = config.out / started.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "logs"

    http = "serve" in config.scenarios or "baseline" in config.scenarios
    jobs: list[tuple[str, int, Callable[[Callable[[int], None]], Any]]] = []
    if "device" in config.scenarios:
        jobs.append(("device", device.steps(config), lambda tick: device.run(config, tick)))
    if http:
        jobs.append(("serve+baseline", serve.steps(config), lambda tick: serve.run(config, logs, tick)))
    if "v2" in config.scenarios:
        jobs.append(("v2", v2.steps(config), lambda tick: v2.run(config, logs, tick)))
    if "scaling" in config.scenarios:
        jobs.append(("scaling", scaling.steps(config), lambda tick: scaling.run(config, logs, tick)))
        jobs.append(("scaling_kinds", scaling.kinds_steps(config), lambda tick: scaling.compare_kinds(config, logs, tick)))
    if "hotpath" in config.scenarios:
        jobs.append(("hotpath", hotpath.steps(config), lambda tick: hotpath.run(config, tick)))
    if "resnet" in config.scenarios:
        jobs.append(("resnet", resnet.steps(config), lambda tick: resnet.run(config, logs, tick)))
    if "streaming" in config.scenarios:
        jobs.append(("streaming", streaming.steps(config), lambda tick: streaming.run(config, logs, tick)))
    if "chaos" in config.scenarios:
        jobs.append(("chaos", chaos.steps(config), lambda tick: chaos.run(config, logs, tick)))
    for name, module in (("overload", overload), ("threads", threads), ("soak", soak)):
        if name in config.scenarios:
            jobs.append((name, module.steps(config), functools.partial(module.run, config, logs)))

    results: dict[str, Any] = {}
    failed = False
    with tqdm(total=sum(steps for _, steps, _ in jobs), unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        for name, _, job in jobs:
            bar.set_description(name)
            try:
                value = job(bar.update)
            except Exception as exc:  # one broken scenario must not cost the others' figures
                failed = True
                tqdm.write(f"{name} failed:\n{traceback.format_exc()}", file=sys.stderr)
                value = {"error": f"{type(exc).__name__}: {exc}"}
            if name != "serve+baseline":
                results[name] = value
                continue
            for side in ("serve", "baseline"):  # one job, two scenarios
                if side in config.scenarios:
                    results[side] = value if "error" in value else value[side]

    compared = report.ratios(results)
    document = {
        "schema": SCHEMA,
        "started": started.isoformat(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": ["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])],
        "config": {
            "scenarios": list(config.scenarios), "quick": config.quick, "duration_s": config.duration_s,
            "rounds": config.rounds, "warmup_s": config.warmup_s, "concurrency": list(config.concurrency),
            "batch_sizes": list(config.batch_sizes), "loadgen": tool,
            "gpuserve_queue_size": servers.QUEUE_SIZE, "faults": list(config.faults or chaos.NAMES),
            "server_threads": {k: servers.server_env(os.environ)[k] for k in servers.THREADS_ENV},
        },
        "cpu_only": not env["gpus"],
        "environment": env,
        "results": results,
        "ratios": compared,
        "targets": report.targets(results, compared),
    }
    document["plots"] = report.plots(run_dir, results, compared)
    report.write_json(run_dir / "results.json", document)
    print()
    print(report.summary(document))
    print(f"\nresults: {run_dir / 'results.json'}\nplots:   {', '.join(document['plots']) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
