"""gpuserve-ray: replicas as Ray actors (`--executors ray`), placed by Ray, fed by gpuserve's batcher."""

from gpuserve_ray.kind import RayKind

__all__ = ["RayKind"]
