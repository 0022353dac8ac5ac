"""`gpuserve devices`: the GPUs this process sees, numbered as CUDA numbers them."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import attrs

from gpuserve.devices import MIG_GUIDE, Inventory, discover, warn_once
from gpuserve.devices.container import InContainer, in_container
from gpuserve.errors import GpuserveError

_MIB = 2**20


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="list the GPUs visible under the current environment",
        description=(
            "List the GPUs visible under the current CUDA_VISIBLE_DEVICES and "
            "CUDA_DEVICE_ORDER, by CUDA ordinal (what cuda:N means in this environment). "
            "In a container, says what NVIDIA_VISIBLE_DEVICES exposed."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of devices")
    parser.add_argument(
        "--watch",
        type=_positive_seconds,
        metavar="SECONDS",
        help="refresh every SECONDS until Ctrl-C",
    )
    parser.set_defaults(run=run)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds (e.g. 1 or 0.5)")
    return seconds


def run(args: argparse.Namespace) -> int:
    try:
        if args.watch is None:
            _show(_look(), args.json)
            return 0
        while True:
            view = _look()
            warn_once(view.inventory)
            if not args.json:
                sys.stdout.write("\033[H\033[2J")  # clear the screen, as `watch` does
                print(f"every {args.watch:g}s, {time.strftime('%Y-%m-%d %H:%M:%S')}  (Ctrl-C to stop)\n")
            _show(view, args.json)
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    except GpuserveError as exc:
        print(f"gpuserve devices: {exc}", file=sys.stderr)
        return 2


def _look() -> InContainer:
    return in_container(discover(os.environ), os.environ)


def _show(view: InContainer, as_json: bool) -> None:
    inventory = view.inventory
    warn_once(inventory)
    note = f"{'warning: ' if view.ignored else ''}{view.note}" if view.note else None
    if as_json:
        print(json.dumps([attrs.asdict(device) for device in inventory.devices]))
        if inventory.reason:
            print(f"no GPU visible: {inventory.reason}", file=sys.stderr)
        if note:
            print(note, file=sys.stderr)
        return
    if not inventory.devices:
        print(f"No GPU visible: {inventory.reason} (source: {inventory.source})")
    else:
        print(_table(inventory))
    if note:
        print(note)


def _table(inventory: Inventory) -> str:
    header = ("CUDA", "NVML", "NAME", "UUID", "BUS ID", "MEMORY USED / TOTAL", "UTIL", "TEMP")
    rows = [
        (
            str(d.index) if d.enumerated else "-",
            "-" if d.nvml_index is None else str(d.nvml_index),
            d.name,
            d.uuid,
            d.pci_bus_id or "-",
            f"{d.memory_used // _MIB} / {d.memory_total // _MIB} MiB",
            "-" if d.utilization is None else f"{d.utilization}%",
            "-" if d.temperature is None else f"{d.temperature}C",
        )
        for d in inventory.devices
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)
    ]
    lines.append(f"\nsource: {inventory.source}; CUDA = ordinal in this environment, NVML = NVML index")
    hidden = len(inventory.devices) - len(inventory.enumerated)
    if hidden:
        lines.append(
            f"CUDA '-': {hidden} device(s) this process does not enumerate beside cuda:0, because one CUDA "
            f"process enumerates one MIG device and no other device beside it ({MIG_GUIDE}, 'CUDA Device "
            "Enumeration'; drivers from R570 relax this). gpuserve plans them for worker processes that see "
            "them, numbered from cuda:0"
        )
    return "\n".join(lines)
