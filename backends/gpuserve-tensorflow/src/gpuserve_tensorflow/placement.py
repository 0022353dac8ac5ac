"""`place`: values are copied to a device; stateful objects must already be there.

TensorFlow places a variable once, when it is created, and has no general way
to move it. Copying a model's variables to another device would need a
framework-specific clone (Keras `clone_model` fails on many subclassed models)
and would leave the caller holding state that no longer serves. So a model is
checked, not moved: build it inside `backend.device_context(device)` (gpuserve
runs a service's `__init__` there) and `place` confirms where it lives.
"""

from __future__ import annotations

from typing import Any

from gpuserve_tensorflow.devices import on_device, unable

_BUILD_THERE = (
    "TensorFlow places variables when they are created: build the model inside "
    "gpuserve's replica (its __init__ runs under the device) or "
    "`with backend.device_context(device):`"
)


def variables_of(obj: Any) -> list[Any] | None:
    """The `tf.Variable`s an object holds, or None when it holds no state (a value)."""
    import tensorflow as tf

    if isinstance(obj, type):
        return None
    own = _as_tf_variable(obj)
    if own is not None:
        return [own]
    held = getattr(obj, "variables", None)  # tf.Module, Keras layers and models
    if held is not None and not callable(held):
        found = [_as_tf_variable(v) for v in held]
        return [v for v in found if v is not None]
    if isinstance(obj, tf.__internal__.tracking.Trackable):  # e.g. a loaded SavedModel
        return [t for t in tf.train.TrackableView(obj).descendants() if isinstance(t, tf.Variable)]
    return None


def place(obj: Any, name: str, label: str) -> Any:
    """`obj` on TensorFlow device `name` (gpuserve's `label`, for messages)."""
    variables = variables_of(obj)
    if variables is None:
        return _copy(obj, name, label)
    what = type(obj).__name__
    if getattr(obj, "built", True) is False:
        raise unable(
            f"place an unbuilt {what} on {label}",
            "its variables do not exist yet and would be created wherever it is first called. "
            + _BUILD_THERE,
        )
    elsewhere = [v for v in variables if not on_device(v.device, name)]
    if elsewhere:
        first = elsewhere[0]
        raise unable(
            f"move a {what} to {label} ({name})",
            f"{len(elsewhere)} of its {len(variables)} variable(s) live elsewhere "
            f"({first.name} on {first.device}). " + _BUILD_THERE,
        )
    return obj


def _copy(value: Any, name: str, label: str) -> Any:
    import tensorflow as tf

    try:
        # Under an explicit device, identity copies its input there.
        with tf.device(name):
            return tf.identity(value)
    except (TypeError, ValueError) as exc:
        raise unable(
            f"place a {type(value).__name__} on {label}",
            "expected a tensor or array-like value, a tf.Variable, or a model (tf.Module, Keras)",
        ) from exc


def _as_tf_variable(obj: Any) -> Any:
    import tensorflow as tf

    if isinstance(obj, tf.Variable):
        return obj
    inner = getattr(obj, "value", None)  # a Keras 3 variable wraps a tf.Variable
    return inner if isinstance(inner, tf.Variable) else None
