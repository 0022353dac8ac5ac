"""One TensorFlow model mirrored over a worker's two GPUs: `python -m gpuserve serve app:Mirrored`.

TensorFlow is imported in `__init__`, not at the top: `gpuserve plan` reads
the declaration without building a replica, and TensorFlow must start after
gpuserve has limited the GPUs it sees.
"""

import gpuserve

FEATURES = 16


def build_model():
    """Fixed weights, created inside MirroredStrategy's scope (hence a builder, not a model)."""
    import numpy as np
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(np.linspace(-1.0, 1.0, FEATURES * 2, dtype="float32").reshape(FEATURES, 2))
            self.b = tf.Variable(np.array([0.5, -0.5], dtype="float32"))

        def __call__(self, x):
            return tf.matmul(x, self.w) + self.b

    return Affine()


@gpuserve.service(resources={"gpu": 2}, backend="tensorflow")
class Mirrored:
    def __init__(self) -> None:
        ctx = gpuserve.context()
        # tf.distribute.MirroredStrategy over the worker's GPUs (over the CPU on the fallback).
        self.model = ctx.backend.distribute(build_model, ctx.planned)

    @gpuserve.api(batchable=True, max_batch_size=128)
    def predict(self, x: list[list[float]]) -> list[dict]:
        out = self.model(x).numpy()  # each batch split over the replicas, rows kept in order
        return [{"output": row.tolist(), "replicas": list(self.model.devices)} for row in out]
