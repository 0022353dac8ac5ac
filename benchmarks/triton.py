"""The optional Triton baseline: the example MLP on a real Triton server, with Triton's dynamic batcher.

`nvidia-pytriton` carries a Triton Inference Server that runs on the CPU. It
pins NumPy below 2 and so lives in an environment of its own; the benchmark
suite runs this module with that environment's interpreter
(`python -m benchmarks --scenarios v2 --triton-python PATH`). It needs
`nvidia-pytriton` and `torch` there, not gpuserve:

    python3 -m venv .venv-triton
    .venv-triton/bin/pip install nvidia-pytriton torch==2.13.0

    python -m benchmarks.triton --port 8000      # what the suite runs

The model is the example classifier's own file (`examples/classifier/model.py`)
and forward pass, batched by Triton up to 64 rows, waiting at most 100 us for
company; it answers `label` (INT64) and `probabilities` (FP32) per row.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sysconfig
from pathlib import Path
from typing import Any

EXAMPLE_MODEL = Path(__file__).resolve().parent.parent / "examples" / "classifier" / "model.py"
MODEL = "predict_batched"
MAX_BATCH = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOAD_TIMEOUT_S = 120


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.triton", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8000, help="Triton's HTTP port (127.0.0.1)")
    args = p.parse_args(argv)
    # Triton's Python backend stub loads libpython: it must be this interpreter's, or its
    # standard library and its C core disagree.
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")]))

    import numpy as np
    import torch
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.models import manager
    from pytriton.triton import Triton, TritonConfig

    # Loading the model starts Triton's Python stub, which imports torch: on a loaded
    # machine that takes longer than the 10 s pytriton's client waits by default.
    manager.CREATE_TRITON_CLIENT_TIMEOUT_S = LOAD_TIMEOUT_S

    spec = importlib.util.spec_from_file_location("classifier_model", EXAMPLE_MODEL)
    assert spec is not None and spec.loader is not None
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    model = code.build_model()
    device = torch.device("cpu")

    @batch
    def infer(x: Any) -> dict[str, Any]:
        rows = code.predict(model, x, device)
        return {"label": np.array([[r["label"]] for r in rows], dtype=np.int64),
                "probabilities": np.array([r["probabilities"] for r in rows], dtype=np.float32)}

    config = TritonConfig(http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
                          grpc_port=_free_port(), metrics_port=_free_port(), allow_metrics=False,
                          allow_gpu_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL, infer_func=infer,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(code.FEATURES,))],
            outputs=[Tensor(name="label", dtype=np.int64, shape=(1,)),
                     Tensor(name="probabilities", dtype=np.float32, shape=(code.CLASSES,))],
            config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
        )
        triton.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
