"""Execution time against batch size, learned online to predict the next batch."""

from __future__ import annotations

DECAY = 0.98  # older batches count less: devices warm up, clocks change


class LatencyModel:
    """Exponentially weighted least squares of seconds = a + b * batch_size."""

    __slots__ = ("_w", "_x", "_y", "_xx", "_xy", "observations", "largest")

    def __init__(self) -> None:
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.observations = 0
        self.largest = 0  # the largest batch seen: the edge of the evidence

    def observe(self, size: int, seconds: float) -> None:
        self._w = self._w * DECAY + 1.0
        self._x = self._x * DECAY + size
        self._y = self._y * DECAY + seconds
        self._xx = self._xx * DECAY + size * size
        self._xy = self._xy * DECAY + size * seconds
        self.observations += 1
        if size > self.largest:
            self.largest = size

    def predict(self, size: int) -> float | None:
        """Predicted seconds for a batch of `size`; None until there is evidence."""
        if self.observations < 3:
            return None
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var_x = self._xx / self._w - mean_x * mean_x
        if var_x <= 1e-9:  # one size seen so far: scale per item, never below the fixed cost
            return mean_y * max(size / mean_x, 1.0) if mean_x else mean_y
        slope = max((self._xy / self._w - mean_x * mean_y) / var_x, 0.0)
        return max(mean_y + slope * (size - mean_x), 0.0)

    def predict_seen(self, size: int) -> float | None:
        """As `predict`, but None above the largest batch seen.

        Single requests cost mostly their fixed overhead: scaled up to a full
        batch they predict one many times too slow. What is refused on a
        prediction must rest on evidence, so beyond it there is none.
        """
        return self.predict(size) if size <= self.largest else None

    def largest_within(self, seconds: float, limit: int) -> int | None:
        """The largest batch size up to `limit` predicted to take at most `seconds` (at least 1);
        None until there is evidence."""
        if self.predict(1) is None:
            return None
        lo, hi = 1, limit  # predictions grow with size: search for the last that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.predict(mid) <= seconds:  # type: ignore[operator]
                lo = mid
            else:
                hi = mid - 1
        return lo
