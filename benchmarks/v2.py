"""Scenario `v2`: the KServe v2 protocol, side by side with what it is compared to, in one run.

- `image_v2`: a 224x224x3 FP32 image (602 KB) sent as binary v2 to an API
  that returns it, against `image`, a raw aiohttp handler that reads the same
  body into a NumPy array and returns it (target: >= 0.9x);
- the example MLP, batched, in its own worker process as the other MLP
  targets: natively (`mlp_native`), over v2 JSON (`mlp_v2_json`) and v2 binary
  (`mlp_v2_binary`), against the hand-written aiohttp batcher (`mlp_batched`);
- where a Python with `nvidia-pytriton` is given (`--triton-python`), the same
  MLP on a real Triton server with its dynamic batcher, over v2 JSON and binary
  (`triton_v2_json`, `triton_v2_binary`), so the run shows gpuserve against
  Triton on the same machine.

Targets take turns, round after round, as in `serve` (see `serve.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import loadgen
from benchmarks.apps import IMAGE_SHAPE
from benchmarks.config import RunConfig
from benchmarks.serve import Target, summarise, take_turns
from benchmarks.servers import baseline_command, gpuserve_command, running
from benchmarks.report import paired_ratio

HEADER = "Inference-Header-Content-Length"
ROW = [0.5, -1.2, 3.3, 0.0, 2.1, -0.7, 1.5, 0.9]


def _binary_request(name: str, array: np.ndarray, outputs: list[str]) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """A v2 request with `array` as a binary input and every named output asked as binary."""
    header = json.dumps({
        "inputs": [{"name": name, "datatype": "FP32", "shape": list(array.shape),
                    "parameters": {"binary_data_size": array.nbytes}}],
        "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
    }).encode()
    return header + array.tobytes(), ((HEADER, str(len(header))),)


def _json_request(name: str, rows: list[list[float]]) -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": [len(rows), len(rows[0])],
                                   "data": rows}]}).encode()


IMAGE = np.random.default_rng(0).random(IMAGE_SHAPE, dtype=np.float32)
IMAGE_BODY, IMAGE_HEADERS = _binary_request("image", IMAGE, ["output"])
MLP_BINARY, MLP_BINARY_HEADERS = _binary_request("x", np.array([ROW], dtype=np.float32), ["label", "probabilities"])
MLP_JSON = _json_request("x", [ROW])
MLP_INFER = "/v2/models/predict_batched/infer"
ROWS_BODY = json.dumps({"x": [ROW]}).encode()

GPUSERVE = (
    Target("gpuserve", "image_v2", "gpuserve-images", "/v2/models/echo_image/infer", IMAGE_BODY, IMAGE_HEADERS,
           "echo_image"),
    Target("gpuserve", "mlp_native", "gpuserve-mlp-process", "/predict_batched", ROWS_BODY),
    Target("gpuserve", "mlp_v2_json", "gpuserve-mlp-process", MLP_INFER, MLP_JSON, api="predict_batched"),
    Target("gpuserve", "mlp_v2_binary", "gpuserve-mlp-process", MLP_INFER, MLP_BINARY, MLP_BINARY_HEADERS,
           "predict_batched"),
)
BASELINE = (
    Target("baseline", "image", "baseline", "/image", IMAGE_BODY, IMAGE_HEADERS),
    Target("baseline", "mlp_batched", "baseline", "/predict_batched", ROWS_BODY),
)
TRITON = (
    Target("baseline", "triton_v2_json", "triton", MLP_INFER, MLP_JSON),
    Target("baseline", "triton_v2_binary", "triton", MLP_INFER, MLP_BINARY, MLP_BINARY_HEADERS),
)
# (gpuserve workload, what it is compared with); pairs whose baseline did not run are left out.
PAIRS = (
    ("image_v2", "image"),
    ("mlp_native", "mlp_batched"), ("mlp_v2_json", "mlp_batched"), ("mlp_v2_binary", "mlp_batched"),
    ("mlp_native", "triton_v2_binary"), ("mlp_v2_json", "triton_v2_json"), ("mlp_v2_binary", "triton_v2_binary"),
)


def _commands(config: RunConfig) -> dict[str, list[str]]:
    commands = {
        "gpuserve-images": gpuserve_command("benchmarks.apps:Images"),
        "gpuserve-mlp-process": gpuserve_command("benchmarks.apps:Mlp", "--isolation", "process"),
        "baseline": baseline_command(),
    }
    if config.triton_python:
        commands["triton"] = [config.triton_python, "-m", "benchmarks.triton"]
    return commands


def targets(config: RunConfig) -> list[Target]:
    return [*GPUSERVE, *BASELINE, *(TRITON if config.triton_python else ())]


def steps(config: RunConfig) -> int:
    return len(targets(config)) * len(config.concurrency) * (config.rounds + (config.warmup_s > 0))


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> dict[str, Any]:
    chosen = targets(config)
    tool = loadgen.choose_tool(config.loadgen)
    with running(list(_commands(config).items()), log_dir, ready_paths={"triton": "/v2/health/ready"}) as servers:
        rounds = take_turns(chosen, servers, tool, config, progress)
    rows = [dict(summarise(target, concurrency, measured), side=target.side)
            for (target, concurrency), measured in rounds.items()]
    return {"rows": rows, "ratios": _ratios(rows), "triton": bool(config.triton_python)}


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    at = {(r["workload"], r["concurrency"]): r for r in rows}
    out = []
    for ours, theirs in PAIRS:
        for concurrency in sorted({r["concurrency"] for r in rows}):
            a, b = at.get((ours, concurrency)), at.get((theirs, concurrency))
            if a is None or b is None:
                continue
            out.append({"workload": ours, "against": theirs, "concurrency": concurrency, "rps": a["rps"],
                        "against_rps": b["rps"], "rps_ratio": paired_ratio(a, b), "p50_ms": a["p50_ms"],
                        "p99_ms": a["p99_ms"], "against_p50_ms": b["p50_ms"], "against_p99_ms": b["p99_ms"],
                        "errors": a["errors"] + b["errors"]})
    return out

