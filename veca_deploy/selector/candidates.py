"""What a bundle can serve here: one candidate per (artifact, tier), with its quality rank.

Quality comes from the manifest only (the runtime reads nothing else): ``artifact.accuracy``
(per tier or top-1, as written by ``veca-deploy eval``) first, then the model card's per-tier
top-1 for FP32 graphs (they passed a parity gate against the model the card describes). Candidates whose accuracy is unknown rank
below every measured one, so an unvalidated INT8 graph never displaces a validated graph just
because it is faster; among unknowns a larger core count and input size rank higher, then
fp32 > fp16 > int8.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..bundle.manifest import Artifact
from ..bundle.reader import Bundle, record_value
from ..compare.records import record_samples, variant_records
from ..errors import BackendUnavailable, UsageError
from ..formats import (BACKENDS, FORMATS, backend_format, execution_precision, format_backend,
                       variant_options)
from ..runtimes import artifact_variants, backend_available

PRECISION_RANK = {"fp32": 3, "fp16": 2, "bf16": 1, "int8": 0}


@dataclass(frozen=True)
class Tier:
    """What serves a request: ``cores`` and input size of one precision on one backend."""

    cores: int
    height: int
    width: int
    precision: str
    backend: str
    artifact: str  # artifact id
    execution: str | None = None  # execution variant (the runner's inference precision), None: the default

    def __str__(self) -> str:
        run = f" {self.backend}" + (f" in {self.execution}" if self.execution else "")
        return f"C={self.cores} {self.height}x{self.width} {self.precision}{run} ({self.artifact})"

    def to_dict(self) -> dict[str, Any]:
        return {"cores": self.cores, "height": self.height, "width": self.width, "precision": self.precision,
                "backend": self.backend, "artifact": self.artifact, "execution": self.execution}


@dataclass(frozen=True)
class Candidate:
    """(artifact, tier, execution variant). A variant (e.g. OpenVINO running an FP32 IR in bf16)
    is its own candidate: gated on the golden outputs at its execution precision and timed on
    its own (an ungated or failed variant has no timing, so it is never selected). Its accuracy
    is its own ``eval`` record when there is one (``accuracy["variants"]``, on the artifact's
    images, gated against FP32: a failed one is no candidate), else the artifact's, which it may
    claim because the golden gate passed."""

    artifact: Artifact
    cores: int
    accuracy: float | None
    variant: str | None = None
    samples: int | None = None  # images behind ``accuracy`` (None: unknown)
    #: per-image results behind ``accuracy``: (sample_id, packed correctness), see compare.records
    record: tuple[str, str] | None = field(default=None, compare=False)

    @property
    def backend(self) -> str:
        return format_backend(self.artifact.format)

    @property
    def key(self) -> str:
        """Profile key: the artifact id plus the tier (an elastic artifact has several), plus the
        execution variant when it is not the default."""
        return f"{self.artifact.id}@c{self.cores}" + (f"+{self.variant}" if self.variant else "")

    @property
    def runner_key(self) -> tuple[str, str | None]:
        """What one runner serves: the artifact under one execution variant."""
        return (self.artifact.id, self.variant)

    @property
    def precision(self) -> str:
        """The precision it computes in (the gate it is held to)."""
        return execution_precision(self.artifact.precision, self.variant)

    @property
    def runner_extra(self) -> dict[str, Any]:
        return variant_options(self.backend, self.variant)

    @property
    def tier(self) -> Tier:
        a = self.artifact
        return Tier(self.cores, a.height, a.width, a.precision, self.backend, a.id, self.variant)

    def quality(self) -> tuple:
        """Sort key, larger is better (latency breaks the remaining ties, see :func:`rank`).
        Accuracy counts to 0.1 point: a smaller difference is evaluation noise (cards and
        ``eval`` use different image counts), and then more cores / pixels / bits win."""
        a = self.artifact
        acc = self.accuracy
        return (acc is not None, round(acc, 3) if acc is not None else 0.0, self.cores, a.height * a.width,
                PRECISION_RANK.get(self.precision, -1))


def as_fraction(v: object) -> float | None:
    """Top-1 as a fraction: cards record percent (88.1), ``eval`` records fractions (0.881)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        return None
    return float(v) / 100.0 if v > 1.0 else float(v)


def card_accuracy(model: dict[str, Any], cores: int, size: tuple[int, int] | None = None) -> float | None:
    """The model card's top-1 at ``cores``: ``{"8": 85.1}``, ``{"c8": ..}`` or ``{"28x28": {"8": ..}}``."""
    card = model.get("card_top1")
    if isinstance(card, dict) and size is not None and f"{size[0]}x{size[1]}" in card:
        card = card[f"{size[0]}x{size[1]}"]
    if not isinstance(card, dict):
        return as_fraction(card)
    for k in (str(cores), f"c{cores}", cores):
        v = as_fraction(card.get(k))  # type: ignore[call-overload]
        if v is not None:
            return v
    return None


def accuracy_samples(bundle: Bundle, art: Artifact) -> int | None:
    """How many images the accuracy :func:`accuracy` returns was measured on (None: unknown)."""
    rec = art.accuracy or {}
    if is_task_score(rec) and record_samples(rec):
        return record_samples(rec)
    if art.precision == "fp32":
        n = (bundle.manifest.model or {}).get("card_samples")
        return int(n) if isinstance(n, int) and n > 0 else None
    return None


def is_task_score(rec: dict[str, Any]) -> bool:
    """A record the selector ranks by: a task score where higher is better (top-1, mIoU, a user's
    score), as a fraction. Feature cosine (no task head) and errors (MAE) are not ranked."""
    return rec.get("metric", "top1") != "cosine" and "cosine" not in rec and rec.get("higher_is_better", True) is True


def accuracy_record(art: Artifact, cores: int, rec: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """``(sample_id, packed per-image correctness)`` behind the artifact's own top-1 at ``cores``
    (written by ``eval`` and quantize's gate), or None (older bundles, the card, cosine records).
    ``rec``: another record of the artifact (an execution variant's) instead of its own."""
    rec = (art.accuracy if rec is None else rec) or {}
    sid, correct = rec.get("sample_id"), rec.get("correct")
    if not isinstance(sid, str) or not isinstance(correct, dict) or not isinstance(correct.get(str(cores)), str):
        return None
    return sid, correct[str(cores)]


def accuracy(bundle: Bundle, art: Artifact, cores: int) -> float | None:
    """The task score (fraction: top-1, mIoU, ...) at ``cores``: the artifact's own measurement,
    else the card for FP32. Feature-cosine and error (MAE) records are not ranked (:func:`is_task_score`)."""
    acc = None
    rec = art.accuracy or {}
    if is_task_score(rec):
        try:
            acc = as_fraction(bundle.accuracy_of(art, cores))
        except (TypeError, ValueError):
            acc = None
    if acc is None and art.precision == "fp32":
        acc = card_accuracy(bundle.manifest.model, cores, art.size)
    return acc


def variant_failed(rec: dict[str, Any], cores: int) -> bool:
    """Whether an execution variant's eval record failed its accuracy gate at ``cores`` (every
    tier when the record does not say which)."""
    if not str(rec.get("gate", "")).startswith("failed"):
        return False
    tiers = rec.get("failed_tiers")
    return not isinstance(tiers, list) or str(cores) in {str(t) for t in tiers}


#: the CPU family of a device whose profile does not say (a hand-made or pre-fingerprint one)
UNKNOWN_FAMILY = "unknown"


def record_applies(rec: dict[str, Any], device: str, family: str) -> bool:
    """Whether an execution variant's eval record speaks for ``device`` (id) of CPU ``family``.
    "Could not run" is a fact about the machine that tried (its OpenVINO, its ISA): it applies
    there only. A measured accuracy applies to CPUs of the same family (x86: f32 accumulation on
    every bf16/f16 path; Arm runs other kernels), where the device's own golden gate still decides
    whether the variant is served at all (:func:`~veca_deploy.selector.profile.golden_gate`).
    A record or device whose family is unknown is taken as the same family."""
    if rec.get("error"):
        return rec.get("device") == device
    fam = rec.get("family") or legacy_family(rec.get("device"))
    return fam is None or family == UNKNOWN_FAMILY or fam == family


def legacy_family(device: Any) -> str | None:
    """The CPU family of a record written before ``family`` was recorded, from its device id
    (:func:`~veca_deploy.runtimes.fingerprint.device_id` ends in the architecture and a digest)."""
    parts = str(device or "").split("-")
    if len(parts) >= 3 and parts[-3:-1] == ["x86", "64"]:
        return "x86"
    if len(parts) >= 2 and parts[-2] in ("aarch64", "arm64"):
        return "arm"
    return None


@functools.lru_cache(maxsize=1)
def this_device() -> tuple[str, str]:
    """(device id, CPU family) of this machine (read once per process: the fingerprint touches
    CUDA on GPU hosts)."""
    from ..runtimes.fingerprint import cpu_family, device_id

    return device_id(), cpu_family()


def resolve_backends(backend: str | Iterable[str] | None, bundle: Bundle | None = None) -> list[str]:
    """``auto`` -> every backend whose library imports here (and the bundle has artifacts for);
    a name or list -> those, checked. Unknown names are a :class:`UsageError`."""
    if backend is None or backend == "auto" or backend == ["auto"]:
        formats = {a.format for a in bundle.artifacts} if bundle is not None else set(FORMATS)
        return [b for b in BACKENDS if backend_format(b) in formats and backend_available(b)]
    names = [b.strip() for b in (backend.split(",") if isinstance(backend, str) else backend) if b.strip()]
    if not names:
        raise UsageError("backend list is empty")
    for b in names:
        if b == "auto":
            raise UsageError("'auto' cannot be combined with backend names")
        if b not in BACKENDS:
            raise UsageError(f"unknown backend {b!r}; choose from auto, {', '.join(BACKENDS)}")
    for b in names:
        if not backend_available(b):
            raise BackendUnavailable(f"backend {b} is not installed here; pip install '{BACKENDS[b].extra}'")
    return list(dict.fromkeys(names))


def candidates(bundle: Bundle, backends: list[str], tiers: list[int] | None = None,
               precisions: list[str] | None = None,
               variants: bool | Iterable[str] | Mapping[str, Iterable[str]] = True,
               device: tuple[str, str] | None = None) -> list[Candidate]:
    """Every (artifact, tier, execution variant) the bundle serves on ``backends``, filtered by
    tiers/precisions. ``variants``: True = each variant this machine runs natively, False = none,
    an explicit list, or a list per backend (what another device's profile measured; see
    :func:`~veca_deploy.runtimes.artifact_variants`). ``device``: (id, CPU family) the selection
    is for (default: this machine); eval's variant records count only where they apply
    (:func:`record_applies`)."""
    formats = {backend_format(b) for b in backends}
    if isinstance(variants, Mapping):
        per_backend = {b: tuple(v) for b, v in variants.items()}
    else:
        named = variants if isinstance(variants, bool) else tuple(variants)
        per_backend = {b: named for b in BACKENDS}
    out = []
    for a in bundle.artifacts:
        if a.format not in formats or (precisions and a.precision not in precisions):
            continue
        measured = variant_records(a.accuracy)  # eval's records of its execution variants
        if measured:
            device = device or this_device()
            measured = {v: r for v, r in measured.items() if record_applies(r, *device)}
        backend = format_backend(a.format)
        own_variants = artifact_variants(backend, a.precision, per_backend.get(backend, ()))
        for c in a.tiers:
            if tiers and c not in tiers:
                continue
            acc, n = accuracy(bundle, a, c), accuracy_samples(bundle, a)
            rec = accuracy_record(a, c) if acc is not None and n else None
            out.append(Candidate(a, c, acc, None, n, rec))
            for v in own_variants:
                own = measured.get(v)
                if own is not None and variant_failed(own, c):
                    continue  # failed its accuracy gate where eval measured it: never a candidate
                if own is None or not is_task_score(own):
                    out.append(Candidate(a, c, acc, v, n, rec))
                else:
                    try:
                        vacc = as_fraction(record_value(own, c, a.elastic))
                    except (TypeError, ValueError):  # a malformed record ranks as unknown, never a crash
                        vacc = None
                    vn = record_samples(own) or None
                    vrec = accuracy_record(a, c, own) if vacc is not None and vn else None
                    out.append(Candidate(a, c, vacc, v, vn, vrec))
    return out
