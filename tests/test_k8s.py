"""`gpuserve k8s`: manifests validated offline against the Kubernetes schemas, GPUs from the plan."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from serving import ROOT, serve

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
# The oldest Kubernetes the schemas cover, and the newest.
KUBERNETES = ("1.25.0", kubernetes_validate.utils.latest_version())
APP = textwrap.dedent("""
    import gpuserve

    @gpuserve.service(resources={"gpu": 1}, workers=2, backend="torch")
    class Pair:
        @gpuserve.api(batchable=True, max_batch_size=32)
        def predict(self, x: list[float]) -> list[float]:
            return x

        @gpuserve.api
        def ping(self) -> str:
            return "pong"

    @gpuserve.service(resources={"gpu": 2}, backend="torch")
    class Wide:
        @gpuserve.api
        def ping(self) -> str:
            return "pong"

    @gpuserve.service(resources={"gpu": 0.5, "gpu_type": "nvidia-l4"}, workers=3, backend="torch")
    class Halves:
        @gpuserve.api
        def ping(self) -> str:
            return "pong"

    @gpuserve.service(resources={"gpu": 1, "memory": "1000TiB"}, workers=2, backend="torch")
    class Roomy:
        @gpuserve.api
        def ping(self) -> str:
            return "pong"

    @gpuserve.service(backend="cpu")
    class OnCpu:
        @gpuserve.api
        def ping(self) -> str:
            return "pong"
""")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("k8s")
    (folder / "app.py").write_text(APP)
    return folder


def k8s(app_dir: Path, service: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuserve", "k8s", service, "--image", "registry.example/app:1.0",
                           *args], cwd=app_dir, capture_output=True, text=True, timeout=60, env=env)


def manifests(app_dir: Path, service: str, *args: str, **kw: Any) -> dict[str, dict[str, Any]]:
    """The documents by kind, each validated strictly against every Kubernetes version in KUBERNETES."""
    done = k8s(app_dir, service, *args, **kw)
    assert done.returncode == 0, done.stderr
    documents = list(yaml.safe_load_all(done.stdout))
    for document in documents:
        for version in KUBERNETES:
            kubernetes_validate.validate(document, version, strict=True)
    return {document["kind"]: document for document in documents}


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def env_of(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(objects)["env"]}


def test_every_object_is_valid_and_they_select_the_same_pods(app_dir: Path):
    objects = manifests(app_dir, "app:Pair")
    assert sorted(objects) == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/name": "pair"}
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    assert objects["Service"]["spec"]["selector"] == labels
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert container(objects)["image"] == "registry.example/app:1.0"


@pytest.mark.parametrize(("service", "args", "gpus"), [
    ("app:Pair", (), 2),  # 2 workers x 1 GPU
    ("app:Wide", (), 2),  # 1 worker x 2 GPUs
    ("app:Pair", ("--workers", "3"), 3),
    ("app:Halves", (), 2),  # 3 workers x 0.5: two share one GPU, the third has half of another
    ("app:Halves", ("--workers", "2"), 1),
    ("app:Roomy", (), 2),  # host memory is the node's to hold, not this machine's
])
def test_the_pod_asks_for_the_whole_gpus_its_plan_uses(app_dir: Path, service: str, args: tuple[str, ...],
                                                        gpus: int):
    objects = manifests(app_dir, service, *args)
    assert container(objects)["resources"] == {"limits": {"nvidia.com/gpu": gpus}}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert env_of(objects)["GPUSERVE_REQUIRE_GPU"] == "true"  # a pod without its GPUs fails, visibly
    if args:
        assert env_of(objects)["GPUSERVE_WORKERS"] == args[1]  # so the pod plans what was counted


def test_a_fractional_plan_explains_sharing_instead_of_guessing(app_dir: Path):
    done = k8s(app_dir, "app:Halves")
    assert done.returncode == 0, done.stderr
    assert ("note: Halves asks for 0.5 of a GPU per worker; Kubernetes allocates whole GPUs, so each pod asks "
            "for 2 and gpuserve packs its 3 worker(s) onto them, each capped at 50% of a GPU's memory.") in done.stderr
    for words in ("time-slicing in the NVIDIA device plugin", "nvidia.com/mig-<profile>", "gpuserve cannot tell"):
        assert words in done.stderr
        assert words in " ".join(line.strip("# ") for line in done.stdout.splitlines() if line.strip().startswith("#"))
    assert "nvidia.com/mig" not in "".join(line for line in done.stdout.splitlines() if not line.strip().startswith("#"))


def test_a_cpu_service_asks_for_no_gpu(app_dir: Path):
    objects = manifests(app_dir, "app:OnCpu")
    assert container(objects)["resources"] == {}
    assert "tolerations" not in objects["Deployment"]["spec"]["template"]["spec"]
    assert "GPUSERVE_REQUIRE_GPU" not in env_of(objects)


def test_probes_and_a_grace_period_above_the_drain(app_dir: Path):
    objects = manifests(app_dir, "app:Pair", "--port", "8080", "--startup-timeout", "900")
    probes = container(objects)
    assert probes["ports"] == [{"name": "http", "containerPort": 8080}]
    assert probes["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert probes["startupProbe"]["periodSeconds"] * probes["startupProbe"]["failureThreshold"] == 900
    assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert probes["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    pre_stop = int(probes["lifecycle"]["preStop"]["exec"]["command"][1])
    assert env_of(objects)["GPUSERVE_DRAIN_TIMEOUT"] == "30" and env_of(objects)["GPUSERVE_PORT"] == "8080"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert objects["Service"]["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]
    # The drain the server is told and the grace period follow GPUSERVE_DRAIN_TIMEOUT as serve does.
    longer = manifests(app_dir, "app:Pair", env={**os.environ, "GPUSERVE_DRAIN_TIMEOUT": "120"})
    assert env_of(longer)["GPUSERVE_DRAIN_TIMEOUT"] == "120"
    assert longer["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop + 120


def test_the_autoscaler_reads_the_queue_depth_per_pod(app_dir: Path):
    hpa = manifests(app_dir, "app:Pair", "--min-replicas", "2", "--max-replicas", "8")["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pair"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"] == {"name": "gpuserve_queue_depth"}
    # One full batch per worker: 2 workers x max_batch_size 32.
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "64"}
    chosen = manifests(app_dir, "app:Pair", "--queue-depth-target", "10")["HorizontalPodAutoscaler"]
    assert chosen["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "10"


def adapter_rule(output: str) -> list[dict[str, Any]]:
    """The Prometheus-adapter rule printed (commented) above the autoscaler."""
    lines = [line[len("#   "):] for line in output.splitlines() if line.startswith("#   ")]
    return yaml.safe_load("\n".join(lines))


def test_the_adapter_rule_turns_the_exported_metric_into_the_one_the_autoscaler_reads(app_dir: Path, tmp_path: Path):
    done = k8s(app_dir, "app:Pair")
    (rule,) = adapter_rule(done.stdout)
    hpa = [d for d in yaml.safe_load_all(done.stdout) if d["kind"] == "HorizontalPodAutoscaler"][0]
    assert rule["name"]["as"] == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "by (<<.GroupBy>>)" in rule["metricsQuery"] and rule["metricsQuery"].startswith("sum(")
    # The series it selects is what a running server exports at /metrics, one per API.
    with serve("basics:Basics", log_dir=tmp_path) as server:
        exported = server.get("metrics").body
    series = re.search(r"^(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.match(rule["name"]["matches"], series)
    assert re.search(rf'^{series}\{{api="echo"\}} ', exported, re.MULTILINE), exported


def test_the_documented_adapter_rule_is_the_one_printed(app_dir: Path):
    printed = adapter_rule(k8s(app_dir, "app:Pair").stdout)
    documented = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"```yaml\n(rules:\n.*?)```", documented, re.DOTALL).group(1)
    assert yaml.safe_load(block) == {"rules": printed}


def test_bad_values_are_named(app_dir: Path):
    bad_name = k8s(app_dir, "app:Pair", "--name", "My_Service")
    assert bad_name.returncode == 2 and "name 'My_Service' is not a Kubernetes name" in bad_name.stderr
    assert "e.g. 'my-service'" in bad_name.stderr
    upside_down = k8s(app_dir, "app:Pair", "--min-replicas", "3", "--max-replicas", "2")
    assert upside_down.returncode == 2 and "expected 1 <= min <= max" in upside_down.stderr
    assert k8s(app_dir, "app:Pair", "--startup-timeout", "0").returncode == 2
