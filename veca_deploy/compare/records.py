"""Per-image evaluation records: which images a candidate got right, stored in its accuracy record.

``eval`` and quantize's accuracy gate keep, per tier, the top-1 correctness of every image
(bit-packed, base64) and a ``sample_id`` naming the images. Two candidates measured on the same
images can then be compared *paired* (:func:`paired_resolution`): only the images on which they
disagree carry information, which resolves far smaller differences than two independent
estimates, and catches a consistent small loss that an unpaired test calls a tie.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

def pack_hits(hits: np.ndarray) -> str:
    """Per-image top-1 correctness as base64 of the packed bits (1,250 bytes per 10,000 images),
    kept in the accuracy record so a paired comparison needs no other file."""
    return base64.b64encode(np.packbits(np.asarray(hits, dtype=bool)).tobytes()).decode("ascii")


def unpack_hits(text: str, samples: int) -> np.ndarray | None:
    """The inverse of :func:`pack_hits`; None when ``text`` does not hold ``samples`` bits."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return None
    if len(raw) != (samples + 7) // 8:
        return None
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:samples].astype(bool)


def paired_resolution(a: np.ndarray, b: np.ndarray, z: float) -> tuple[float, float]:
    """``(difference, resolution)`` of top-1(a) - top-1(b) on the same images: ``z`` standard
    errors of the paired difference (the normal approximation behind McNemar's test), from the
    counts of images only one of the two got right."""
    n = len(a)
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    diff = (only_a - only_b) / n
    var = max(0.0, only_a + only_b - (only_a - only_b) ** 2 / n) / (n * n)
    return diff, z * math.sqrt(var)


def variant_records(rec: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The per-variant records inside an artifact's accuracy record (``{}`` when none): each one is
    shaped like an artifact record (metric or ``per_tier``, ``samples``, ``sample_id``,
    ``correct``), plus ``execution`` (the variant), ``device`` (the machine that measured it),
    ``family`` (its CPU family: x86, arm) and, once gated, ``gate`` (``"passed"`` or ``"failed: ..."``)."""
    got = (rec or {}).get("variants")
    return {k: v for k, v in got.items() if isinstance(v, dict)} if isinstance(got, dict) else {}


def record_samples(rec: dict[str, Any] | None) -> int:
    """Images behind an accuracy record (0: none, a reference placeholder, or unknown)."""
    n = (rec or {}).get("samples")
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0
