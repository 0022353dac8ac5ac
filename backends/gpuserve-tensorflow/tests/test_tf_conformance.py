"""gpuserve's backend contract, as every backend runs it."""

from __future__ import annotations

import tensorflow as tf
from tf_models import Affine

from gpuserve.testing import BackendConformance


class TestTensorFlowConformance(BackendConformance):
    backend_name = "tensorflow"

    def make_model(self) -> Affine:
        # Built on the host explicitly: on a GPU machine TensorFlow would otherwise
        # create the variables on GPU:0, and the kit places the model on the CPU.
        with tf.device("/CPU:0"):
            return Affine()

    def make_out_of_memory_error(self) -> BaseException:
        return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape [1048576,4096]")
