"""The one timing harness: ``veca-deploy bench``, the tier selector, the recipe study and the
benchmarks all measure through it, so a number written by one means the same to the others.
:func:`measure` times one runner (cold start, warm-up, percentiles); :func:`interleaved` times
several variants side by side (A B C, C B A, ...) so a busy machine slows them alike.

It measures a cold start (load + compile, then the first inference, which often pays for lazy
allocations), then runs a warm-up and a fixed count or duration of timed inferences and reports
p50/p90/p95/p99, mean and throughput. Every output of every timed run is checked (finite, same
shapes as the first run): a graph that starts returning NaN under load must not look fast.
numpy only; psutil is optional (peak RSS falls back to ``resource.getrusage``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import BundleError, UsageError
from .base import Runner, check_feed

#: percentiles every measurement reports (the selector can ask any other from the samples)
PERCENTILES = (50, 90, 95, 99)
#: at most this many raw samples are kept in a result (and a profile) for later percentiles
MAX_SAMPLES = 2000

Clock = Callable[[], float]


@dataclass
class Timing:
    """One artifact at one tier on this device. Times are milliseconds."""

    load_ms: float | None
    first_ms: float | None
    count: int
    warmup: int
    batch: int
    mean_ms: float
    min_ms: float
    max_ms: float
    percentiles_ms: dict[str, float]
    throughput_ips: float
    rss_mb: float | None
    peak_rss_mb: float | None
    samples_ms: list[float] = field(default_factory=list)
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    #: how many separate passes the samples come from (:func:`merge`): 1 = one contiguous run
    passes: int = 1

    def percentile(self, q: float) -> float:
        """Latency at percentile ``q`` (0-100), from the kept samples when there are any."""
        return percentile_of(self.samples_ms, q) if self.samples_ms else self.percentiles_ms[str(int(q))]

    @property
    def p50(self) -> float:
        return self.percentiles_ms["50"]

    @property
    def p90(self) -> float:
        return self.percentiles_ms["90"]

    @property
    def p99(self) -> float:
        return self.percentiles_ms["99"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Timing":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


def percentile_of(samples: list[float] | np.ndarray, q: float) -> float:
    """Linear-interpolated percentile (numpy's default), as a plain float."""
    if len(samples) == 0:
        raise UsageError("no latency samples")
    if not 0 <= q <= 100 or math.isnan(q):
        raise UsageError(f"percentile must be in 0..100, got {q}")
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


# ---------------------------------------------------------------------------- memory
def rss_mb() -> float | None:
    """Current resident set size of this process in MiB (psutil, else /proc, else None)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        pass
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def peak_rss_mb() -> float | None:
    """Peak RSS of this process so far in MiB. Process-wide: it includes earlier artifacts."""
    try:
        import psutil

        info = psutil.Process().memory_info()
        peak = getattr(info, "peak_wset", None) or getattr(info, "peak_rss", None)
        if peak:
            return peak / 2**20
    except Exception:
        pass
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ru / 2**20 if sys.platform == "darwin" else ru / 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- sanity
def check_outputs(outputs: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]] | None,
                  batch: int, where: str) -> dict[str, tuple[int, ...]]:
    """Outputs must be finite, carry the batch and keep the shapes of the first run."""
    if not outputs:
        raise BundleError(f"{where}: the runtime returned no outputs")
    shapes = {}
    for name, y in outputs.items():
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != batch:
            raise BundleError(f"{where}: output {name!r} has shape {list(y.shape)}, expected batch {batch} first")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise BundleError(f"{where}: output {name!r} contains NaN or Inf")
        shapes[name] = tuple(y.shape)
    if expected is not None and shapes != expected:
        raise BundleError(f"{where}: output shapes changed between runs ({expected} -> {shapes})")
    return shapes


# ---------------------------------------------------------------------------- harness
def measure(runner: Runner, feed: dict[str, np.ndarray], *, count: int | None = 100,
            duration_s: float | None = None, warmup: int = 10, sanity: bool = True,
            clock: Clock = time.perf_counter, where: str | None = None) -> Timing:
    """Time ``runner`` on ``feed``: cold start (if not yet active), warm-up, then ``count`` runs
    or as many as fit in ``duration_s`` (at least 5). The feed is validated once up front, so
    the timed loop measures the backend, not our input checks."""
    if duration_s is None and (count is None or count < 1):
        raise UsageError(f"count must be a positive integer, got {count}")
    if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
        raise UsageError(f"duration must be a positive number of seconds, got {duration_s}")
    if warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")
    where = where or runner.path.name
    load_ms = first_ms = None
    if not runner.active:
        t0 = clock()
        runner.activate()
        load_ms = (clock() - t0) * 1e3
    feed = check_feed(runner.input_specs(), feed)
    batch = int(next(iter(feed.values())).shape[0]) if feed else 1
    t0 = clock()
    out = runner.infer(feed, check=False)
    first = (clock() - t0) * 1e3
    if load_ms is not None:
        first_ms = first
    shapes = check_outputs(out, None, batch, where)
    for _ in range(warmup):
        out = runner.infer(feed, check=False)
    if sanity and warmup:
        check_outputs(out, shapes, batch, where)
    samples: list[float] = []
    deadline = None if duration_s is None else clock() + duration_s
    loop_start = clock()
    while True:
        t0 = clock()
        out = runner.infer(feed, check=False)
        samples.append((clock() - t0) * 1e3)
        if sanity:
            check_outputs(out, shapes, batch, where)
        if deadline is None:
            if len(samples) >= count:  # type: ignore[operator]
                break
        elif clock() >= deadline and len(samples) >= 5:
            break
    wall = clock() - loop_start
    return _summary(samples, wall, load_ms=load_ms, first_ms=first_ms, warmup=warmup, batch=batch,
                    rss=rss_mb(), shapes={k: list(v) for k, v in shapes.items()})


def _summary(samples: list[float], wall: float, *, load_ms: float | None, first_ms: float | None, warmup: int,
             batch: int, rss: float | None, shapes: dict[str, list[int]], passes: int = 1,
             count: int | None = None) -> Timing:
    count = len(samples) if count is None else count
    arr = np.asarray(samples, dtype=np.float64)
    pct = {str(q): float(np.percentile(arr, q)) for q in PERCENTILES}
    kept = samples if len(samples) <= MAX_SAMPLES else list(np.sort(arr)[np.linspace(0, len(arr) - 1, MAX_SAMPLES).astype(int)])
    return Timing(load_ms=_r(load_ms), first_ms=_r(first_ms), count=count, warmup=warmup, batch=batch,
                  mean_ms=_r(float(arr.mean())), min_ms=_r(float(arr.min())), max_ms=_r(float(arr.max())),
                  percentiles_ms={k: _r(v) for k, v in pct.items()},
                  throughput_ips=round(batch * count / wall, 2) if wall > 0 else float("inf"),
                  rss_mb=_r(rss, 1), peak_rss_mb=_r(peak_rss_mb(), 1),
                  samples_ms=[_r(s, 4) for s in kept], output_shapes=shapes, passes=passes)


def merge(parts: list[Timing]) -> Timing:
    """One timing from several passes over the same candidate (``bench`` spreads each candidate's
    runs over the whole session: a host that slows down midway slows every candidate alike).
    Cold start is the first pass's; percentiles come from all samples together."""
    if not parts:
        raise UsageError("no timings to merge")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for t in parts[1:]:
        if t.output_shapes != first.output_shapes or t.batch != first.batch:
            raise BundleError(f"output shapes changed between passes ({first.output_shapes} -> {t.output_shapes})")
    samples = [s for t in parts for s in t.samples_ms]
    wall = sum(t.batch * t.count / t.throughput_ips for t in parts if t.throughput_ips and math.isfinite(t.throughput_ips))
    rss = max((t.rss_mb for t in parts if t.rss_mb is not None), default=None)
    return _summary(samples, wall, load_ms=first.load_ms, first_ms=first.first_ms, warmup=first.warmup,
                    batch=first.batch, rss=rss, shapes=first.output_shapes, passes=sum(t.passes for t in parts),
                    count=sum(t.count for t in parts))


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                iters: dict[str, int] | int = 1, log: Callable[[str], None] | None = None,
                block: int = 1, discard: int = 0) -> dict[str, list[float]]:
    """Time every variant ``rounds`` times, interleaved: odd rounds run the variants in order,
    even rounds in reverse (A B C, C B A, ...). One sample = mean ms of ``iters`` calls.
    ``warmup`` untimed calls per variant come first, also interleaved. ``block`` > 1: each
    variant's turn is a block of ``discard`` untimed calls and then ``block`` samples, so a
    runtime whose threads linger after the previous variant's calls does not pay for them
    (every variant still sees the same rounds and the same drift)."""
    names = list(variants)
    it = (lambda k: iters) if isinstance(iters, int) else (lambda k: iters.get(k, 1))
    for _ in range(warmup):
        for k in names:
            variants[k]()
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            n = it(k)
            for _ in range(discard):
                variants[k]()
            for _ in range(max(block, 1)):
                t0 = time.perf_counter()
                for _ in range(n):
                    variants[k]()
                samples[k].append((time.perf_counter() - t0) / n * 1e3)
        if log:
            log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k}={samples[k][-1]:.1f}" for k in names))
    return samples



def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)
