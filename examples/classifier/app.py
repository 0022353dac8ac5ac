"""The example service: `python -m gpuserve serve app:Classifier` from this folder.

One replica on one GPU; on a machine without one, gpuserve serves it on the
CPU and says so once at startup.
"""

import gpuserve
from model import build_model, predict


@gpuserve.service(resources={"gpu": 1}, workers=1)
class Classifier:
    def __init__(self) -> None:
        self.device = gpuserve.context().device  # a torch.device: cuda:0 or cpu
        self.model = build_model().to(self.device)

    @gpuserve.api(batchable=True, max_batch_size=64)
    def predict(self, x: list[list[float]]) -> list[dict]:
        # Batchable: `x` holds one feature row per queued request.
        return predict(self.model, x, self.device)
