"""The services gpuserve serves in the benchmarks: an echo, the example MLP, an image, a stream, ResNet-50
and one that fails.

The echo and the MLP come with and without batching. The MLP is the example
classifier's own model and forward pass (`examples/classifier/model.py`),
loaded from its file so that the baseline server runs exactly the same code.
The batched MLP is typed as the example is: its body is checked at the door
and its rows merged into one float32 array. `Images` echoes a tensor over the
v2 protocol (scenario `v2`), `Streamer` yields 1 KB values (scenario
`streaming`), ResNet-50 (scenario `resnet`) runs the same `classify` as its
offline loop, and `Chaos` fails on demand (scenario `chaos`).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import TypedDict

import gpuserve

from benchmarks.config import RESNET_BATCH

EXAMPLE_MODEL = Path(__file__).resolve().parent.parent / "examples" / "classifier" / "model.py"
MAX_BATCH = 64  # the example classifier's own max_batch_size
FEATURES = 8
# Every workload posts one example row: as the value itself to an API that takes one,
# as a list of rows (of one) to a batchable API.
ROW = b"[0.5, -1.2, 3.3, 0.0, 2.1, -0.7, 1.5, 0.9]"
BODY = b'{"x": ' + ROW + b"}"
ROWS_BODY = b'{"x": [' + ROW + b"]}"
# A streamed value: a string whose JSON is 1 KB; a stream of STREAM_VALUES of them per request.
STREAM_VALUE = "v" * 1022
STREAM_VALUES = 1000
STREAM_BODY = b'{"n": %d}' % STREAM_VALUES


def stream_values(n: int) -> Iterator[str]:
    """What both servers stream: `n` values of 1 KB."""
    for _ in range(n):
        yield STREAM_VALUE


def example_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("classifier_model", EXAMPLE_MODEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@gpuserve.service(backend="cpu")
class Echo:
    """What the front end alone costs: the value comes back untouched."""

    @gpuserve.api
    def echo(self, x: Any) -> Any:
        return x

    @gpuserve.api(batchable=True, max_batch_size=MAX_BATCH)
    def echo_batched(self, x: list[Any]) -> list[Any]:
        return x


class Prediction(TypedDict):  # the example's answer per row: over v2, one output per field
    label: int
    probabilities: list[float]


@gpuserve.service(resources={"gpu": 1})
class Mlp:
    """The example classifier, one request per call and batched."""

    def __init__(self) -> None:
        self.code = example_model()
        self.device = gpuserve.context().device
        self.model = self.code.build_model().to(self.device)

    @gpuserve.api
    def predict(self, x: list[float]) -> dict:
        return self.code.predict(self.model, np.array([x], dtype=np.float32), self.device)[0]

    @gpuserve.api(batchable=True, max_batch_size=MAX_BATCH)
    def predict_batched(self, x: Annotated[NDArray[np.float32], gpuserve.Shape(-1, FEATURES)]) -> list[Prediction]:
        return self.code.predict(self.model, x, self.device)


IMAGE_SHAPE = (224, 224, 3)  # one FP32 image: 602,112 bytes


@gpuserve.service(backend="cpu")
class Images:
    """What the v2 protocol's binary path costs: an image tensor in, the same tensor out."""

    @gpuserve.api
    def echo_image(
        self, image: Annotated[NDArray[np.float32], gpuserve.Shape(*IMAGE_SHAPE)]
    ) -> Annotated[NDArray[np.float32], gpuserve.Shape(*IMAGE_SHAPE)]:
        return image


@gpuserve.service(resources={"gpu": 1})
class ResNet50:
    """ResNet-50 (fp16 on GPUs) on images the request names by index (`benchmarks/resnet_model.py`)."""

    def __init__(self) -> None:
        from benchmarks import resnet_model

        device = gpuserve.context().device
        self.net = resnet_model
        self.model, self.bank = resnet_model.build(device), resnet_model.make_bank(device)

    # A generous latency bound: this measures throughput, and admission must not refuse the load.
    @gpuserve.api(batchable=True, max_batch_size=RESNET_BATCH, max_latency_ms=10_000)
    def classify(self, image: list[int]) -> list[int]:
        return self.net.classify(self.model, self.bank, image)


@gpuserve.service(backend="cpu")
class Streamer:
    """A generator of 1 KB values: what streaming costs, the model aside."""

    @gpuserve.api
    def values(self, n: int) -> Iterator[str]:
        yield from stream_values(n)


CHAOS_DIR_ENV = "CHAOS_DIR"  # where the `chaos` scenario tells `Chaos` that its constructor should fail
CHAOS_CALL_S = 0.002  # a call's fixed cost, as a device's launch: batching pays, as it does on a GPU


@gpuserve.service(backend="cpu")
class Chaos:
    """Answers each row with itself, unless the row is a fault: `hang` never returns, `exit` ends the
    worker process, `oom` runs out of memory however small its batch. The constructor fails while the
    file `fail-init` exists in `$CHAOS_DIR`."""

    def __init__(self) -> None:
        if (Path(os.environ.get(CHAOS_DIR_ENV, ".")) / "fail-init").exists():
            raise RuntimeError("the chaos scenario told this constructor to fail")

    @gpuserve.api(batchable=True, max_batch_size=MAX_BATCH)
    def predict(self, x: list[str]) -> list[str]:
        for row in x:
            if row == "hang":
                time.sleep(3600)
            elif row.startswith("exit"):
                os._exit(3)
            elif row == "oom":
                raise MemoryError("this row does not fit, even alone")
        time.sleep(CHAOS_CALL_S)
        return x
