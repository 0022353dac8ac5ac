"""The CUDA driver library (libcuda) through ctypes: the one place gpuserve loads it.

Standard library only, because this file also runs as a script (`python -I
libcuda.py`) in a short-lived child that answers one question: which devices,
in which order, does the driver enumerate under this environment? `cuInit`
reads `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER` once, for the life of the
process, so the server asks in a child and never calls `cuInit` itself before
narrowing its own visibility. As a script it prints `{"uuids": [hex, ...]}`
(16 bytes each, ordinal order) or `{"error": "..."}`.

In-process, `load`, `problem` and `initialized` never call `cuInit`;
`device_uuid` does, so it is only for a process whose framework has already
initialised CUDA.
"""

from __future__ import annotations

import ctypes
import json
import sys

LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
UUID_BYTES = 16
_SUCCESS, _NOT_INITIALIZED, _NO_DEVICE = 0, 3, 100  # CUresult values


def load() -> ctypes.CDLL | None:
    """The driver library, or None where no NVIDIA driver is installed."""
    try:
        return ctypes.CDLL(LIBRARY)
    except OSError:
        return None


def problem() -> str | None:
    """Why the driver cannot be used, or None when it can (asks its version: no `cuInit`)."""
    lib = load()
    if lib is None:
        return f"no CUDA driver: {LIBRARY} not found"
    version = ctypes.c_int(0)
    status = lib.cuDriverGetVersion(ctypes.byref(version))
    if status != _SUCCESS or version.value <= 0:
        return f"the CUDA driver in {LIBRARY} did not report its version (CUresult {status})"
    return None


def initialized() -> bool | None:
    """Whether this process already initialised the driver; None without a driver.

    `cuDeviceGetCount` answers NOT_INITIALIZED before `cuInit` and initialises
    nothing itself. Once CUDA is initialised it has read `CUDA_VISIBLE_DEVICES`
    for good.
    """
    lib = load()
    if lib is None:
        return None
    count = ctypes.c_int(0)
    status = lib.cuDeviceGetCount(ctypes.byref(count))
    if status == _NOT_INITIALIZED:
        return False
    return status == _SUCCESS


class _Driver:
    """The calls that need `cuInit`, each checked."""

    def __init__(self) -> None:
        lib = load()
        if lib is None:
            raise OSError(f"no CUDA driver: {LIBRARY} not found")
        self.lib = lib
        # _v2 gives a MIG instance its own UUID; the original gives its parent's.
        self._get_uuid = getattr(lib, "cuDeviceGetUuid_v2", None) or lib.cuDeviceGetUuid

    def init(self) -> bool:
        """`cuInit`; False when the environment hides every device."""
        status = self.lib.cuInit(0)
        if status == _NO_DEVICE:
            return False
        self._check("cuInit", status)
        return True

    def count(self) -> int:
        count = ctypes.c_int(0)
        self._check("cuDeviceGetCount", self.lib.cuDeviceGetCount(ctypes.byref(count)))
        return count.value

    def uuid(self, ordinal: int) -> bytes:
        handle = ctypes.c_int(0)
        raw = (ctypes.c_ubyte * UUID_BYTES)()  # a byte array: a UUID may hold zero bytes
        self._check(f"cuDeviceGet({ordinal})", self.lib.cuDeviceGet(ctypes.byref(handle), ordinal))
        self._check(f"cuDeviceGetUuid({ordinal})", self._get_uuid(ctypes.byref(raw), handle))
        return bytes(raw)

    @staticmethod
    def _check(step: str, status: int) -> None:
        if status != _SUCCESS:
            raise OSError(f"{step} failed (CUresult {status})")


def device_uuids() -> list[bytes]:
    """The UUID bytes of CUDA ordinals 0..n-1 under this process's environment (calls `cuInit`)."""
    driver = _Driver()
    if not driver.init():
        return []
    return [driver.uuid(ordinal) for ordinal in range(driver.count())]


def device_uuid(ordinal: int) -> bytes:
    """The UUID bytes of CUDA device `ordinal` (calls `cuInit`: after the framework did)."""
    driver = _Driver()
    if not driver.init():
        raise OSError(f"no CUDA device is visible, so there is no device {ordinal}")
    return driver.uuid(ordinal)


def main() -> None:
    try:
        answer: dict[str, object] = {"uuids": [raw.hex() for raw in device_uuids()]}
    except OSError as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
