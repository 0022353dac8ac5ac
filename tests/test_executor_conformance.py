"""The shared executor suite (`gpuserve.testing.ExecutorConformance`) for the two local kinds.

Ray actors run the same suite in `executors/gpuserve-ray/tests`.
"""

import pytest

from gpuserve.testing import ExecutorConformance


class TestThreadExecutors(ExecutorConformance):
    replicas_are_processes = False

    @pytest.fixture(scope="class")
    @classmethod
    def executor_args(cls):
        return ("--executors", "thread")


class TestProcessExecutors(ExecutorConformance):
    replicas_are_processes = True

    @pytest.fixture(scope="class")
    @classmethod
    def executor_args(cls):
        return ("--executors", "process")
