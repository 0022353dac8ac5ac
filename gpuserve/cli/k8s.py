"""`gpuserve k8s MODULE:ATTR --image IMAGE`: Kubernetes manifests for a service's image.

Prints a Deployment (whole `nvidia.com/gpu` per pod, as many as the plan
needs; probes on `/readyz` and `/livez`; a grace period above the drain), a
Service, a PodDisruptionBudget and a HorizontalPodAutoscaler on the queue
depth gpuserve exports, with the Prometheus-adapter rule that metric needs.
Kubernetes allocates whole GPUs: a fractional plan gets the whole GPUs its
workers pack onto, and a note on sharing GPUs between pods (time-slicing or
MIG), which depends on the cluster and is not guessed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap

import attrs

from gpuserve.cli.names import checked_dns_label, dns_label
from gpuserve.cli.templates import render
from gpuserve.devices import Device, Inventory
from gpuserve.errors import DeclarationError, GpuserveError
from gpuserve.loader import load_service
from gpuserve.planner import plan
from gpuserve.registry import default_registry
from gpuserve.service import ServiceSpec
from gpuserve.settings import Settings

PRE_STOP_S = 5  # long enough for the endpoints to drop the pod before it stops accepting
GRACE_MARGIN_S = 10  # past the drain: the last replies written, the process gone
PROBE_PERIOD_S = 5
# Room for any share: what is planned on the node is how many GPUs, not their memory.
_NODE_GPU_MEMORY = 80 * 2**30


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "k8s",
        help="print Kubernetes manifests for a service's image",
        description="Print a Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler for "
        "MODULE:ATTR (imported from the current directory) running IMAGE (see `gpuserve build`). "
        "Flags also read GPUSERVE_WORKERS, GPUSERVE_BACKEND, GPUSERVE_PORT and GPUSERVE_DRAIN_TIMEOUT.",
    )
    p.add_argument("service", metavar="MODULE:ATTR", help="the @gpuserve.service class, e.g. app:Classifier")
    p.add_argument("--image", required=True, help="the image to run, e.g. registry.example/classifier:1.0")
    p.add_argument("--name", help="name of the objects (default: the service's name in lower case)")
    p.add_argument("--workers", type=int, help="workers per pod (default: the service's workers=)")
    p.add_argument("--backend", help="backend to plan for (default: the one serve would choose)")
    p.add_argument("--port", type=int, help="port the server listens on (default 3000)")
    p.add_argument("--drain-timeout", type=float, help="seconds a stopping pod drains (default 30)")
    p.add_argument("--startup-timeout", type=_positive, default=600.0, metavar="SECONDS",
                   help="how long building the replicas may take before the pod is restarted (default 600)")
    p.add_argument("--min-replicas", type=int, default=1, help="fewest pods (default 1)")
    p.add_argument("--max-replicas", type=int, default=4, help="most pods (default 4)")
    p.add_argument("--queue-depth-target", type=_positive, metavar="N",
                   help="requests waiting per pod above which more pods are added (default: one full batch "
                   "per worker, the largest max_batch_size of a batchable API times the workers)")
    p.set_defaults(run=run)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


@attrs.frozen
class Manifests:
    yaml: str  # the objects, as one YAML stream
    notes: tuple[str, ...]  # for the user, beside the YAML


def run(args: argparse.Namespace) -> int:
    try:
        flags = {"workers": args.workers, "backend": args.backend, "port": args.port,
                 "drain_timeout": args.drain_timeout}
        settings = Settings.from_sources(flags, os.environ)
        spec = load_service(args.service)
        manifests = write(args, spec, settings)
    except GpuserveError as exc:
        print(f"gpuserve k8s: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(manifests.yaml)
    for note in manifests.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def gpus_per_pod(spec: ServiceSpec, workers: int, uses_gpus: bool) -> int:
    """The whole GPUs the plan of `workers` needs on a node with as many identical GPUs as it likes.

    Planned, not computed apart: fractional workers pack onto GPUs as they will in the pod.
    """
    # A pod gets GPUs of one node's type, and host memory on that node, not on the machine that writes this.
    resources = attrs.evolve(spec.resources, gpu_type=None, memory=None)
    if resources.gpu == 0 or not uses_gpus:
        return 0
    share = min(resources.gpu, 1)
    memory = max(_NODE_GPU_MEMORY, math.ceil((resources.gpu_memory or 0) / share))
    node = Inventory(
        devices=tuple(Device(index=i, uuid=f"GPU-node-{i}", name="a GPU of the node", memory_total=memory)
                      for i in range(workers * math.ceil(resources.gpu))),
        source="a Kubernetes node",
    )
    return len(plan(resources, workers, node, require_gpu=True).gpu_union())


def write(args: argparse.Namespace, spec: ServiceSpec, settings: Settings) -> Manifests:
    if not 1 <= args.min_replicas <= args.max_replicas:
        raise DeclarationError(f"--min-replicas {args.min_replicas} and --max-replicas {args.max_replicas}: "
                               f"expected 1 <= min <= max")
    entry = default_registry().choose(settings.backend, spec.backend)
    assert entry.cls is not None
    workers = settings.workers or spec.workers
    gpus = gpus_per_pod(spec, workers, entry.cls.uses_gpus)
    name = checked_dns_label(args.name or dns_label(spec.name))
    batch = max((api.max_batch_size if api.batchable else 1) for api in spec.apis.values())
    target = args.queue_depth_target or workers * batch
    drain = math.ceil(settings.drain_timeout)
    env = {"GPUSERVE_HOST": "0.0.0.0", "GPUSERVE_PORT": settings.port, "GPUSERVE_DRAIN_TIMEOUT": drain,
           "GPUSERVE_BACKEND": entry.name}
    if settings.workers:
        env["GPUSERVE_WORKERS"] = workers
    if gpus:
        env["GPUSERVE_REQUIRE_GPU"] = "true"  # a pod scheduled without its GPUs fails, never serves slowly
    notes = _fraction_notes(spec, workers, gpus) if spec.resources.is_fraction and gpus else ()
    values = dict(service=spec.name, service_ref=args.service, name=name, port=settings.port)
    documents = [
        render("k8s-deployment.yaml", **values, image=json.dumps(args.image), replicas=args.min_replicas,
               grace=PRE_STOP_S + drain + GRACE_MARGIN_S, drain=drain, pre_stop=PRE_STOP_S,
               startup=math.ceil(args.startup_timeout),
               startup_failures=math.ceil(args.startup_timeout / PROBE_PERIOD_S),
               env="".join(f"            - name: {key}\n              value: {json.dumps(str(value))}\n"
                           for key, value in env.items()),
               resources=_resources(gpus, notes), tolerations=_tolerations(gpus)),
        render("k8s-service.yaml", **values),
        render("k8s-pdb.yaml", **values),
        render("k8s-hpa.yaml", **values, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
               target=f"{target:g}", adapter_rule=_commented(render("prometheus-adapter-rule.yaml"))),
    ]
    return Manifests("---\n".join(documents), notes)


def _resources(gpus: int, notes: tuple[str, ...]) -> str:
    indent = " " * 12
    if not gpus:
        return f"{indent}{{}}  # no GPU: CPU and memory requests are yours to size\n"
    comments = "".join(f"{indent}# {line}\n" for note in notes for line in textwrap.wrap(note, 90))
    return f"{comments}{indent}limits:\n{indent}  nvidia.com/gpu: {gpus}\n"


def _tolerations(gpus: int) -> str:
    if not gpus:
        return ""
    return ("      # GPU nodes are often tainted so that only pods asking for GPUs land there.\n"
            "      tolerations:\n"
            "        - key: nvidia.com/gpu\n"
            "          operator: Exists\n"
            "          effect: NoSchedule\n")


def _fraction_notes(spec: ServiceSpec, workers: int, gpus: int) -> tuple[str, ...]:
    share = spec.resources.gpu
    return (
        f"{spec.name} asks for {share:g} of a GPU per worker; Kubernetes allocates whole GPUs, so each pod "
        f"asks for {gpus} and gpuserve packs its {workers} worker(s) onto them, each capped at {share:.0%} "
        f"of a GPU's memory.",
        "To let pods share one GPU instead, the cluster must offer shares, and gpuserve cannot tell which "
        "kind yours has: with time-slicing in the NVIDIA device plugin a GPU is advertised as several "
        "nvidia.com/gpu (pods share it without memory isolation); with MIG a GPU is split into instances "
        "requested as nvidia.com/mig-<profile> (e.g. nvidia.com/mig-3g.40gb), each one GPU to the pod. "
        "Either way, declare gpu=1 for a pod's share and set the limit by hand.",
    )


def _commented(text: str) -> str:
    return "\n".join(f"#   {line}" for line in text.splitlines())
