"""Device profiles: ``DIR/profiles/<device-id>.json``, the measured latency of every candidate.

The profile is the only thing veca-deploy writes into a bundle besides artifacts (written to a
temporary file in ``profiles/`` and renamed, so a reader never sees half a file). Entries are
keyed by artifact id and tier and carry the artifact's sha256: after a re-export or quantize
replaced a graph, its old timing is ignored instead of trusted. A profile measured on another
device is never used (different file name).

A read-only bundle (a read-only mount, a folder the service user cannot write) still gets a
profile: :func:`save_profile` then writes it to the cache,
``<cache root>/profiles/<sha256 of manifest.json>/<device-id>.json`` (cache root:
``$VECA_CACHE_DIR``, else ``$XDG_CACHE_HOME/veca-deploy``, else ``~/.cache/veca-deploy``; the
same root as the calibration cache), and :func:`load_profile` reads both places, newest entry
first. The key is the manifest's hash, so a re-exported or re-quantized bundle never sees the old
numbers, and a copy of the same bundle elsewhere finds them.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..bundle.io import sha256_file
from ..bundle.manifest import MANIFEST_NAME
from ..bundle.reader import Bundle
from ..calibration.cache import cache_root
from ..compare.comparator import compare, run_outputs
from ..compare.golden import Golden
from ..errors import BackendUnavailable, BundleError, UsageError, VecaError
from ..formats import BACKENDS, parity_options
from ..runtimes import IMAGES, CORE_SELECT, core_select, create_runner
from ..runtimes.fingerprint import device_fingerprint, device_id
from ..runtimes.timing import Timing, measure, merge
from .candidates import Candidate

PROFILE_DIR = "profiles"
#: the entry key under which ``bench --concurrency`` stores N-in-flight timings (selector/workload.py)
CONCURRENCY_KEY = "concurrency"
PROFILE_SCHEMA = 1
Progress = Callable[..., None]


@dataclass
class Profile:
    device: str
    fingerprint: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    #: preprocessing cost on this device: ``preprocess_cost.cost_key`` -> record (input size,
    #: output size, method, samples); what an application pays per call before inference
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)

    def timing(self, cand: Candidate, threads: int | None = None) -> Timing | None:
        """The valid measurement of ``cand``: same artifact bytes, timed by this release's runner
        (``formats.Backend.runner_revision``), same requested thread count (a 1-thread number
        says nothing about a 4-thread run), finished without error."""
        e = self.entries.get(cand.key)
        if not e or e.get("error") or not _current(e, cand) or not e.get("timing"):
            return None
        if cand.variant and not gate_passed(e):  # an execution variant is timed only behind its gate here
            return None
        if e.get("threads") != (int(threads) if threads else None):
            return None
        try:
            return Timing.from_dict(e["timing"])
        except (TypeError, KeyError):
            return None

    def error(self, cand: Candidate) -> str | None:
        e = self.entries.get(cand.key)
        return e.get("error") if e and _current(e, cand) else None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PROFILE_SCHEMA, "device": self.device, "created": self.created, "updated": self.updated,
                "fingerprint": self.fingerprint, "entries": self.entries,
                **({"preprocess": self.preprocess} if self.preprocess else {})}


def gate_passed(entry: dict[str, Any]) -> bool:
    """Whether ``entry`` records a passed golden gate on the device that measured it."""
    gate = entry.get("gate")
    return isinstance(gate, dict) and gate.get("passed") is True


def runner_revision(backend: str) -> int:
    b = BACKENDS.get(backend)
    return b.runner_revision if b is not None else 1


def _same_bytes(e: dict[str, Any], cand: Candidate) -> bool:
    return e.get("sha256") == cand.artifact.sha256


def _same_runner(e: dict[str, Any], cand: Candidate) -> bool:
    """Timed by today's runner revision of ``cand``'s backend (an entry without one is revision 1,
    what every runner was before revisions)."""
    return e.get("runner_revision", 1) == runner_revision(cand.backend)


def _current(e: dict[str, Any], cand: Candidate) -> bool:
    """Whether entry ``e`` is about ``cand`` as it runs now: the same artifact bytes, today's runner."""
    return _same_bytes(e, cand) and _same_runner(e, cand)


def stale_count(profile: Profile | None, cands: Iterable[Candidate]) -> int:
    """How many of ``cands`` have an entry for their bytes that an older runner revision wrote."""
    if profile is None:
        return 0
    return sum(1 for c in cands if (e := profile.entries.get(c.key)) and _same_bytes(e, c) and not _same_runner(e, c))


def passes_of(entries: Iterable[dict[str, Any] | None]) -> int:
    """The most passes any of ``entries`` was timed in (1 for entries timed before passes)."""
    return max((int((e.get("timing") or {}).get("passes") or 1) for e in entries if e), default=1)


def profile_path(root: str | os.PathLike, device: str | None = None) -> Path:
    return Path(root) / PROFILE_DIR / f"{device or device_id()}.json"


#: errors that mean "this bundle cannot be written here" (not a full disk or an I/O error)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def bundle_key(bundle: Bundle) -> str:
    """The bundle's identity for the profile cache: sha256 of its ``manifest.json`` (which holds
    the sha256 of every artifact)."""
    return sha256_file(Path(bundle.root) / MANIFEST_NAME)


def cached_profile_path(bundle: Bundle, device: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Where the profile of a read-only bundle goes: ``<cache root>/profiles/<bundle sha>/<device>.json``."""
    return cache_root(root) / PROFILE_DIR / bundle_key(bundle) / f"{device or device_id()}.json"


def profile_locations(bundle: Bundle, device: str | None = None) -> list[Path]:
    """The existing profile files of this bundle and device: in the bundle, then in the cache."""
    paths = [profile_path(bundle.root, device)]
    try:
        paths.append(cached_profile_path(bundle, device))
    except OSError:  # manifest unreadable: the bundle's own file is all there is
        pass
    return [p for p in paths if p.is_file()]


def _read_profile(path: Path) -> Profile:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: unreadable profile ({type(e).__name__}); delete it and run veca-deploy bench") from None
    if not isinstance(d, dict) or d.get("schema") != PROFILE_SCHEMA or not isinstance(d.get("entries"), dict):
        raise BundleError(f"{path}: not a profile this veca-deploy reads; delete it and run veca-deploy bench")
    return Profile(device=str(d.get("device") or path.stem), fingerprint=d.get("fingerprint") or {},
                   entries=d["entries"], created=str(d.get("created", "")), updated=str(d.get("updated", "")),
                   preprocess=d["preprocess"] if isinstance(d.get("preprocess"), dict) else {})


def read_profile(path: str | os.PathLike) -> Profile:
    """A profile file anywhere (``bench --out``, another device's measurements); a missing,
    truncated or foreign file is a one-line BundleError."""
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p}: no such profile file")
    return _read_profile(p)


def load_profile(bundle: Bundle, device: str | None = None) -> Profile | None:
    """This device's profile, or None when there is none. A corrupt file in the bundle is a
    BundleError; a corrupt cached copy is ignored (it is ours: the next save replaces it).
    When both the bundle and the cache hold one, each entry comes from the newer measurement."""
    path = profile_path(bundle.root, device)
    own = _read_profile(path) if path.is_file() else None
    cached = None
    try:
        cpath = cached_profile_path(bundle, device)
        if cpath.is_file():
            cached = _read_profile(cpath)
    except (OSError, BundleError):
        cached = None
    if own is None or cached is None:
        return own or cached
    entries = dict(own.entries)
    for key, e in cached.entries.items():
        if key not in entries or _measured(e) > _measured(entries[key]):
            entries[key] = e
    newer = cached if cached.updated > own.updated else own
    pre = {**(own.preprocess if newer is cached else cached.preprocess), **newer.preprocess}
    return Profile(device=own.device, fingerprint=newer.fingerprint, entries=entries, preprocess=pre,
                   created=min(own.created or cached.created, cached.created or own.created),
                   updated=max(own.updated, cached.updated))


def _measured(entry: Any) -> str:
    return str(entry.get("measured", "")) if isinstance(entry, dict) else ""


def save_profile(bundle: Bundle, profile: Profile) -> Path:
    """Atomic write of ``profiles/<device>.json`` (merging is the caller's job); returns the
    path written. A bundle that cannot be written here (read-only file system, no permission)
    gets its profile in the cache instead (:func:`cached_profile_path`), where
    :func:`load_profile` finds it."""
    path = profile_path(bundle.root, profile.device)
    try:
        path.parent.mkdir(exist_ok=True)  # profiles/ only: the bundle itself must exist
        return write_profile(path, profile, parents=False)
    except OSError as e:
        if e.errno not in _READ_ONLY:
            raise
    return write_profile(cached_profile_path(bundle, profile.device), profile)


def write_profile(path: str | os.PathLike, profile: Profile, parents: bool = True) -> Path:
    """Write ``profile`` to ``path`` atomically (temporary file beside it, then rename),
    creating the missing folders above it when ``parents``."""
    path = Path(path)
    folder = path.parent
    now = _now()
    profile.created = profile.created or now
    profile.updated = now
    if parents:
        folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(profile.to_dict(), f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a profile is as readable as the manifest
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def example_feed(cand: Candidate, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A normalized-looking random batch (latency does not depend on pixel values)."""
    a = cand.artifact
    shape = (a.inputs or {}).get(IMAGES, {}).get("shape") or ["batch", 3, a.height, a.width]
    channels = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else 3
    n = a.batch if isinstance(a.batch, int) else batch
    x = np.random.default_rng(seed).standard_normal((n, channels, a.height, a.width)).astype(np.float32)
    feed = {IMAGES: x}
    if a.elastic:
        feed[CORE_SELECT] = core_select(cand.cores)
    return feed


def runner_options(backend: str, threads: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runner settings used both when profiling and when serving, so the numbers transfer."""
    opts: dict[str, Any] = {}
    if threads:
        opts["threads"] = int(threads)
    opts.update(parity_options(backend))  # what the parity gate checked; bf16 must be chosen deliberately
    opts.update(extra or {})
    return opts


#: ``bench`` times each candidate in this many passes over all of them, the order reversed each
#: pass: A B | B A | A B | B A. An even count gives every candidate the same mean position in time,
#: so a linear drift of the host's speed cancels exactly
PASSES = 4
#: a pass times at least this many runs (fewer runs in all: one pass)
MIN_PASS_RUNS = 5


def pass_plan(passes: int, count: int | None, duration_s: float | None) -> tuple[int, int | None, float | None]:
    """(passes, runs per pass, seconds per pass) for ``count`` runs or ``duration_s`` seconds in all."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise UsageError(f"passes must be a positive integer, got {passes!r}")
    if duration_s is not None:
        return passes, None, duration_s / passes
    n = max(1, min(passes, (count or 1) // MIN_PASS_RUNS))
    return n, -(-(count or 1) // n), None


def measure_candidates(bundle: Bundle, cands: Iterable[Candidate], *, count: int | None = 50,
                       duration_s: float | None = None, warmup: int = 5, threads: int | None = None,
                       profile: Profile | None = None, progress: Progress | None = None,
                       runner_extra: dict[str, Any] | None = None, passes: int = PASSES) -> Profile:
    """Measure each candidate with the shared harness and merge the results into ``profile``.

    One runner per artifact (an elastic artifact is loaded once and timed at each tier; its cold
    start is recorded on its first tier). A candidate whose backend is missing is skipped; one
    that fails to load, computes numbers that fail its precision's gate against the bundle's golden
    outputs *on this device with these runner settings*, or fails the output sanity check is
    recorded with its error, so the selector never picks it and the bench table shows why. An
    execution variant needs the golden outputs of its tier: without them it is recorded with an
    error, never timed ungated (the artifact itself passed its gate at export).

    The runs are spread over ``passes`` passes over all candidates, the order reversed each pass
    (A B C, C B A, ...; within an elastic artifact's tiers too), each runner opened and closed in its pass, so one runner is in memory at
    a time: a host whose speed drifts during the session (seen: 20 % within the hour on a shared
    2-core VM) slows every candidate alike instead of whichever ran last, and the selector's
    ranking holds. The gate runs in the first pass; the cold start is the first pass's.
    """
    cands = list(cands)
    n_pass, per_count, per_s = pass_plan(passes, count, duration_s)
    dev_fp = device_fingerprint(threads)
    if profile is None:
        profile = Profile(device=device_id(dev_fp), fingerprint=dev_fp)
    profile.fingerprint = dev_fp
    by_art: dict[tuple, list[Candidate]] = {}
    for c in cands:  # one runner per (artifact, execution variant)
        by_art.setdefault(c.runner_key, []).append(c)
    groups = list(by_art.values())
    report = progress or (lambda *a, **k: None)
    report("profiling", advance=0, total=len(cands) * n_pass)
    pre = bundle.preprocess
    golden = Golden.of(bundle.root, bundle.manifest, pre)
    parts: dict[str, list[Timing]] = {}
    gates: dict[str, Any] = {}
    described: dict[str, dict[str, Any]] = {}
    done: set[str] = set()  # measured to the end, failed, or skipped: nothing more to time
    for p in range(n_pass):
        tag = f" (pass {p + 1}/{n_pass})" if n_pass > 1 else ""
        for group in (groups if p % 2 == 0 else groups[::-1]):
            todo = [c for c in (group if p % 2 == 0 else group[::-1]) if c.key not in done]
            if not todo:
                continue
            art, backend = todo[0].artifact, todo[0].backend
            runner = None
            try:
                try:
                    runner = create_runner(backend, bundle.path_of(art), **runner_options(
                        backend, threads, {**(runner_extra or {}), **todo[0].runner_extra}))
                    t0 = time.perf_counter()
                    runner.activate()  # timed here: the gate below runs before measure() would see a cold runner
                    load_ms = (time.perf_counter() - t0) * 1e3
                except BackendUnavailable:
                    for c in todo:
                        report(f"{c.key}: backend {backend} unavailable")
                        done.add(c.key)
                    continue
                except VecaError as e:
                    for c in todo:
                        profile.entries[c.key] = _entry(c, None, str(e), {}, threads)
                        report(f"{c.key}: {e}")
                        done.add(c.key)
                    continue
                for c in todo:
                    report(f"{c.key}{tag}")
                    try:
                        if p == 0:
                            gate = gates[c.key] = golden_gate(runner, golden, c)
                            if gate is None and c.variant:
                                raise BundleError(f"{art.id} C={c.cores} in {c.variant}: the bundle carries no golden "
                                                  "outputs at this tier, and an execution variant is served only "
                                                  "after its gate on them (re-export with this veca-deploy)")
                            if gate is not None and not gate["passed"]:
                                raise BundleError(f"{art.id} C={c.cores}: wrong numbers vs the golden outputs here: "
                                                  + "; ".join(gate["failures"][:2]))
                        t = measure(runner, example_feed(c), count=per_count, duration_s=per_s, warmup=warmup,
                                    where=c.key)
                        if load_ms is not None:  # the group's first candidate carries its cold start
                            t.load_ms, load_ms = round(load_ms, 3), None
                        parts.setdefault(c.key, []).append(t)
                        if c.key not in described:  # the same settings every pass
                            described[c.key] = _describe(runner)
                    except VecaError as e:
                        profile.entries[c.key] = _entry(c, None, " ".join(str(e).split()), _describe(runner), threads)
                        parts.pop(c.key, None)
                        done.add(c.key)
            finally:
                if runner is not None:
                    runner.close()
    for c in cands:
        if c.key not in parts:
            continue
        try:
            t = merge(parts[c.key])
        except VecaError as e:
            profile.entries[c.key] = _entry(c, None, f"{c.key}: {' '.join(str(e).split())}", described[c.key], threads)
            continue
        old = profile.entries.get(c.key)
        profile.entries[c.key] = _entry(c, t, None, described[c.key], threads)
        profile.entries[c.key]["gate"] = gates.get(c.key)
        carry_concurrency(profile.entries[c.key], old)  # its N-in-flight timings stay valid
    return profile


def carry_concurrency(new: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Keep an entry's concurrency measurements when its artifact is re-timed at batch 1 with the
    same bytes, thread count and runner revision (they are still valid: their own settings are
    recorded in them)."""
    if isinstance(old, dict) and isinstance(old.get(CONCURRENCY_KEY), dict) and not new.get("error") \
            and old.get("sha256") == new.get("sha256") and old.get("threads") == new.get("threads") \
            and old.get("runner_revision", 1) == new.get("runner_revision", 1):
        new[CONCURRENCY_KEY] = old[CONCURRENCY_KEY]


def golden_gate(runner, golden: Golden | None, c: Candidate) -> dict[str, Any] | None:
    """The candidate as configured here, on the bundle's golden inputs, against the golden outputs
    by its precision's gate (None when the bundle carries no golden data for this tier)."""
    a = c.artifact
    if golden is None or not golden.has(c.cores, a.height, a.width):
        return None
    ref = golden.reference(c.cores, a.height, a.width)
    got = run_outputs(runner, golden.inputs(a.height, a.width), cores=c.cores if a.elastic else None,
                      batch=a.batch, patch_rows=ref.patch_rows, samples=ref.samples)
    rep = compare(ref.outputs, got, artifact=a.id, precision=c.precision, cores=c.cores)  # execution precision
    return {"passed": rep.passed, "reference": ref.source, "images": rep.images, "precision": c.precision,
            "min_cosine": round(min((o.cosine for o in rep.outputs.values()), default=float("nan")), 6),
            "failures": rep.failures}


def _describe(runner) -> dict[str, Any]:
    try:
        return runner.describe()
    except Exception:
        return {"backend": runner.backend}


def _entry(c: Candidate, t: Timing | None, error: str | None, runner: dict[str, Any],
           threads: int | None) -> dict[str, Any]:
    a = c.artifact
    return {"artifact": a.id, "sha256": a.sha256, "format": a.format, "backend": c.backend,
            "runner_revision": runner_revision(c.backend), "precision": a.precision,
            "cores": c.cores, "height": a.height, "width": a.width, "elastic": a.elastic,
            "execution": c.variant, "execution_precision": c.precision,
            "threads": int(threads) if threads else None,
            "accuracy": c.accuracy, "measured": _now(), "runner": runner, "error": error,
            "timing": t.to_dict() if t is not None else None}
