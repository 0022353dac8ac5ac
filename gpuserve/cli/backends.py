"""`gpuserve backends`: what is installed, whether it can run here, and why not."""

from __future__ import annotations

import argparse

import orjson

from gpuserve.registry import BackendEntry, default_registry


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backends",
        help="list installed backends",
        description="List backends registered under the entry-point group gpuserve.backends: "
        "distribution and version, viable or why not, devices they see.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def describe(entry: BackendEntry) -> dict[str, object]:
    viability = entry.viability()
    devices: int | None = None
    if viability.ok and entry.cls is not None and entry.cls.uses_gpus:
        try:
            devices = len(entry.cls().devices())
        except Exception as exc:  # a plugin's failure is reported, never fatal to the listing
            viability = type(viability).no(f"devices() failed: {type(exc).__name__}: {exc}")
    elif viability.ok:
        devices = 0
    return {
        "name": entry.name,
        "distribution": entry.distribution,
        "version": entry.version,
        "priority": entry.priority if entry.cls else None,
        "viable": viability.ok,
        "reason": viability.reason or None,
        "gpu_devices": devices,
    }


def run(args: argparse.Namespace) -> int:
    rows = [describe(e) for e in default_registry().entries]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{'BACKEND':<12} {'DISTRIBUTION':<22} {'VERSION':<10} {'GPUS':>4}  STATUS")
    for r in rows:
        status = "viable" if r["viable"] else f"not viable: {r['reason']}"
        gpus = "-" if r["gpu_devices"] is None else str(r["gpu_devices"])
        print(f"{r['name']:<12} {str(r['distribution']):<22} {str(r['version']):<10} {gpus:>4}  {status}")
    return 0
