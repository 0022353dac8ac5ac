"""Print as JSON the UUIDs of the CUDA devices the driver enumerates in this process.

Run as a script in a short-lived child process: `cuInit` reads
`CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER` once, for the life of the
process, so a server must never call it before narrowing its own visibility.
Standard library only, so it runs whatever the child's `sys.path` holds.

Prints `{"uuids": ["GPU-…", …]}` (ordinal order) or `{"error": "…"}`.
"""

import ctypes
import json
import sys

CUDA_ERROR_NO_DEVICE = 100  # also what a CUDA_VISIBLE_DEVICES hiding every device gives


def _format(raw: bytes) -> str:
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _uuids() -> list:
    library = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    cuda = ctypes.CDLL(library)
    status = cuda.cuInit(0)
    if status == CUDA_ERROR_NO_DEVICE:
        return []
    if status != 0:
        raise RuntimeError(f"cuInit returned CUDA error {status}")
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        raise RuntimeError("cuDeviceGetCount failed")
    # _v2 gives a MIG instance its own UUID; the original gives the parent's.
    get_uuid = getattr(cuda, "cuDeviceGetUuid_v2", None) or cuda.cuDeviceGetUuid
    uuids = []
    for ordinal in range(count.value):
        device = ctypes.c_int()
        raw = (ctypes.c_ubyte * 16)()
        if cuda.cuDeviceGet(ctypes.byref(device), ordinal) != 0 or get_uuid(raw, device) != 0:
            raise RuntimeError(f"cannot read the UUID of CUDA device {ordinal}")
        uuids.append(_format(bytes(raw)))
    return uuids


def main() -> None:
    try:
        answer = {"uuids": _uuids()}
    except (OSError, RuntimeError) as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
