"""Throughput on one device (issue 19): measure each candidate with N requests in flight, and pick
the candidate + concurrency that carries a workload of ``streams`` x ``fps`` images per second.

Measurements live in the device profile, in the candidate's entry under the optional key
``concurrency``: ``{"1": {...}, "2": {...}}``, one :class:`~veca_deploy.runtimes.timing.Timing`
dict per level (images/s with that many requests in flight, latency percentiles from submit to
completion, kept samples) plus ``streams``, ``runner`` and ``pool`` (the settings that ran) and
``measured``; a level that could not run has ``{"error": ...}``. The entry's other keys are
unchanged, so every reader of the old format reads it as before. A level counts only while the
entry itself is valid for this artifact and thread count (:meth:`Profile.timing`).

Selection (:func:`select_workload`): a (candidate, concurrency k) *fits* when its measured
throughput is at least ``streams * fps`` and its latency at ``percentile`` is at most
``budget_ms * (1 - margin)`` (the margin of :func:`~veca_deploy.selector.select.select`). Each
candidate serves at the smallest fitting k (the fewest requests in flight that carry the load:
the lowest latency, the fewest threads busy); among candidates the rules of ``select`` apply (most
accurate, ties within the evaluation's resolution to the lower latency). When nothing fits, a
:class:`WorkloadError` (a BudgetError, exit 8) names the limit that fails and the best
figures measured. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..bundle.reader import Bundle
from ..errors import BackendUnavailable, BudgetError, UsageError, VecaError
from ..runtimes import create_runner
from ..runtimes.pool import ASYNC_BACKENDS, create_pool, measure_pool, stream_options, usable_cores
from ..runtimes.timing import Timing
from .candidates import Candidate
from .profile import (CONCURRENCY_KEY, Profile, _describe, _now, carry_concurrency, example_feed, load_profile,
                      measure_candidates, runner_options, save_profile)
from .select import Measured, Selection, check_budget, decide, rank, scoped_candidates, unprofiled

Progress = Callable[..., None]


class WorkloadError(BudgetError):
    """No (candidate, concurrency) carries the workload (a :class:`BudgetError`: exit 8, one
    line): ``limit`` says which one fails ("throughput", "latency" or "throughput and latency"),
    ``best`` holds the best figures measured."""

    def __init__(self, message: str, limit: str = "", best: dict | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.best = best or {}


def default_levels(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the usable cores (at least 1 and 2)."""
    n = max(2, int(cores or usable_cores()))
    out, k = [], 1
    while k <= n:
        out.append(k)
        k *= 2
    return out


def parse_levels(levels: Any, what: str = "concurrency") -> list[int] | None:
    """``"1,2,4"`` or an iterable of positive integers -> a sorted unique list (None stays None)."""
    if levels is None:
        return None
    items = levels.split(",") if isinstance(levels, str) else list(levels)
    out = []
    for v in items:
        try:
            k = int(str(v).strip())
        except ValueError:
            raise UsageError(f"{what} must be a comma list of positive integers, got {levels!r}") from None
        if k < 1 or isinstance(v, bool):
            raise UsageError(f"{what} levels must be >= 1, got {v!r}")
        out.append(k)
    if not out:
        raise UsageError(f"{what} list is empty")
    return sorted(set(out))


def concurrency_timings(profile: Profile | None, cand: Candidate, threads: int | None = None) -> dict[int, Timing]:
    """The valid measurements of ``cand`` per number of requests in flight (empty when none)."""
    if profile is None or profile.timing(cand, threads) is None:
        return {}
    raw = (profile.entries.get(cand.key) or {}).get(CONCURRENCY_KEY)
    if not isinstance(raw, dict):
        return {}
    out = {}
    for k, d in raw.items():
        try:
            level = int(k)
        except (TypeError, ValueError):
            continue
        if not isinstance(d, dict) or d.get("error") or level < 1:
            continue
        try:
            t = Timing.from_dict(d)
        except (TypeError, KeyError):
            continue
        if t.count and t.throughput_ips and math.isfinite(t.throughput_ips):
            out[level] = t
    return dict(sorted(out.items()))


def measure_concurrency(bundle: Bundle, cands: Iterable[Candidate], levels: Iterable[int], *,
                        count: int | None = 100, duration_s: float | None = None, warmup: int = 10,
                        threads: int | None = None, profile: Profile, progress: Progress | None = None,
                        runner_extra: dict[str, Any] | None = None) -> Profile:
    """Time each candidate with k requests in flight for every k in ``levels`` and store the result
    under its profile entry's ``concurrency`` key. Only candidates whose entry is valid (it passed
    its golden gate here with these settings, see :func:`measure_candidates`) are measured; the
    others are left as they are. One runner + pool per (artifact, variant, k): k changes the
    runner's compile settings (OpenVINO streams, ONNX Runtime threads per run)."""
    levels = parse_levels(levels) or [1]
    todo = [c for c in cands if profile.timing(c, threads) is not None]
    groups: dict[tuple, list[Candidate]] = {}
    for c in todo:
        groups.setdefault(c.runner_key, []).append(c)
    report = progress or (lambda *a, **k: None)
    report("concurrency", advance=0, total=len(todo) * len(levels))
    for group in groups.values():
        art, backend = group[0].artifact, group[0].backend
        for k in levels:
            if k > 1 and backend not in ASYNC_BACKENDS:
                for c in group:
                    _store(profile, c, k, {"error": f"streams > 1 is not supported for {backend} yet"})
                    report(f"{c.key} x{k}: not supported")
                continue
            runner = pool = None
            try:
                try:
                    opts = runner_options(backend, threads, {**(runner_extra or {}), **group[0].runner_extra,
                                                             **stream_options(backend, k)})
                    runner = create_runner(backend, bundle.path_of(art), **opts)
                    pool = create_pool(runner, k)
                except BackendUnavailable as e:
                    for c in group:
                        _store(profile, c, k, {"error": str(e)})
                    continue
                except VecaError as e:
                    for c in group:
                        _store(profile, c, k, {"error": " ".join(str(e).split())})
                    continue
                for c in group:
                    report(f"{c.key} x{k}")
                    try:
                        t = measure_pool(pool, example_feed(c), in_flight=k, count=count, duration_s=duration_s,
                                         warmup=warmup, where=f"{c.key} x{k}")
                        _store(profile, c, k, {**t.to_dict(), "streams": k, "runner": _describe(runner),
                                               "pool": pool.describe()})
                    except VecaError as e:
                        _store(profile, c, k, {"error": " ".join(str(e).split())})
            finally:
                if pool is not None:
                    pool.close()
                if runner is not None:
                    runner.close()
    return profile


def _store(profile: Profile, c: Candidate, k: int, d: dict[str, Any]) -> None:
    e = profile.entries[c.key]
    conc = e.get(CONCURRENCY_KEY) if isinstance(e.get(CONCURRENCY_KEY), dict) else {}
    conc = {**conc, str(k): {**d, "measured": _now()}}
    e[CONCURRENCY_KEY] = dict(sorted(conc.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0))


# ---------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Point:
    """One candidate at one concurrency: measured images/s and latency at the percentile."""

    cand: Candidate
    streams: int
    throughput_ips: float
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.cand.tier.to_dict(), "accuracy": self.cand.accuracy, "streams": self.streams,
                "throughput_ips": round(self.throughput_ips, 2), "latency_ms": round(self.latency_ms, 4)}


@dataclass
class WorkloadSelection:
    """The candidate and concurrency chosen for ``streams_needed`` x ``fps`` within the budget."""

    chosen: Point
    points: list[Point]  # every measured (candidate, concurrency), best quality first, then k
    streams_needed: int
    fps: float
    budget_ms: float | None
    percentile: float
    margin: float
    device: str
    threads: int | None = None
    profiled: bool = False
    skipped: list[str] = field(default_factory=list)
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def required_ips(self) -> float:
        return self.streams_needed * self.fps

    @property
    def limit_ms(self) -> float | None:
        return None if self.budget_ms is None else self.budget_ms * (1 - self.margin)

    @property
    def streams(self) -> int:
        """Requests to keep in flight (``Runtime.open(..., streams=...)``)."""
        return self.chosen.streams

    def fits(self, p: Point) -> tuple[bool, bool]:
        """(throughput fits, latency fits)."""
        limit = self.limit_ms
        return p.throughput_ips >= self.required_ips, limit is None or p.latency_ms <= limit

    def selection(self) -> Selection:
        """A :class:`Selection` at the chosen concurrency (what ``Runtime`` serves; its adaptive
        ladder steps through the candidates measured at that concurrency)."""
        k = self.chosen.streams
        ranked = rank([Measured(p.cand, p.latency_ms) for p in self.points if p.streams == k])
        chosen = next(m for m in ranked if m.cand == self.chosen.cand)
        return Selection(chosen, ranked, self.budget_ms, self.percentile, self.margin, self.device, self.profiled,
                         list(self.skipped), {**self.decision, "streams": k})

    def to_dict(self) -> dict[str, Any]:
        limit = self.limit_ms
        return {"device": self.device, "streams_needed": self.streams_needed, "fps": self.fps,
                "required_ips": round(self.required_ips, 4), "budget_ms": self.budget_ms,
                "percentile": self.percentile, "margin": self.margin,
                "limit_ms": None if limit is None else round(limit, 4), "threads": self.threads,
                "profiled": self.profiled, "chosen": self.chosen.to_dict(),
                "points": [{**p.to_dict(), "fits_throughput": self.fits(p)[0], "fits_latency": self.fits(p)[1]}
                           for p in self.points],
                "skipped": self.skipped, "decision": self.decision}


def check_workload(streams: Any, fps: Any) -> tuple[int, float]:
    if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
        raise UsageError(f"streams must be a positive integer, got {streams!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise UsageError(f"fps must be a positive number, got {fps!r}")
    return int(streams), float(fps)


def select_workload(bundle: Bundle, streams: int, fps: float, budget_ms: float | None, *, percentile: float = 95,
                    margin: float = 0.1, backend: Any = "auto", tiers: list[int] | None = None,
                    precisions: list[str] | None = None, levels: Iterable[int] | None = None,
                    profile: Profile | None = None, measure: bool = True, count: int = 50, warmup: int = 5,
                    threads: int | None = None, progress: Progress | None = None,
                    offline: bool = False) -> WorkloadSelection:
    """The most accurate candidate + concurrency carrying ``streams`` x ``fps`` images/s whose
    latency at ``percentile`` fits ``budget_ms`` (None: throughput only).

    ``levels``: the concurrencies to consider (default: whatever the profile measured, and
    :func:`default_levels` for candidates it has none for). Missing measurements are taken here
    and saved into the profile unless ``measure=False`` (then a :class:`BudgetError` says to run
    ``veca-deploy bench --concurrency``). ``offline=True`` decides for the device that measured
    ``profile``; nothing runs here."""
    streams, fps = check_workload(streams, fps)
    check_budget(budget_ms, percentile, margin)
    wanted = parse_levels(levels)
    cands = scoped_candidates(bundle, backend, tiers, precisions, profile, offline)
    measure = measure and not offline
    profiled = False
    if profile is None:
        profile = load_profile(bundle)
    missing = unprofiled(cands, profile, threads, measure)
    if missing and not measure:
        raise BudgetError(f"no latency profile for this device covering {len(missing)} candidate(s); "
                          "run veca-deploy bench --concurrency first")
    if missing:
        profile = measure_candidates(bundle, missing, count=count, warmup=warmup, threads=threads, profile=profile,
                                     progress=progress, passes=1)  # at load time: one compile per candidate
        profiled = True
    assert profile is not None
    todo: dict[tuple[int, ...], list[Candidate]] = {}
    for c in cands:
        if profile.timing(c, threads) is None:
            continue
        have = concurrency_timings(profile, c, threads)
        tried = set(int(k) for k in ((profile.entries.get(c.key) or {}).get(CONCURRENCY_KEY) or {})
                    if str(k).isdigit())
        need = [k for k in (wanted or ([] if have else default_levels())) if k not in tried]
        if need:
            todo.setdefault(tuple(need), []).append(c)
    if todo and not measure:
        n = sum(len(v) for v in todo.values())
        raise BudgetError(f"no concurrency measurements for this device covering {n} candidate(s) at "
                          f"{', '.join(sorted({str(k) for ks in todo for k in ks}, key=int))} in flight; "
                          "run veca-deploy bench --concurrency first")
    for ks, group in todo.items():
        measure_concurrency(bundle, group, ks, count=count, warmup=warmup, threads=threads, profile=profile,
                            progress=progress)
        profiled = True
    if profiled and not offline:
        try:
            save_profile(bundle, profile)
        except OSError:
            pass  # a read-only bundle still gets a selection, just not a saved profile
    points, skipped = [], []
    for c in cands:
        have = concurrency_timings(profile, c, threads)
        if wanted:
            have = {k: t for k, t in have.items() if k in wanted}
        if not have:
            why = profile.error(c) or _level_errors(profile, c) or "not measured"
            skipped.append(f"{c.key}: {why}")
            continue
        points += [Point(c, k, float(t.throughput_ips), t.percentile(percentile)) for k, t in have.items()]
    if not points:
        raise BudgetError("no candidate could be measured with requests in flight here: " + "; ".join(skipped[:4]))
    order = {m.cand.key: i for i, m in enumerate(rank([Measured(p.cand, p.latency_ms) for p in points]))}
    points.sort(key=lambda p: (order[p.cand.key], p.streams))
    ws = WorkloadSelection(points[0], points, streams, fps, budget_ms, float(percentile), float(margin),
                           profile.device, threads, profiled, skipped)
    per_cand: dict[str, Point] = {}
    for p in points:  # the smallest fitting concurrency of each candidate
        if all(ws.fits(p)) and p.cand.key not in per_cand:
            per_cand[p.cand.key] = p
    if not per_cand:
        raise _failure(ws)
    fitting = {p.cand.key: p for p in per_cand.values()}
    chosen_m, decision = decide(rank([Measured(p.cand, p.latency_ms) for p in per_cand.values()]))
    ws.chosen = fitting[chosen_m.cand.key]
    decision["streams"] = ws.chosen.streams
    decision["concurrency_rule"] = "each candidate at the smallest number of requests in flight that fits"
    ws.decision = decision
    return ws


def _level_errors(profile: Profile, c: Candidate) -> str | None:
    raw = (profile.entries.get(c.key) or {}).get(CONCURRENCY_KEY) or {}
    errs = [f"x{k}: {d['error']}" for k, d in raw.items() if isinstance(d, dict) and d.get("error")]
    return "; ".join(errs[:2]) or None


def _ips(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _point(p: Point, pct: float) -> str:
    return (f"{p.cand.tier} at {p.streams} in flight: {_ips(p.throughput_ips)} img/s, "
            f"p{pct:g} {p.latency_ms:.3g} ms")


def _failure(ws: WorkloadSelection) -> WorkloadError:
    """One line: the workload, the limit that fails, the best figures measured."""
    pct, need, limit = ws.percentile, ws.required_ips, ws.limit_ms
    what = (f"{ws.streams_needed} stream(s) x {ws.fps:g} fps = {_ips(need)} img/s"
            + ("" if limit is None else f" with p{pct:g} <= {limit:.3g} ms (budget {ws.budget_ms:g} ms, "
                                        f"margin {ws.margin:g})"))
    fast_enough = [p for p in ws.points if ws.fits(p)[0]]
    quick = [p for p in ws.points if ws.fits(p)[1]]
    most = max(ws.points, key=lambda p: p.throughput_ips)
    lowest = min(ws.points, key=lambda p: p.latency_ms)
    if fast_enough:  # throughput is reachable, never within the latency limit
        best = min(fast_enough, key=lambda p: p.latency_ms)
        kind, detail = "latency", (f"at >= {_ips(need)} img/s the lowest p{pct:g} is {best.latency_ms:.3g} ms "
                                   f"({_point(best, pct)})")
        figures = {"latency": best.to_dict()}
    elif quick:
        best = max(quick, key=lambda p: p.throughput_ips)
        kind, detail = "throughput", (f"within the latency limit the most is {_ips(best.throughput_ips)} img/s "
                                      f"({_point(best, pct)})")
        figures = {"throughput": best.to_dict()}
    else:
        kind = "throughput and latency"
        detail = (f"the most is {_ips(most.throughput_ips)} img/s ({_point(most, pct)}), the lowest "
                  f"p{pct:g} {lowest.latency_ms:.3g} ms ({_point(lowest, pct)})")
        figures = {"throughput": most.to_dict(), "latency": lowest.to_dict()}
    return WorkloadError(f"workload does not fit on {ws.device} ({kind} limit): {what}; {detail}",
                         limit=kind, best=figures)


__all__ = ["CONCURRENCY_KEY", "Point", "WorkloadError", "WorkloadSelection", "carry_concurrency", "concurrency_timings",
           "default_levels", "measure_concurrency", "parse_levels", "select_workload"]
