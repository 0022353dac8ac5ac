"""Which exceptions count as out-of-memory (the server answers those with 503, not 500)."""

from __future__ import annotations

import pytest
from cupy.cuda import memory, runtime

from gpuserve_cupy import CupyBackend

# cudaError_t values (this CuPy build exports no names for them).
MEMORY_ALLOCATION, INVALID_VALUE, INSUFFICIENT_DRIVER = 2, 1, 35


def test_status_numbers_mean_what_the_tests_say() -> None:
    assert str(runtime.CUDARuntimeError(MEMORY_ALLOCATION)).startswith("cudaErrorMemoryAllocation")
    assert str(runtime.CUDARuntimeError(INVALID_VALUE)).startswith("cudaErrorInvalidValue")
    assert str(runtime.CUDARuntimeError(INSUFFICIENT_DRIVER)).startswith("cudaErrorInsufficientDriver")


@pytest.mark.parametrize(
    "exc",
    [
        memory.OutOfMemoryError(1024, 0),  # (bytes asked, bytes already allocated)
        runtime.CUDARuntimeError(MEMORY_ALLOCATION),
        MemoryError("host allocation failed"),
    ],
    ids=["pool", "runtime", "host"],
)
def test_out_of_memory(exc: BaseException) -> None:
    assert CupyBackend().is_out_of_memory(exc)


@pytest.mark.parametrize(
    "exc",
    [
        runtime.CUDARuntimeError(INVALID_VALUE),
        runtime.CUDARuntimeError(INSUFFICIENT_DRIVER),
        RuntimeError("out of memory"),  # the words alone are not the error
        ValueError("bad input"),
    ],
    ids=["invalid-value", "no-driver", "text", "value"],
)
def test_not_out_of_memory(exc: BaseException) -> None:
    assert not CupyBackend().is_out_of_memory(exc)
