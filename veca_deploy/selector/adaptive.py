"""The adaptive controller: pure decision logic, no runners (tests drive it with latency
sequences and, for the time-based rules, their own ``clock``).

Real devices are noisy: cold first calls, isolated spikes from other processes, a p95 over 16
calls that is really the window's maximum. So the controller only acts on *sustained* evidence:

* **warm-up**: the first ``warmup`` calls are ignored (cold caches, lazy compilation);
* **windowed percentile**: every ``window`` calls at the current rung, the chosen percentile of
  the last ``span`` calls at that rung (at least ``min_samples``) is compared with the budget;
* **step down** (next faster rung) when that percentile is over the budget for
  ``down_patience`` consecutive windows, or at once when the *median* of the latest window is
  over it (most calls miss: an overload, not noise). Steps down are never rate limited: missing
  the budget is what adaptation exists to stop;
* **step up** after ``patience`` consecutive windows (each judged on its own calls) below ``headroom * budget`` in which the rung
  above is also predicted to fit (its profiled latency scaled by how much slower than profiled
  the current rung runs now: a device still twice as slow keeps predicting a miss), and only
  when the dwell since the last switch has passed and fewer than ``max_ups_per_minute`` steps up
  happened in the last 60 s;
* **back-off**: a step up undone by a step down within ``probation_s`` sets the dwell to
  ``dwell_s``, doubling with each further undone one up to ``max_dwell_s``; a step up that
  holds for ``probation_s`` clears it. This is what stops flapping under an uneven load.

Every switch restarts the samples, so the new rung is judged on its own calls. The ladder's
top is the initial selection: the profile is the evidence that anything above it does not fit,
so adaptation never goes above it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

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
    warmup: int = 8  # first calls ignored
    min_samples: int | None = None  # samples at a rung before any decision (None: ``window``)
    span: int | None = None  # calls the percentile looks back on (None: 4 * window)
    down_patience: int = 2  # windows over budget before stepping down (median over: at once)
    dwell_s: float = 2.0  # dwell before a step up, once a step up had to be undone
    max_dwell_s: float = 60.0
    probation_s: float = 10.0  # a step down this soon after a step up undoes it
    max_ups_per_minute: int = 4
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    history: list[tuple[int, int, str]] = field(default_factory=list)  # (call, new level, why)
    calls: int = 0
    _samples: deque = field(default_factory=deque, repr=False)
    _fresh: int = field(default=0, repr=False)  # samples since the last evaluation
    _calm: int = field(default=0, repr=False)
    _over: int = field(default=0, repr=False)
    _backoff_s: float = field(default=0.0, repr=False)
    _last_switch: float | None = field(default=None, repr=False)
    _last_was_up: bool = field(default=False, repr=False)
    _ups: deque = field(default_factory=deque, repr=False)  # times of recent steps up

    def __post_init__(self) -> None:
        if not self.ladder_ms:
            raise ValueError("empty ladder")
        if self.window < 1 or self.patience < 1 or not 0 < self.headroom <= 1:
            raise ValueError("window and patience must be >= 1 and headroom in (0, 1]")
        if self.min_samples is None:
            self.min_samples = self.window
        if self.span is None:
            self.span = max(4 * self.window, self.min_samples)
        if self.warmup < 0 or self.min_samples < 1 or self.span < self.min_samples or self.down_patience < 1 \
                or self.max_ups_per_minute < 1 or not 0 <= self.dwell_s <= self.max_dwell_s \
                or self.probation_s < 0:
            raise ValueError("warmup >= 0, 1 <= min_samples <= span, down_patience >= 1, max_ups_per_minute >= 1, "
                             "0 <= dwell_s <= max_dwell_s and probation_s >= 0 required")
        self._samples = deque(maxlen=self.span)

    @property
    def dwell_now_s(self) -> float:
        """The dwell a step up waits for now (0 until a step up has been undone)."""
        return self._backoff_s

    def observe(self, latency_ms: float, level: int | None = None) -> int | None:
        """Record one call served at ``level``; return the new level when it should change."""
        self.calls += 1
        if self.calls <= self.warmup:
            return None
        if level is not None and level != self.level:
            return None  # a call that started before the last switch says nothing about this rung
        self._samples.append(float(latency_ms))
        self._fresh += 1
        if self._fresh < self.window or len(self._samples) < self.min_samples:
            return None
        self._fresh = 0
        now = self.clock()
        if self._last_was_up and self._last_switch is not None and now - self._last_switch >= self.probation_s:
            self._backoff_s = 0.0  # the last step up held: forgiven
        samples = np.asarray(self._samples)
        p = float(np.percentile(samples, self.percentile))
        recent = float(np.median(samples[-self.window:]))
        tag = f"p{self.percentile:g}={p:.3g} ms"
        bottom = self.level >= len(self.ladder_ms) - 1
        if p > self.budget_ms:
            self._calm = 0
            self._over += 1
            if not bottom and recent > self.budget_ms:
                return self._move(self.level + 1, now, f"{tag}, median {recent:.3g} ms > budget {self.budget_ms:g} ms")
            if not bottom and self._over >= self.down_patience:
                return self._move(self.level + 1, now, f"{tag} > budget {self.budget_ms:g} ms for "
                                                       f"{self._over} windows")
            return None
        self._over = 0
        if self.level == 0:
            return None
        # going up is judged on the latest window alone, so samples from an overload that just
        # ended do not hold the recovery back; patience, dwell and back-off guard against noise
        p = float(np.percentile(samples[-self.window:], self.percentile))
        tag = f"p{self.percentile:g}={p:.3g} ms"
        slowdown = p / max(self.ladder_ms[self.level], 1e-9)
        predicted = self.ladder_ms[self.level - 1] * slowdown
        if not (p < self.headroom * self.budget_ms and predicted <= self.budget_ms * (1 - self.margin)):
            self._calm = 0
            return None
        self._calm += 1
        if self._calm < self.patience:
            return None
        if self._last_switch is not None and now - self._last_switch < self._backoff_s:
            return None  # dwell (back-off after an undone step up) not over: stay calm, wait
        while self._ups and now - self._ups[0] >= 60.0:
            self._ups.popleft()
        if len(self._ups) >= self.max_ups_per_minute:
            return None
        self._ups.append(now)
        return self._move(self.level - 1, now, f"{tag}, upper rung predicted {predicted:.3g} ms for "
                                               f"{self.patience} windows")

    def _move(self, level: int, now: float, why: str) -> int:
        up = level < self.level
        if not up and self._last_was_up and self._last_switch is not None \
                and now - self._last_switch < self.probation_s:
            self._backoff_s = self.dwell_s if self._backoff_s <= 0 else min(2 * self._backoff_s, self.max_dwell_s)
            why += f" (undid a step up: dwell {self._backoff_s:g} s)"
        self.level = level
        self._calm = self._over = self._fresh = 0
        self._samples.clear()
        self._last_switch, self._last_was_up = now, up
        self.history.append((self.calls, level, why))
        return level
