"""A replica in its own spawned process that sees only its own devices.

The child's environment is the server's, narrowed by the backend's
`visibility_env` for the worker's devices, so the framework in the child
numbers them from 0: `cuda:0` there is this worker's first GPU.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import attrs

from gpuserve.backend import Backend
from gpuserve.errors import GpuserveError
from gpuserve.executors import wire
from gpuserve.executors.base import STOP_GRACE_S, Executor, ExecutorDied, Placement
from gpuserve.executors.replica import BatchResult
from gpuserve.service import ServiceSpec


class ReplicaStartError(GpuserveError):
    pass


def child_environment(base: Mapping[str, str], backend: Backend, placement: Placement) -> dict[str, str]:
    """The server's environment narrowed to the worker's devices; never widened.

    The planned devices all come from the inventory, which already honours the
    inherited `CUDA_VISIBLE_DEVICES`, so the UUID list is always a subset.
    """
    env = dict(base)
    env.update(backend.visibility_env(placement.devices))
    return env


class ProcessExecutor(Executor):
    def __init__(
        self,
        spec: ServiceSpec,
        backend: Backend,
        placement: Placement,
        *,
        service_ref: str,
        base_env: Mapping[str, str],
    ) -> None:
        self.placement = placement
        self.service_ref = service_ref
        self.backend = backend
        self._env = child_environment(base_env, backend, placement)
        # Devices renumbered as the child sees them: 0..k-1.
        self._child_placement = attrs.evolve(
            placement, devices=tuple(d.renumbered(i) for i, d in enumerate(placement.devices))
        )
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gpuserve-io-{self.key}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self.pid: int | None = None

    async def start(self) -> None:
        await asyncio.wrap_future(self._io.submit(self._spawn))

    def _spawn(self) -> None:
        # A private socket pair: no address to find, nothing to authenticate,
        # and EOF on our end the moment the child dies.
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gpuserve.executors.child", str(theirs.fileno())],
                env=self._env,
                pass_fds=[theirs.fileno()],
            )
        self._conn = Connection(ours.detach())
        wire.send(self._conn, {
            "service": self.service_ref,
            "sys_path": [p for p in sys.path if p],
            "backend": self.backend.name,
            "placement": self._child_placement,
        })
        try:
            reply = wire.recv(self._conn)
        except (EOFError, OSError):
            code = self._proc.wait()
            self._kill()
            raise ReplicaStartError(f"worker process for {self.key} exited with code {code} while starting") from None
        if reply[0] == "error":
            self._kill()
            failure = reply[1]
            raise ReplicaStartError(f"replica {self.key} failed to build: {failure.type}: {failure.message}")
        _, self.pid = reply

    def _exchange(self, message: Any) -> BatchResult:
        if self._conn is None:
            raise ExecutorDied(f"worker process {self.key} is not running")
        try:
            wire.send(self._conn, message)
            return wire.recv(self._conn)
        except (EOFError, OSError) as exc:
            code = self._kill(grace_s=1.0)
            raise ExecutorDied(f"worker process {self.key} (pid {self.pid}) died (exit code {code})") from exc

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def run(self, api_name: str, items: Sequence[dict[str, Any]]) -> BatchResult:
        return await asyncio.wrap_future(self._io.submit(self._exchange, (api_name, list(items))))

    def _kill(self, grace_s: float = 0.0) -> int | None:
        """Close the channel and make sure the child is gone; its exit code."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=grace_s)  # a child that is dying gets to say why
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def _terminate(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s`: work was drained before this is called.

        Runs beside the I/O thread, which may be stuck waiting on the child;
        the child's exit unblocks it.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        await asyncio.get_running_loop().run_in_executor(None, self._terminate, grace_s)
        await asyncio.wrap_future(self._io.submit(self._kill))  # closes the channel in its own thread
        return True
