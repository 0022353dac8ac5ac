"""What each replica is doing, as facts: readiness, `/stats` and `/metrics` read them from here.

The pool moves each replica through these states:

    building -> ready <-> busy
                  busy -> stuck (the watchdog gave up on its call) -> restarting
          ready | busy -> restarting (its executor was lost) -> ready
                           restarting -> failed (it failed to build too many times in a row)

A replica can take work when it is ready or busy (it takes the next batch
when this one ends). The server is ready when at least one can.
"""

from __future__ import annotations

import enum

import attrs


class ReplicaState(str, enum.Enum):
    BUILDING = "building"  # its first build is running
    READY = "ready"  # idle, waiting for a batch
    BUSY = "busy"  # running a batch
    STUCK = "stuck"  # its call ran past the limit; it is being replaced
    RESTARTING = "restarting"  # lost or stuck: being rebuilt (with back-off after failed builds)
    FAILED = "failed"  # failed to build too many times in a row: no longer rebuilt


TAKES_WORK = frozenset({ReplicaState.READY, ReplicaState.BUSY})


@attrs.define
class ReplicaHealth:
    """One replica's state and history; `key` names it as in `/stats` (device, worker, instance)."""

    key: str
    state: ReplicaState = ReplicaState.BUILDING
    restarts: int = 0  # rebuilds that succeeded after it was lost or stuck
    stuck: int = 0  # calls the watchdog gave up on
    build_failures: int = 0  # failed builds in a row; back to 0 once one succeeds
    last_error: str | None = None  # why it was last lost, stuck or failed to build

    def snapshot(self, abandoned_threads: int = 0) -> dict[str, object]:
        return {
            "state": self.state.value,
            "restarts": self.restarts,
            "stuck": self.stuck,
            "build_failures": self.build_failures,
            "abandoned_threads": abandoned_threads,
            "last_error": self.last_error,
        }


def takes_work(replicas: list[ReplicaHealth]) -> bool:
    return any(replica.state in TAKES_WORK for replica in replicas)


def not_taking_work(replicas: list[ReplicaHealth]) -> str:
    """Why no replica can take work, in a few words: each replica and its state."""
    return ", ".join(f"{replica.key} {replica.state.value}" for replica in replicas)
