"""`gpuserve plan MODULE:ATTR`: which devices each worker would get, without building any."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gpuserve.deployment import choose_isolation, plan_service
from gpuserve.errors import GpuserveError
from gpuserve.loader import load_service
from gpuserve.service import Isolation
from gpuserve.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show which devices each worker of a service would get",
        description=(
            "Show the allocation plan of a service under the current environment "
            "(CUDA_VISIBLE_DEVICES included) without building any replica. Flags also read "
            "GPUSERVE_BACKEND, GPUSERVE_WORKERS, GPUSERVE_REQUIRE_GPU, GPUSERVE_CPU_DEVICES and GPUSERVE_ISOLATION, "
            "as serve does."
        ),
    )
    parser.add_argument("service", metavar="MODULE:ATTR", help="the service, e.g. app:Classifier")
    parser.add_argument("--backend", help="backend to plan for (default: the one serve would choose)")
    parser.add_argument("--workers", type=int, help="number of workers (default: the service's workers=)")
    parser.add_argument(
        "--require-gpu",
        action="store_true",
        default=None,
        help="fail instead of falling back to the CPU when no GPU can be used",
    )
    parser.add_argument("--cpu-devices", type=int, metavar="N", help="virtual CPU devices to plan on (default 1)")
    parser.add_argument("--instances-per-device", type=int, metavar="N",
                        help="replicas per planned device, each holding its own host memory (default 1)")
    parser.add_argument("--isolation", choices=[i.value for i in Isolation],
                        help="replicas as threads or processes (default: the service's, else as serve decides)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        # The same precedence as `serve`: flags, then GPUSERVE_* variables, then defaults.
        flags = {
            "backend": args.backend,
            "workers": args.workers,
            "require_gpu": args.require_gpu,
            "cpu_devices": args.cpu_devices,
            "instances_per_device": args.instances_per_device,
            "isolation": args.isolation,
        }
        settings = Settings.from_sources(flags, os.environ)
        spec = load_service(args.service)
        entry, _, result = plan_service(spec, settings, os.environ)
        isolation = choose_isolation(settings.isolation or spec.isolation, result)
    except GpuserveError as exc:
        print(f"gpuserve plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**result.to_json(), "backend": entry.name, "isolation": isolation.value}, indent=2))
        return 0
    if result.fallback_reason:
        print(f"warning: {result.fallback_reason}", file=sys.stderr)
    print(f"plan for {spec.name} with backend {entry.name}, isolation {isolation.value} ({result.inventory_source}):")
    for line in result.describe():
        print(f"  {line}")
    if any(not d.enumerated for d in result.gpu_union()):
        print("GPUs shown without cuda:N are ones a process here does not enumerate (one CUDA process sees one "
              "MIG device and nothing beside it); the process that serves them, a worker's or the server "
              "narrowed to the plan's GPUs, numbers them from cuda:0")
    return 0
