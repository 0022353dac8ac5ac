"""gpuserve's benchmark suite: `python -m benchmarks` (see README.md)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: servers run from here
RESULTS = Path(__file__).resolve().parent / "results"
