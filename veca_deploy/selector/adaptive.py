"""The adaptive controller: pure decision logic, no runners, no clock (so tests can drive it).

Observed latencies fill a window of ``window`` calls; at the end of each window the chosen
percentile is compared with the budget:

* over the budget -> step down one rung of the ladder (the next faster candidate); the window
  restarts, so a step down happens within ``2 * window`` calls of a slowdown starting;
* below ``headroom * budget`` *and* the rung above is predicted to fit (its profiled latency
  scaled by how much slower than profiled the current rung runs now) for ``patience``
  consecutive windows -> step back up one rung. Both conditions together are the hysteresis:
  a device that is still twice as slow as profiled keeps predicting that the upper rung does
  not fit, so the controller does not bounce between rungs.

The ladder's top is the initial selection: the profile is the evidence that anything above it
does not fit, so adaptation never goes above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AdaptiveController:
    ladder_ms: list[float]  # profiled latency of each rung, rung 0 = best quality (slowest)
    budget_ms: float
    percentile: float = 95.0
    margin: float = 0.1
    window: int = 16
    headroom: float = 0.7
    patience: int = 3
    level: int = 0
    _samples: list[float] = field(default_factory=list, repr=False)
    _calm: int = field(default=0, repr=False)
    history: list[tuple[int, int, str]] = field(default_factory=list)  # (call, new level, why)
    calls: int = 0

    def __post_init__(self) -> None:
        if not self.ladder_ms:
            raise ValueError("empty ladder")
        if self.window < 1 or self.patience < 1 or not 0 < self.headroom <= 1:
            raise ValueError("window and patience must be >= 1 and headroom in (0, 1]")

    def observe(self, latency_ms: float, level: int | None = None) -> int | None:
        """Record one call served at ``level``; return the new level when it should change."""
        self.calls += 1
        if level is not None and level != self.level:
            return None  # a call that started before the last switch says nothing about this rung
        self._samples.append(float(latency_ms))
        if len(self._samples) < self.window:
            return None
        p = float(np.percentile(self._samples, self.percentile))
        self._samples.clear()
        if p > self.budget_ms and self.level < len(self.ladder_ms) - 1:
            self._calm = 0
            return self._move(self.level + 1, f"p{self.percentile:g}={p:.3g} ms > budget {self.budget_ms:g} ms")
        if self.level > 0:
            slowdown = p / max(self.ladder_ms[self.level], 1e-9)
            predicted = self.ladder_ms[self.level - 1] * slowdown
            if p < self.headroom * self.budget_ms and predicted <= self.budget_ms * (1 - self.margin):
                self._calm += 1
                if self._calm >= self.patience:
                    self._calm = 0
                    return self._move(self.level - 1, f"p{self.percentile:g}={p:.3g} ms, upper rung predicted "
                                                      f"{predicted:.3g} ms for {self.patience} windows")
            else:
                self._calm = 0
        return None

    def _move(self, level: int, why: str) -> int:
        self.level = level
        self._calm = 0
        self._samples.clear()
        self.history.append((self.calls, level, why))
        return level
