"""Small deterministic models for the tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class Affine(tf.Module):
    """x @ w + b with fixed weights, so two builds compute the same thing."""

    def __init__(self, inputs: int = 4, outputs: int = 2) -> None:
        super().__init__()
        self.w = tf.Variable(np.linspace(-1.0, 1.0, inputs * outputs, dtype="float32").reshape(inputs, outputs))
        self.b = tf.Variable(np.arange(outputs, dtype="float32"))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.w) + self.b


def batch(rows: int, inputs: int = 4) -> np.ndarray:
    return np.arange(rows * inputs, dtype="float32").reshape(rows, inputs) / 10
