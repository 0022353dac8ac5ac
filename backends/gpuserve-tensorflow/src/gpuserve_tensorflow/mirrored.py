"""`Mirrored`: a model replicated by `tf.distribute.MirroredStrategy`.

`TensorFlowBackend.distribute(build, devices)` calls `build()` inside
`strategy.scope()`, so every variable the model creates is mirrored on each
device (TensorFlow can mirror a variable only when it is created in the
scope, hence a builder rather than a built model).

Calling the result with a batch splits every input along axis 0 into one
shard per device (sizes differ by at most one; a shard may be empty), runs
`model(*shards)` on all replicas in one `tf.function`, and concatenates the
per-replica outputs (a tensor or any nest of tensors) along axis 0, so the
result has the rows of the input, in order. The model must be traceable by
`tf.function`, as Keras models and `tf.Module`s built from TensorFlow ops are.
"""

from __future__ import annotations

from typing import Any


class Mirrored:
    """A model mirrored over a strategy's devices; call it with whole batches."""

    def __init__(self, strategy: Any, model: Any) -> None:
        import tensorflow as tf

        self.strategy = strategy
        self.model = model
        # One trace per input signature; reduce_retracing generalises the batch size.
        self._step = tf.function(lambda *shards: strategy.run(model, args=shards), reduce_retracing=True)

    @property
    def devices(self) -> tuple[str, ...]:
        """TensorFlow's names of the replicas' devices, in replica order."""
        return tuple(self.strategy.extended.worker_devices)

    def __call__(self, *inputs: Any) -> Any:
        import tensorflow as tf

        if not inputs:
            raise TypeError("Mirrored model called without inputs: pass at least one batch")
        tensors = [tf.convert_to_tensor(x) for x in inputs]
        rows = {int(t.shape[0]) if t.shape.rank else -1 for t in tensors}
        if len(rows) != 1 or -1 in rows:
            shapes = ", ".join(str(t.shape) for t in tensors)
            raise ValueError(f"inputs must share their first (batch) dimension, got shapes {shapes}")
        sizes = _shard_sizes(rows.pop(), self.strategy.num_replicas_in_sync)
        per_replica = [self._spread(tf.split(t, sizes, axis=0)) for t in tensors]
        outputs = self._step(*per_replica)
        return tf.nest.map_structure(
            lambda v: tf.concat(self.strategy.experimental_local_results(v), axis=0), outputs
        )

    def _spread(self, shards: list[Any]) -> Any:
        import tensorflow as tf

        # Called under each replica's device scope: identity copies the shard there.
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.identity(shards[ctx.replica_id_in_sync_group])
        )


def _shard_sizes(rows: int, replicas: int) -> list[int]:
    base, extra = divmod(rows, replicas)
    return [base + (1 if r < extra else 0) for r in range(replicas)]
