"""`GET /metrics`: serving signals and the planned GPUs' gauges in the Prometheus format."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuserve.testing import fake_gpu, write_fake_inventory
from serving import serve


def samples(server):
    reply = server.get("metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    text = reply.body if isinstance(reply.body, str) else str(reply.body)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_serving_signals_are_exported(tmp_path):
    with serve("basics:Basics", log_dir=tmp_path) as server:
        for i in range(3):
            assert server.post("echo", {"value": i}).status == 200
        assert server.post("fail", {"kind": "x"}).status == 500
        found = samples(server)
    assert found[("gpuserve_outcomes_total", (("api", "echo"), ("outcome", "ok")))] == 3
    assert found[("gpuserve_outcomes_total", (("api", "fail"), ("outcome", "error")))] == 1
    assert found[("gpuserve_batch_size_count", (("api", "echo"),))] == 3
    assert found[("gpuserve_queue_depth", (("api", "echo"),))] == 0
    assert found[("gpuserve_exec_time_seconds_total", (("api", "echo"), ("executor", "cpu:0#0.0")))] > 0


def test_planned_gpus_get_memory_and_utilisation_gauges(tmp_path):
    gpus = [fake_gpu(0, utilization=37, used_gib=12), fake_gpu(1), fake_gpu(2)]
    path = write_fake_inventory(tmp_path / "gpus.json", gpus)
    with serve("placement:TwoWorkers", env={"GPUSERVE_FAKE_GPUS": path, "CUDA_VISIBLE_DEVICES": "0,2"},
               log_dir=tmp_path) as server:
        found = samples(server)
    gauges = {labels: value for (name, labels), value in found.items() if name == "gpuserve_gpu_memory_used_bytes"}
    uuids = {dict(labels)["uuid"] for labels in gauges}
    assert uuids == {gpus[0]["uuid"], gpus[2]["uuid"]}  # the planned GPUs, not GPU 1
    label = (("name", gpus[0]["name"]), ("uuid", gpus[0]["uuid"]))
    assert found[("gpuserve_gpu_memory_used_bytes", label)] == pytest.approx(gpus[0]["memory_used"])
    assert found[("gpuserve_gpu_utilization_percent", label)] == 37
