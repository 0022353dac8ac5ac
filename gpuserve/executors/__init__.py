"""Executors run a replica's batches off the event loop, bound to its devices."""

from gpuserve.executors.base import Executor, ExecutorDied, ExecutorStuck, Placement
from gpuserve.executors.process import ProcessExecutor
from gpuserve.executors.thread import ThreadExecutor

__all__ = ["Executor", "ExecutorDied", "ExecutorStuck", "Placement", "ProcessExecutor", "ThreadExecutor"]
