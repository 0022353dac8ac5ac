"""gpuserve `Device`s <-> TensorFlow's physical and logical devices.

A gpuserve GPU's `index` is its CUDA ordinal in this process, which is also
TensorFlow's physical GPU index. TensorFlow's *logical* names (`/GPU:k`) count
only the visible GPUs, so after `set_visible_devices` the two differ; this
module does the translation from the configuration alone, without
initialising TensorFlow.

TensorFlow's soft placement runs an op on the CPU when its device does not
exist; `require` checks existence first, so a wrong device is an error.
"""

from __future__ import annotations

from typing import Any

from gpuserve.plugin import CapabilityError, Device

NAME = "tensorflow"
HOST = "/CPU:0"


def unable(capability: str, hint: str = "") -> CapabilityError:
    return CapabilityError(NAME, capability, hint)


def physical_gpus() -> list[Any]:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def physical_gpu(device: Device) -> Any:
    """TensorFlow's `PhysicalDevice` for a GPU `device`, or a clear error."""
    gpus = physical_gpus()
    if device.index < 0 or device.index >= len(gpus):
        raise unable(f"use {device.label}", _what_exists(gpus))
    return gpus[device.index]


def tf_name(device: Device) -> str:
    """`/GPU:k` (k counts visible GPUs only) or `/CPU:0`; does not initialise TensorFlow.

    TensorFlow has one host device, so every gpuserve CPU device maps to `/CPU:0`.
    """
    if not device.is_gpu:
        return HOST
    import tensorflow as tf

    gpu = physical_gpu(device)
    visible = tf.config.get_visible_devices("GPU")
    if gpu not in visible:
        shown = ", ".join(f"cuda:{physical_gpus().index(g)}" for g in visible) or "none"
        raise unable(
            f"use {device.label}",
            f"it is hidden from TensorFlow in this process (visible GPUs: {shown}); "
            "pass it to limit_visibility() before TensorFlow initialises",
        )
    # A GPU split into several logical devices takes that many names; ours is its first.
    logical = sum(_logical_count(g) for g in visible[: visible.index(gpu)])
    return f"/GPU:{logical}"


def require(device: Device) -> str:
    """`tf_name(device)`, checked against the devices TensorFlow created (initialises it)."""
    import tensorflow as tf

    name = tf_name(device)
    spec = tf.DeviceSpec.from_string(name)
    existing = tf.config.list_logical_devices(spec.device_type)
    if not any(_same(tf.DeviceSpec.from_string(d.name), spec) for d in existing):
        names = ", ".join(d.name for d in existing) or "none"
        raise unable(f"use {device.label} as {name}", f"TensorFlow created no such device (it has: {names})")
    return name


def on_device(tensor_device: str, name: str) -> bool:
    """Whether a tensor's or variable's `.device` string is the device `name`."""
    import tensorflow as tf

    return _same(tf.DeviceSpec.from_string(tensor_device), tf.DeviceSpec.from_string(name))


def _same(a: Any, b: Any) -> bool:
    return a.device_type == b.device_type and (a.device_index or 0) == (b.device_index or 0)


def _logical_count(gpu: Any) -> int:
    import tensorflow as tf

    configured = tf.config.get_logical_device_configuration(gpu)
    return len(configured) if configured else 1


def _what_exists(gpus: list[Any]) -> str:
    if gpus:
        valid = ", ".join(f"cuda:{i}" for i in range(len(gpus)))
        return f"TensorFlow sees {len(gpus)} GPU(s) in this process: {valid}"
    return (
        "TensorFlow sees no GPU in this process (a CPU-only TensorFlow build, no CUDA driver, "
        "or CUDA_VISIBLE_DEVICES hides them; for GPUs install gpuserve-tensorflow[gpu])"
    )
