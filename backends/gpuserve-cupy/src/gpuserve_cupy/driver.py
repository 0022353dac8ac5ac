"""The CUDA driver library, reached through ctypes without CuPy.

Loading the library and asking its version neither calls `cuInit` nor creates
a context, so `CUDA_VISIBLE_DEVICES` is still unread afterwards: safe in
`viable()`, before the server has narrowed what this process may see.
"""

from __future__ import annotations

import ctypes
import sys

LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
_UUID_BYTES = 16


def load() -> ctypes.CDLL | None:
    """The driver library, or None where no NVIDIA driver is installed."""
    try:
        return ctypes.CDLL(LIBRARY)
    except OSError:
        return None


def problem() -> str | None:
    """Why the driver cannot be used, or None when it can."""
    lib = load()
    if lib is None:
        return f"no CUDA driver: {LIBRARY} not found"
    version = ctypes.c_int(0)
    status = lib.cuDriverGetVersion(ctypes.byref(version))
    if status != 0 or version.value <= 0:
        return f"the CUDA driver in {LIBRARY} did not report its version (CUresult {status})"
    return None


def device_uuid(ordinal: int) -> bytes:
    """The 16 UUID bytes of CUDA device `ordinal`, straight from the driver.

    Only for after CUDA has been initialised in this process (by CuPy), so
    `cuInit` here changes nothing.
    """
    lib = load()
    if lib is None:
        raise OSError(f"no CUDA driver: {LIBRARY} not found")

    def check(step: str, status: int) -> None:
        if status != 0:
            raise OSError(f"{step} failed for CUDA device {ordinal} (CUresult {status})")

    # _v2 reports a MIG instance's own UUID, as the runtime's device properties do.
    get_uuid = getattr(lib, "cuDeviceGetUuid_v2", None) or lib.cuDeviceGetUuid
    handle = ctypes.c_int(0)
    uuid = (ctypes.c_ubyte * _UUID_BYTES)()  # a byte array: a UUID may hold zero bytes
    check("cuInit", lib.cuInit(0))
    check("cuDeviceGet", lib.cuDeviceGet(ctypes.byref(handle), ordinal))
    check("cuDeviceGetUuid", get_uuid(ctypes.byref(uuid), handle))
    return bytes(uuid)
