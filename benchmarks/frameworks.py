"""The same two small models in each framework, and how to time them on a device.

`mlp`: 784 -> 256 -> 256 -> 10, ReLU. `conv`: a 32x32 RGB image through two
3x3 convolutions (16 and 32 channels, each ReLU and 2x2 max-pool) and a linear
layer to 10. Weights are random (seeded): throughput does not depend on them.
On GPUs the time is taken on the device (CUDA events) where the framework
offers them; elsewhere it is wall time between two synchronisations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gpuserve.plugin import Backend, Device

MODELS = ("mlp", "conv")
Forward = Callable[[Any], Any]


def input_shape(kind: str, batch: int, channels_last: bool) -> tuple[int, ...]:
    if kind == "mlp":
        return (batch, 784)
    return (batch, 32, 32, 3) if channels_last else (batch, 3, 32, 32)


class Framework:
    """One framework on one device. Subclasses build the models and may time on the device."""

    timing = "wall"

    def __init__(self, backend: Backend, device: Device) -> None:
        self.backend = backend
        self.device = device
        self.native = backend.native_device(device)

    def build(self, kind: str) -> Forward:
        raise NotImplementedError

    def inputs(self, kind: str, batch: int) -> Any:
        raise NotImplementedError

    def seconds_per_batch(self, forward: Forward, x: Any, iterations: int) -> float:
        self.backend.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(iterations):
            forward(x)
        self.backend.synchronize(self.device)
        return (time.perf_counter() - start) / iterations

    def reset_peak_memory(self) -> None:
        """Forget the peak so far (GPU frameworks that track one)."""

    def memory(self) -> tuple[int | None, str]:
        """Bytes in use and what they mean: on the CPU the process's resident memory."""
        return self.backend.memory(self.device).used, "process_rss"


class Torch(Framework):
    def __init__(self, backend: Backend, device: Device) -> None:
        super().__init__(backend, device)
        import torch

        self.torch = torch
        if device.is_gpu:
            self.timing = "cuda_events"

    def build(self, kind: str) -> Forward:
        torch, nn = self.torch, self.torch.nn
        torch.manual_seed(0)
        if kind == "mlp":
            model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        else:
            model = nn.Sequential(
                nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 6 * 6, 10),
            )
        model = model.to(self.native).eval()

        def forward(x: Any) -> Any:
            with torch.inference_mode():
                return model(x)

        return forward

    def inputs(self, kind: str, batch: int) -> Any:
        return self.torch.randn(*input_shape(kind, batch, channels_last=False), device=self.native)

    def seconds_per_batch(self, forward: Forward, x: Any, iterations: int) -> float:
        if not self.device.is_gpu:
            return super().seconds_per_batch(forward, x, iterations)
        cuda = self.torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            forward(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iterations

    def reset_peak_memory(self) -> None:
        if self.device.is_gpu:
            self.torch.cuda.reset_peak_memory_stats(self.native)

    def memory(self) -> tuple[int | None, str]:
        if self.device.is_gpu:
            return self.torch.cuda.max_memory_allocated(self.native), "peak_allocated"
        return super().memory()


class TensorFlow(Framework):
    def __init__(self, backend: Backend, device: Device) -> None:
        super().__init__(backend, device)
        import tensorflow as tf

        self.tf = tf

    def build(self, kind: str) -> Forward:
        tf = self.tf
        init = tf.random.Generator.from_seed(0)
        with tf.device(self.native):
            if kind == "mlp":
                w = [tf.Variable(init.normal(s) * 0.05) for s in ((784, 256), (256, 256), (256, 10))]

                @tf.function
                def graph(x: Any) -> Any:
                    h = tf.nn.relu(x @ w[0])
                    return tf.nn.relu(h @ w[1]) @ w[2]
            else:
                w = [tf.Variable(init.normal(s) * 0.05) for s in ((3, 3, 3, 16), (3, 3, 16, 32), (32 * 6 * 6, 10))]

                @tf.function
                def graph(x: Any) -> Any:
                    h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, w[0], 1, "VALID")), 2, 2, "VALID")
                    h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, w[1], 1, "VALID")), 2, 2, "VALID")
                    return tf.reshape(h, (-1, 32 * 6 * 6)) @ w[2]

        def forward(x: Any) -> Any:
            with tf.device(self.native):
                return graph(x)

        return forward

    def inputs(self, kind: str, batch: int) -> Any:
        with self.tf.device(self.native):
            return self.tf.random.normal(input_shape(kind, batch, channels_last=True))

    def reset_peak_memory(self) -> None:
        if self.device.is_gpu:
            self.tf.config.experimental.reset_memory_stats(self.native.lstrip("/"))

    def memory(self) -> tuple[int | None, str]:
        if self.device.is_gpu:
            return self.tf.config.experimental.get_memory_info(self.native.lstrip("/"))["peak"], "peak_allocated"
        return super().memory()


class ArrayModule(Framework):
    """NumPy-style code: NumPy on the CPU, CuPy on GPUs; convolution by strided windows."""

    def __init__(self, backend: Backend, device: Device) -> None:
        super().__init__(backend, device)
        self.xp = self._module()

    def _module(self) -> Any:
        raise NotImplementedError

    def build(self, kind: str) -> Forward:
        import numpy

        xp = self.xp
        rng = numpy.random.default_rng(0)
        shapes = ((784, 256), (256, 256), (256, 10)) if kind == "mlp" else ((3, 3, 3, 16), (3, 3, 16, 32), (32 * 6 * 6, 10))
        w = [xp.asarray(rng.standard_normal(s, dtype=numpy.float32) * 0.05) for s in shapes]

        def relu(a: Any) -> Any:
            return xp.maximum(a, 0)

        if kind == "mlp":
            return lambda x: relu(relu(x @ w[0]) @ w[1]) @ w[2]

        def block(x: Any, kernel: Any) -> Any:  # 3x3 valid convolution, ReLU, 2x2 max-pool; NHWC
            n, h, wd, c = x.shape
            s = x.strides
            windows = xp.lib.stride_tricks.as_strided(x, (n, h - 2, wd - 2, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
            y = relu(xp.tensordot(windows, kernel, axes=([3, 4, 5], [0, 1, 2])))
            ph, pw = y.shape[1] // 2, y.shape[2] // 2
            return y[:, : ph * 2, : pw * 2].reshape(n, ph, 2, pw, 2, -1).max(axis=(2, 4))

        return lambda x: block(block(x, w[0]), w[1]).reshape(x.shape[0], -1) @ w[2]

    def inputs(self, kind: str, batch: int) -> Any:
        import numpy

        shape = input_shape(kind, batch, channels_last=True)
        return self.xp.asarray(numpy.random.default_rng(1).standard_normal(shape, dtype=numpy.float32))


class Numpy(ArrayModule):
    def _module(self) -> Any:
        import numpy

        return numpy


class Cupy(ArrayModule):
    timing = "cuda_events"

    def _module(self) -> Any:
        import cupy

        return cupy

    def seconds_per_batch(self, forward: Forward, x: Any, iterations: int) -> float:
        cuda = self.xp.cuda
        start, end = cuda.Event(), cuda.Event()
        start.record()
        for _ in range(iterations):
            forward(x)
        end.record()
        end.synchronize()
        return cuda.get_elapsed_time(start, end) / 1e3 / iterations

    def memory(self) -> tuple[int | None, str]:
        return self.xp.get_default_memory_pool().total_bytes(), "pool_held"


FRAMEWORKS: dict[str, type[Framework]] = {"torch": Torch, "tensorflow": TensorFlow, "cupy": Cupy, "numpy": Numpy}
