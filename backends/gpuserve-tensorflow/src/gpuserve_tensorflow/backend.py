"""`TensorFlowBackend`: gpuserve's device decisions carried out with TensorFlow.

TensorFlow is imported inside the methods, never at module level: the
registry imports every backend to list it, and `viable()` must stay cheap.

TensorFlow fixes its device configuration (visible GPUs, memory growth,
memory limits) when it initialises, at the first op. `limit_visibility` and
`limit_memory` therefore work only before that, and say so otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from gpuserve.plugin import (
    Backend,
    BackendError,
    Device,
    ImageRequirements,
    MemoryInfo,
    Viability,
    discover,
    host_memory,
)
from gpuserve_tensorflow import builds
from gpuserve_tensorflow.devices import HOST, NAME, physical_gpu, physical_gpus, require, tf_name, unable
from gpuserve_tensorflow.mirrored import Mirrored
from gpuserve_tensorflow.placement import place, variables_of

# Stands in for a GPU's UUID when the inventory cannot name it; never valid in CUDA_VISIBLE_DEVICES.
_UNKNOWN_UUID = "tensorflow-gpu-{index}-uuid-unknown"

_TOO_LATE = (
    "TensorFlow is already initialised in this process, so its {what} can no longer change; "
    "{call} must run before the first TensorFlow op in the process (a service module that runs "
    "TensorFlow ops when it is imported defeats this)"
)


class TensorFlowBackend(Backend):
    name = NAME
    priority = 90  # below torch's 100: the default only where torch is absent or not viable

    @classmethod
    def viable(cls) -> Viability:
        if importlib.util.find_spec("tensorflow") is None:
            return Viability.no("tensorflow is not installed: pip install gpuserve-tensorflow[cpu] or [gpu]")
        return Viability.yes()

    @classmethod
    def cuda_build(cls) -> str | None:
        return builds.cuda_build()

    @classmethod
    def image_requirements(cls, cuda: str | None) -> ImageRequirements:
        return builds.image_requirements(cuda)

    # -- discovery and visibility -------------------------------------------------
    def devices(self) -> list[Device]:
        """TensorFlow's physical GPUs; UUID, name and memory joined from gpuserve's inventory.

        TensorFlow numbers physical GPUs as CUDA does in this process, so its
        index `i` is the inventory's ordinal `i` under the same environment.
        """
        import tensorflow as tf

        gpus = physical_gpus()
        if not gpus:
            return []
        # CUDA reads this process's environment; so must the inventory that names its ordinals.
        inventory = discover(os.environ)
        known = {d.index: d for d in inventory.devices} if inventory.source == "nvml" else {}
        found = []
        for index, gpu in enumerate(gpus):
            if index in known:
                found.append(known[index])
                continue
            details = tf.config.experimental.get_device_details(gpu)
            name = details.get("device_name", "unknown GPU")
            found.append(Device(index=index, uuid=_UNKNOWN_UUID.format(index=index), name=name))
        return found

    def visibility_env(self, devices: Sequence[Device]) -> dict[str, str]:
        unknown = [d.label for d in devices if d.is_gpu and d.uuid == _UNKNOWN_UUID.format(index=d.index)]
        if unknown:
            raise BackendError(
                f"cannot show {', '.join(unknown)} to a child process: no UUID is known for it "
                "(gpuserve's inventory could not name it), and an ordinal alone may mean another GPU there"
            )
        return super().visibility_env(devices)

    def limit_visibility(self, devices: Sequence[Device]) -> None:
        """Show TensorFlow exactly the GPUs in `devices` (ordinals in this process), growing memory on demand.

        CPU devices are ignored: TensorFlow always keeps its host device.
        """
        import tensorflow as tf

        wanted = sorted({d.index: d for d in devices if d.is_gpu}.values(), key=lambda d: d.index)
        gpus = [physical_gpu(d) for d in wanted]
        try:
            tf.config.set_visible_devices(gpus, "GPU")
            for gpu in gpus:
                # TensorFlow refuses growth on a GPU that limit_memory() already capped.
                if tf.config.get_logical_device_configuration(gpu) is None:
                    tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:
            shown = ", ".join(d.label for d in wanted) or "no GPU"
            raise BackendError(
                _TOO_LATE.format(what=f"visible GPUs ({shown})", call="limit_visibility()") + f" [{exc}]"
            ) from exc

    # -- placement ---------------------------------------------------------------
    def native_device(self, device: Device) -> str:
        """TensorFlow's name for `device`: `/GPU:k` or, for any CPU device, `/CPU:0`."""
        return tf_name(device)

    def place(self, obj: Any, device: Device) -> Any:
        """A value (tensor, array, list) is copied to `device`; a model or variable is checked to be there.

        See `gpuserve_tensorflow.placement`: TensorFlow cannot move variables,
        so a model built on another device raises `CapabilityError`.
        """
        return place(obj, require(device), device.label)

    def distribute(self, model: Any, devices: Sequence[Device]) -> Any:
        """`Mirrored` over `devices` when `model` is a builder (a callable making the model).

        `build()` runs inside `MirroredStrategy.scope()`; see `gpuserve_tensorflow.mirrored`.
        A model already built cannot be mirrored (its variables exist on one
        device); it is accepted for one device only, where it is `place`d.
        CPU devices are one host device to TensorFlow: they count once.
        """
        import tensorflow as tf

        if not devices:
            raise ValueError("distribute() needs at least one device, got none")
        names = list(dict.fromkeys(require(d) for d in devices))
        if _is_builder(model):
            strategy = tf.distribute.MirroredStrategy(devices=names)
            with strategy.scope():
                built = model()
            return Mirrored(strategy, built)
        if len(names) == 1:
            return place(model, names[0], devices[0].label)
        raise unable(
            f"mirror an already built {type(model).__name__} over {', '.join(d.label for d in devices)}",
            "MirroredStrategy mirrors only variables created in its scope: pass a function that builds "
            "the model, e.g. backend.distribute(lambda: make_model(), devices)",
        )

    @contextlib.contextmanager
    def device_context(self, device: Device) -> Iterator[None]:
        """Ops and variables created in the calling thread go to `device` (checked to exist)."""
        import tensorflow as tf

        with tf.device(require(device)):
            yield

    def limit_memory(self, device: Device, fraction: float) -> None:
        """Cap TensorFlow's allocation on a GPU at `fraction` of its memory (before initialisation).

        The GPU becomes one logical device of that size, reserved when
        TensorFlow initialises. TensorFlow honours memory growth only while no
        GPU has such a limit, so in a process with a limit every GPU allocates
        up front.
        """
        import tensorflow as tf

        if not 0 < fraction <= 1:
            raise ValueError(f"memory fraction {fraction!r} for {device.label} is invalid: expected 0 < fraction <= 1")
        if not device.is_gpu:
            raise unable(f"cap memory on {device.label}", "TensorFlow has no memory limit for its host device")
        if device.memory_total <= 0:
            raise BackendError(
                f"cannot cap {device.label} at {fraction:.0%}: its total memory is unknown "
                "(pass the Device from gpuserve's inventory, which reads it from NVML)"
            )
        gpu = physical_gpu(device)
        limit_mib = int(fraction * device.memory_total / 2**20)
        try:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mib)]
            )
        except RuntimeError as exc:
            raise BackendError(
                _TOO_LATE.format(what=f"memory limit on {device.label} ({limit_mib} MiB)", call="limit_memory()")
                + f" [{exc}]"
            ) from exc

    # -- run time ----------------------------------------------------------------
    def memory(self, device: Device) -> MemoryInfo:
        """GPU: bytes TensorFlow holds in tensors against the cap (or the device); CPU: process RSS."""
        import tensorflow as tf

        name = require(device)
        if name == HOST:
            return host_memory()
        used = tf.config.experimental.get_memory_info(name.lstrip("/"))["current"]
        configured = tf.config.get_logical_device_configuration(physical_gpu(device))
        cap = configured[0].memory_limit * 2**20 if configured else device.memory_total
        return MemoryInfo(used=used, total=cap)

    def set_cpu_threads(self, threads: int) -> None:
        """TensorFlow's intra-op threads in this process; too late once it has initialised (then it says so)."""
        import tensorflow as tf

        if tf.config.threading.get_intra_op_parallelism_threads() == threads:
            return
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError as exc:
            raise BackendError(
                _TOO_LATE.format(what=f"intra-op threads ({threads} wanted)", call="set_cpu_threads()")
                + " (or serve with --cpu-threads 0 to keep TensorFlow's own)" + f" [{exc}]"
            ) from exc

    def synchronize(self, device: Device) -> None:
        """Wait for all queued TensorFlow work (TensorFlow synchronises every device at once)."""
        import tensorflow as tf

        require(device)
        tf.test.experimental.sync_devices()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        # Without TensorFlow imported, `exc` cannot be one of its errors: no import needed.
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(exc, tf.errors.ResourceExhaustedError):
            return True
        return super().is_out_of_memory(exc)


def _is_builder(model: Any) -> bool:
    """A class or a stateless callable builds a model; an object holding variables is one."""
    return isinstance(model, type) or (callable(model) and variables_of(model) is None)
