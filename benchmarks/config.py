"""What one run measures: sizes, durations and where results go."""

from __future__ import annotations

from pathlib import Path

import attrs

SCENARIOS = ("device", "serve", "baseline", "v2", "streaming", "scaling", "hotpath", "resnet", "overload", "threads",
             "chaos", "soak")
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s != "soak")  # ten minutes: asked for by name
CONCURRENCY = (1, 16, 64, 256)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_BATCH_SIZES = (1, 16, 256)
RESNET_BATCH = 32  # the `resnet` scenario's batch size, served (max_batch_size) and offline


@attrs.frozen
class RunConfig:
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    duration_s: float = 10.0  # load per (target, concurrency), split over `rounds`
    rounds: int = 10  # gpuserve and baseline alternate per round, so drift hits both alike
    warmup_s: float = 1.0
    concurrency: tuple[int, ...] = CONCURRENCY
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    backends: tuple[str, ...] | None = None  # device scenario: None means every viable one
    loadgen: str = "auto"  # "wrk", "python" or "auto" (wrk when installed)
    quick: bool = False
    out: Path = Path("benchmarks/results")
    triton_python: str | None = None  # v2 scenario: an interpreter with nvidia-pytriton, for the Triton baseline
    faults: tuple[str, ...] | None = None  # chaos scenario: None means every fault

    @classmethod
    def quick_run(cls, **overrides: object) -> "RunConfig":
        """Seconds instead of minutes: shapes and plumbing, not trustworthy figures."""
        values: dict[str, object] = dict(
            duration_s=1.0, rounds=1, warmup_s=0.0, batch_sizes=QUICK_BATCH_SIZES, quick=True
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def round_s(self) -> float:
        return self.duration_s / self.rounds
