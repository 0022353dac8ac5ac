"""The shared executor suite, run against Ray actors on the two-node test cluster."""

import pytest
from conftest import RAY_ENV

from gpuserve.testing import ExecutorConformance


class TestRayExecutors(ExecutorConformance):
    replicas_are_processes = True  # actors are processes of this machine's simulated nodes

    @pytest.fixture(scope="class")
    @classmethod
    def executor_args(cls, ray_cluster):
        return ("--executors", "ray", "--ray-address", ray_cluster.address)

    @pytest.fixture(scope="class")
    @classmethod
    def workdir(cls, ray_cluster):
        return ray_cluster.journal  # actors take their node's environment, not the server's

    @pytest.fixture(scope="class")
    @classmethod
    def server_env(cls):
        return RAY_ENV
