"""Pick the most accurate (tier, precision, backend) whose measured latency fits a budget.

A candidate fits when its latency at ``percentile`` (from this device's profile) is at most
``budget_ms * (1 - margin)``: the margin absorbs what a profile cannot see (other processes,
thermal throttling, preprocessing). Among the fitting candidates the best quality
(:meth:`Candidate.quality`) leads; every fitting candidate whose accuracy is within the
evaluation's resolution of the leader's is tied with it (:func:`resolution`), and the tie goes
to the lowest latency, then the smallest artifact. The same artifact and tier under another
execution variant (gated on the golden outputs) is tied with it unless ``eval`` measured the
variant on its own (then its record is compared like any other). The decision records
why it chose, what tied and on how many images the accuracies rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..bundle.reader import Bundle
from ..compare.records import paired_resolution, unpack_hits
from ..errors import BudgetError, BundleError, UsageError
from .candidates import Candidate, candidates, resolve_backends
from .profile import Profile, load_profile, measure_candidates, save_profile


#: a rung of the adaptive ladder is at least this fraction faster than the rung above it
LADDER_GAIN = 0.05


@dataclass(frozen=True)
class Measured:
    cand: Candidate
    latency_ms: float  # at the requested percentile: inference, plus preprocessing when declared
    #: with a declared input size: the two parts of ``latency_ms`` (each at the percentile)
    inference_ms: float | None = None
    preprocess_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {**self.cand.tier.to_dict(), "accuracy": self.cand.accuracy, "latency_ms": round(self.latency_ms, 4)}
        if self.preprocess_ms is not None:
            d.update(inference_ms=round(self.inference_ms, 4), preprocess_ms=round(self.preprocess_ms, 4))
        return d


@dataclass
class Selection:
    chosen: Measured
    ranked: list[Measured]  # every measured candidate, best quality first
    budget_ms: float | None
    percentile: float
    margin: float
    device: str
    profiled: bool = False  # whether this call had to measure
    skipped: list[str] = field(default_factory=list)
    decision: dict[str, Any] = field(default_factory=dict)  # why: leader, ties, resolution, samples
    #: the application's declared input size (height, width): latencies include preprocessing
    input_size: tuple[int, int] | None = None

    @property
    def limit_ms(self) -> float | None:
        return None if self.budget_ms is None else self.budget_ms * (1 - self.margin)

    def ladder(self) -> list[Measured]:
        """Candidates to step through under load: from the chosen one down, each no better in
        quality and faster than the previous by at least LADDER_GAIN of its measured latency on
        this device (the adaptive runtime's tiers). A rung only a hair faster is profiling noise:
        stepping to it (e.g. from int8 C=24 to an fp32 C=32 that timed 1 % faster) would bring
        cores back without bringing the latency down."""
        start = self.ranked.index(self.chosen)
        out = [self.chosen]
        for m in self.ranked[start + 1:]:
            if m.latency_ms < out[-1].latency_ms * (1 - LADDER_GAIN):
                out.append(m)
        return out

    def to_dict(self) -> dict[str, Any]:
        limit = self.limit_ms
        return {"device": self.device, "budget_ms": self.budget_ms, "percentile": self.percentile,
                "margin": self.margin, "limit_ms": None if limit is None else round(limit, 4),
                "profiled": self.profiled, "chosen": self.chosen.to_dict(),
                "candidates": [{**m.to_dict(), "fits": limit is None or m.latency_ms <= limit} for m in self.ranked],
                "skipped": self.skipped, "decision": self.decision,
                **({"input_size": list(self.input_size), "latency": "preprocessing + inference"}
                   if self.input_size else {})}


def check_budget(budget_ms: float | None, percentile: float, margin: float) -> None:
    """Budgets must be positive finite numbers; typed errors, not silent nonsense."""
    if budget_ms is not None:
        if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not math.isfinite(budget_ms) \
                or budget_ms <= 0:
            raise UsageError(f"budget must be a positive number of milliseconds, got {budget_ms!r}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise UsageError(f"percentile must be in (0, 100], got {percentile!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise UsageError(f"margin must be in [0, 1), got {margin!r}")


def _profiled(profile: Profile, backend: Any) -> tuple[list[str], dict[str, list[str]]]:
    """(backends, execution variants per backend) the device behind ``profile`` measured;
    ``backend`` other than auto narrows the backends (names are checked, availability here is
    irrelevant)."""
    from ..formats import BACKENDS

    seen = [e.get("backend") for e in profile.entries.values() if isinstance(e, dict)]
    have = [b for b in BACKENDS if b in seen]
    if backend not in (None, "auto", ["auto"]):
        names = [b.strip() for b in (backend.split(",") if isinstance(backend, str) else backend) if b.strip()]
        for b in names:
            if b not in BACKENDS:
                raise UsageError(f"unknown backend {b!r}; choose from auto, {', '.join(BACKENDS)}")
        have = [b for b in names if b in have]
    entries = [e for e in profile.entries.values() if isinstance(e, dict) and e.get("execution")]
    return have, {b: sorted({str(e["execution"]) for e in entries if e.get("backend") == b}) for b in have}


def scoped_candidates(bundle: Bundle, backend: Any, tiers: list[int] | None, precisions: list[str] | None,
                      profile: Profile | None, offline: bool) -> list[Candidate]:
    """The candidates a selection weighs: this machine's backends and variants, or (``offline``)
    those the device behind ``profile`` measured, with eval's records as they apply to that device.
    No candidate at all is a UsageError."""
    if offline:
        if profile is None:
            raise UsageError("offline selection needs a profile")
        backends, variants = _profiled(profile, backend)
    else:
        backends, variants = resolve_backends(backend, bundle), True
    cands = candidates(bundle, backends, tiers, precisions, variants, profile_device(profile) if offline else None)
    if not cands:
        raise UsageError(f"{bundle.root}: no artifacts for backend(s) {', '.join(backends) or 'none available'}"
                         + (f", tiers {tiers}" if tiers else "") + (f", precisions {precisions}" if precisions else ""))
    return cands


def unprofiled(cands: list[Candidate], profile: Profile | None, threads: int | None, measure: bool
               ) -> list[Candidate]:
    """Candidates with neither a valid timing nor an error in ``profile``: to measure now, or, when
    not measuring, those whose absence refuses the selection (an execution variant the profile
    has not timed, e.g. one a newer veca-deploy offers, is skipped instead)."""
    missing = [c for c in cands if profile is None or (profile.timing(c, threads) is None
                                                        and profile.error(c) is None)]
    return missing if measure else [c for c in missing if not c.variant]


def profile_device(profile: Profile) -> tuple[str, str]:
    """(device id, CPU family) of the machine that measured ``profile``: whose eval records apply
    in an offline selection for it (:func:`~veca_deploy.selector.candidates.record_applies`)."""
    from ..runtimes.fingerprint import cpu_family
    from .candidates import UNKNOWN_FAMILY, legacy_family

    arch = ((profile.fingerprint or {}).get("cpu") or {}).get("arch")
    return profile.device, cpu_family(arch) if arch else (legacy_family(profile.device) or UNKNOWN_FAMILY)


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both lower latency and higher accuracy, by latency."""
    idx = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def rank(measured: list[Measured]) -> list[Measured]:
    return sorted(measured, key=lambda m: (tuple(-v for v in m.cand.quality()), m.latency_ms, m.cand.key))


#: two-sided 95 % normal quantile for the difference of two top-1 estimates
TIE_Z = 1.96
#: accuracy difference treated as a tie when a sample size is unknown (0.1 point)
TIE_UNKNOWN = 0.001


def resolution(a: Candidate, b: Candidate) -> float:
    """Smallest top-1 difference (fraction) the evaluation behind ``a`` and ``b`` resolves, never
    below 0.1 point. Paired when both carry per-image records of the same images
    (:func:`~veca_deploy.compare.records.paired_resolution`: TIE_Z standard errors of the paired
    difference); else TIE_Z standard errors of the difference of two independent binomial
    estimates; 0.1 point when a sample size is unknown."""
    paired = _paired(a, b)
    if paired is not None:
        return max(TIE_UNKNOWN, paired[1])
    pa, pb, na, nb = a.accuracy, b.accuracy, a.samples, b.samples
    if pa is None or pb is None or not na or not nb:
        return TIE_UNKNOWN
    return max(TIE_UNKNOWN, TIE_Z * math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb))


def _paired(a: Candidate, b: Candidate) -> tuple[float, float] | None:
    """(difference, resolution) from per-image records of the same images, else None."""
    if a.record is None or b.record is None or a.record[0] != b.record[0] or not a.samples \
            or a.samples != b.samples:
        return None
    ha, hb = unpack_hits(a.record[1], a.samples), unpack_hits(b.record[1], b.samples)
    if ha is None or hb is None:
        return None
    return paired_resolution(ha, hb, TIE_Z)


def comparison(a: Candidate, b: Candidate) -> str:
    """How ``a`` and ``b`` were compared: "paired" (same images, per-image records) or "unpaired"."""
    return "paired" if _paired(a, b) is not None else "unpaired"


def tied_with(leader: Measured, m: Measured) -> bool:
    """Whether ``m`` is as accurate as ``leader`` as far as the evaluation can tell."""
    a, b = leader.cand, m.cand
    if (a.artifact.id, a.cores) == (b.artifact.id, b.cores) and (a.accuracy, a.record) == (b.accuracy, b.record):
        return True  # the same graph and tier under another (gated) execution variant, no record of its own
    if a.accuracy is None or b.accuracy is None:
        return False  # nothing measured: ranked by cores / pixels / precision, no tie claimed
    paired = _paired(a, b)
    diff = paired[0] if paired is not None else a.accuracy - b.accuracy
    return diff <= resolution(a, b) + 1e-12


def decide(fitting: list[Measured]) -> tuple[Measured, dict[str, Any]]:
    """The choice among ``fitting`` (best quality first) and why."""
    leader = fitting[0]
    tied = [m for m in fitting if tied_with(leader, m)]
    chosen = min(tied, key=lambda m: (m.latency_ms, m.cand.artifact.bytes, m.cand.key))
    why = ("the most accurate fitting candidate" if chosen is leader and len(tied) == 1 else
           "the most accurate fitting candidate, and the fastest of those tied with it" if chosen is leader else
           f"tied in accuracy with the most accurate ({leader.cand.key}) within the evaluation's resolution, "
           "and faster")
    return chosen, {"reason": why, "leader": leader.cand.key, "tied": [m.cand.key for m in tied],
                    "resolution": {m.cand.key: round(resolution(leader.cand, m.cand), 5) for m in tied if m is not leader},
                    "samples": {m.cand.key: m.cand.samples for m in tied},
                    "comparison": {m.cand.key: comparison(leader.cand, m.cand) for m in tied if m is not leader},
                    "rule": f"z={TIE_Z}; paired on per-image records of the same images, else unpaired binomial; "
                            f"at least {100 * TIE_UNKNOWN:g} point"}


def select(bundle: Bundle, budget_ms: float | None, *, percentile: float = 95, backend: Any = "auto",
           margin: float = 0.1, tiers: list[int] | None = None, precisions: list[str] | None = None,
           profile: Profile | None = None, measure: bool = True, count: int = 50, warmup: int = 5,
           threads: int | None = None, progress: Callable[..., None] | None = None,
           offline: bool = False, input_size: Any = None, time_limit_s: float | None = None) -> Selection:
    """Choose a candidate for ``budget_ms`` (None: the most accurate, no profile needed; a candidate
    that failed on this device, or an execution variant not gated here yet, is skipped then too).

    Candidates missing from this device's profile are measured first (with the shared harness)
    and the profile is saved into the bundle; ``measure=False`` refuses instead.
    ``offline=True`` decides for the device that measured ``profile`` (another machine): nothing
    runs here, and the backends and execution variants are the ones that device measured, not
    the ones installed here; the rules are the same. ``input_size`` ((height, width) or "HxW"):
    what the application feeds; each candidate's latency is then preprocessing of that size to
    its tier size plus inference, both at ``percentile`` (measured here and stored in the profile
    when missing, unless offline).
    """
    check_budget(budget_ms, percentile, margin)
    from .preprocess_cost import parse_input_size

    input_size = parse_input_size(input_size)
    cands = scoped_candidates(bundle, backend, tiers, precisions, profile, offline)
    measure = measure and not offline
    profiled = False
    if budget_ms is None and profile is None:
        try:
            profile = load_profile(bundle)  # only for latencies to show; not needed to choose
        except BundleError:
            profile = None
    elif profile is None:
        profile = load_profile(bundle)
        missing = unprofiled(cands, profile, threads, measure)
        if missing:
            if not measure:
                from .profile import stale_count

                old = stale_count(profile, missing)
                raise BudgetError(f"no latency profile for this device covering {len(missing)} candidate(s)"
                                  + (f" ({old} timed by an older veca-deploy runner)" if old else "")
                                  + "; run veca-deploy bench first")
            budget_s = None
            if time_limit_s is not None:
                if not (isinstance(time_limit_s, (int, float)) and math.isfinite(time_limit_s) and time_limit_s > 0):
                    raise UsageError(f"time_limit_s must be a positive number of seconds, got {time_limit_s!r}")
                budget_s = time_limit_s / len(missing)
            profile = measure_candidates(bundle, missing, count=None if budget_s else count,
                                         duration_s=budget_s, warmup=min(warmup, 2) if budget_s else warmup,
                                         threads=threads, profile=profile, progress=progress,
                                         passes=1)  # at load time: one compile per candidate (bench spreads them)
            profiled = True
            try:
                save_profile(bundle, profile)
            except OSError:
                pass  # a read-only bundle still gets a selection, just not a saved profile
    measured, skipped = [], []
    for c in cands:
        t = profile.timing(c, threads) if profile is not None else None
        if t is None:
            err = profile.error(c) if profile is not None else None
            if budget_ms is None and err is None and not c.variant:
                measured.append(Measured(c, math.nan))  # no budget: an artifact needs no timing to be chosen
            else:  # failed here, or an execution variant not yet gated and timed on this device
                skipped.append(f"{c.key}: {err or ('not gated here (run veca-deploy bench)' if c.variant else 'not measured')}")
            continue
        measured.append(Measured(c, t.percentile(percentile)))
    if not measured:
        raise BudgetError("no candidate could be measured here: " + "; ".join(skipped[:4]))
    if input_size is not None and profile is not None:
        measured, new_costs = _with_preprocessing(bundle, profile, measured, input_size, percentile, not offline)
        if new_costs:
            try:
                save_profile(bundle, profile)
            except OSError:
                pass
    ranked = rank(measured)
    device = profile.device if profile is not None else ""
    if budget_ms is None:
        chosen, decision = ranked[0], {"reason": "no budget: the most accurate candidate", "leader": ranked[0].cand.key,
                                       "tied": [ranked[0].cand.key]}
    else:
        limit = budget_ms * (1 - margin)
        fitting = [m for m in ranked if m.latency_ms <= limit]
        if not fitting:
            fastest = min(measured, key=lambda m: m.latency_ms)
            raise BudgetError(f"no tier fits {budget_ms:g} ms (p{percentile:g} <= {limit:.3g} ms with margin "
                              f"{margin:g}) on {device}: the fastest, {fastest.cand.tier}, takes "
                              f"{fastest.latency_ms:.3g} ms"
                              + (f" ({fastest.preprocess_ms:.3g} ms preprocessing a {input_size[0]}x{input_size[1]} "
                                 f"input + {fastest.inference_ms:.3g} ms inference)"
                                 if fastest.preprocess_ms is not None else ""))
        chosen, decision = decide(fitting)
    if not offline:
        verify_chosen(bundle, chosen)
    return Selection(chosen, ranked, budget_ms, float(percentile), float(margin), device, profiled, skipped,
                     decision, input_size)


def verify_chosen(bundle: Bundle, chosen: Measured) -> None:
    """The chosen artifact's files must still be what the manifest records (size, then sha256;
    :meth:`Bundle.path_of` hashes each artifact once per open bundle): a profile measured before
    a file was truncated or replaced must not select it. A :class:`BundleError` naming it."""
    art = chosen.cand.artifact
    try:
        bundle.path_of(art)
    except BundleError as e:
        raise BundleError(f"selected {art.id} ({chosen.cand.tier}) but it fails its integrity check: {e} "
                          "(re-export or restore the bundle; run veca-deploy validate)") from None


def _with_preprocessing(bundle: Bundle, profile: Profile, measured: list[Measured], input_size: tuple[int, int],
                        percentile: float, measure: bool) -> tuple[list[Measured], bool]:
    """Every candidate's latency as preprocessing of ``input_size`` to its tier size + inference."""
    from .preprocess_cost import preprocess_costs

    sizes = {(m.cand.artifact.height, m.cand.artifact.width) for m in measured}
    costs, new = preprocess_costs(bundle.preprocess, profile, input_size, sizes, percentile, measure=measure)
    out = [Measured(m.cand, m.latency_ms + costs[(m.cand.artifact.height, m.cand.artifact.width)], m.latency_ms,
                    costs[(m.cand.artifact.height, m.cand.artifact.width)]) for m in measured]
    return out, new
