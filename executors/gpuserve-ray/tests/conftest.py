"""A real two-node Ray cluster on this machine, on loopback only, with logical GPUs on fake inventories.

Ray swaps 127.0.0.1 for the machine's interface address when it resolves a
node or cluster address, unless Ray clusters are limited to this machine:
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, set here before Ray is imported and
passed to every server, keeps every Ray process of these tests on 127.0.0.1
(a test checks with `ss`). Each node declares one logical GPU of type H100
(no hardware needed), 2 GiB of Ray's `memory` resource, and its own fake inventory (`GPUSERVE_FAKE_GPUS`), so a
replica's gpuserve discovers, under the `CUDA_VISIBLE_DEVICES` Ray gave it,
the fake GPU of its own node.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import attrs  # noqa: E402
import pytest  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from gpuserve.testing import fake_gpu, write_fake_inventory  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import alive, descendants, wait_gone  # noqa: E402

LOOPBACK = "127.0.0.1"
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
APPS = Path(__file__).resolve().parent / "apps"
NODE_MEMORY = 2 * 2**30  # logical, as Ray counts it: not what the machine has, the same on every machine


@attrs.frozen
class RayCluster:
    address: str
    gpu_of_node: dict[str, str]  # node id -> the uuid of its one fake GPU
    journal: Path  # BATCH_APPS_DIR of every node's replicas
    head_inventory: str  # the head node's fake inventory: a server on the head sees it (fake-gpu is viable there)

    @property
    def server_env(self) -> dict[str, str]:
        return {**RAY_ENV, "GPUSERVE_FAKE_GPUS": self.head_inventory}


@pytest.fixture(scope="session")
def ray_cluster():
    # Ray's files (sockets, logs, the address of "the cluster on this machine") in a folder of these
    # tests, not the machine's /tmp/ray. Short: Ray's socket paths live under it.
    root = Path(tempfile.mkdtemp(prefix="gsr-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(root)
    journal = root / "journal"
    journal.mkdir()
    nodes = []
    cluster = Cluster()
    try:
        for n in (0, 1):
            gpu = fake_gpu(10 + n)
            env = {"GPUSERVE_FAKE_GPUS": write_fake_inventory(root / f"node-{n}.json", [gpu]),
                   "BATCH_APPS_DIR": str(journal)}
            args = dict(num_cpus=4, num_gpus=1, resources={"accelerator_type:H100": 1}, memory=NODE_MEMORY,
                        env_vars=env, node_ip_address=LOOPBACK, include_dashboard=False)
            node = cluster.add_node(**args)
            nodes.append((node.node_id, gpu["uuid"]))
        cluster.wait_for_nodes()
        yield RayCluster(cluster.address, dict(nodes), journal, str(root / "node-0.json"))
    finally:
        ours = descendants(os.getpid())  # every Ray process these tests started, before they go
        cluster.shutdown()
        left = wait_gone(ours, timeout=30)
        assert not left, f"Ray processes left behind: {[alive(pid) for pid in left]}"
        shutil.rmtree(root, ignore_errors=True)
        del os.environ["RAY_TMPDIR"]
