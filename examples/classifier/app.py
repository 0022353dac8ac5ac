"""The example service: `python -m gpuserve serve app:Classifier` from this folder.

One replica on one GPU; on a machine without one, gpuserve serves it on the
CPU and says so once at startup. A request carries one or more rows of 8
features; the answer has one prediction per row.
"""

from typing import Annotated

import numpy as np
from numpy.typing import NDArray
from typing_extensions import TypedDict

import gpuserve
from model import FEATURES, build_model, predict


class Prediction(TypedDict):
    label: int
    probabilities: list[float]


@gpuserve.service(resources={"gpu": 1}, workers=1)
class Classifier:
    def __init__(self) -> None:
        self.device = gpuserve.context().device  # a torch.device: cuda:0 or cpu
        self.model = build_model().to(self.device)

    @gpuserve.api(batchable=True, max_batch_size=64)
    def predict(self, x: Annotated[NDArray[np.float32], gpuserve.Shape(-1, FEATURES)]) -> list[Prediction]:
        """Class probabilities for each row of `x`: the rows of every queued request, as one array."""
        return predict(self.model, x, self.device)
