"""What preprocessing costs on this device, for the input size an application declares.

A 4000x3000 photo into a 28x28 tier costs tens of milliseconds to resize (antialiased) while the
model runs in a few: a budget on inference alone would be a promise the application cannot
keep. When the application declares its input size (``bench/select --input-size``,
``Runtime.open(input_size=)``), the bundle's own :class:`~veca_deploy.preprocess.Preprocess` is
timed here on an image of that size to each tier size, stored in the device profile (top-level
``preprocess``, keyed by sizes and method) and added to every candidate's latency. Torch-free.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Iterable

import numpy as np

from ..errors import BudgetError, UsageError
from ..preprocess import Preprocess
from ..runtimes.timing import percentile_of
from .profile import Profile, _now

#: timed calls per (input size, tier size); preprocessing is deterministic, little spread
COUNT = 15
#: largest side accepted as a declared input size
MAX_SIDE = 16384


def parse_input_size(value: Any) -> tuple[int, int] | None:
    """``"3000x4000"`` or ``(3000, 4000)``: height x width, as ``export --image-size`` reads
    sizes; ``"512"`` is square. None passes through; anything else is a one-line UsageError."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = value.lower().strip().split("x")
            if len(parts) not in (1, 2):
                raise ValueError
            h, w = int(parts[0]), int(parts[-1])
        else:
            h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"input size must be N or HxW (height x width, e.g. 1080x1920), got {value!r}") from None
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise UsageError(f"input size {h}x{w} must have sides between 1 and {MAX_SIDE} px")
    return h, w


def method_of(pre: Preprocess) -> str:
    """What changes the cost: interpolation, antialias (and Pillow or numpy doing it), mode."""
    impl = "pillow" if importlib.util.find_spec("PIL") is not None else "numpy"
    aa = f"antialias-{impl}" if pre.antialias else "plain"
    return f"{pre.resize}-{aa}-{pre.resize_mode}-{pre.crop_pct:g}"


def cost_key(input_size: tuple[int, int], size: tuple[int, int], pre: Preprocess) -> str:
    return f"{input_size[0]}x{input_size[1]}->{size[0]}x{size[1]}:{method_of(pre)}"


def measure_preprocess(pre: Preprocess, input_size: tuple[int, int], size: tuple[int, int],
                       count: int = COUNT) -> dict[str, Any]:
    """Time ``pre`` on one uint8 image of ``input_size`` (h, w) to ``size``, batch 1."""
    h, w = input_size
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # cost does not depend on the pixels
    pre(img, size)  # warm-up (Pillow import, caches)
    samples = []
    for _ in range(max(int(count), 3)):
        t0 = time.perf_counter()
        pre(img, size)
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"input_size": [h, w], "size": list(size), "method": method_of(pre), "count": len(samples),
            "samples_ms": [round(s, 4) for s in samples], "median_ms": round(float(np.median(samples)), 4),
            "measured": _now()}


def preprocess_costs(pre: Preprocess, profile: Profile, input_size: tuple[int, int],
                     sizes: Iterable[tuple[int, int]], percentile: float, *, measure: bool = True,
                     count: int = COUNT) -> tuple[dict[tuple[int, int], float], bool]:
    """(tier size -> preprocessing ms at ``percentile``, whether anything was measured now).
    Missing costs are measured into ``profile.preprocess`` when ``measure``; else a BudgetError
    says to run bench with the input size on the device."""
    out: dict[tuple[int, int], float] = {}
    measured = False
    for size in sorted(set(sizes)):
        key = cost_key(input_size, size, pre)
        rec = profile.preprocess.get(key)
        if not rec or not rec.get("samples_ms"):
            if not measure:
                raise BudgetError(f"the profile of {profile.device} has no preprocessing cost for "
                                  f"{input_size[0]}x{input_size[1]} input to {size[0]}x{size[1]}; run veca-deploy "
                                  f"bench --input-size {input_size[0]}x{input_size[1]} there")
            rec = profile.preprocess[key] = measure_preprocess(pre, input_size, size, count)
            measured = True
        out[size] = percentile_of(rec["samples_ms"], percentile)
    return out, measured


__all__ = ["COUNT", "cost_key", "measure_preprocess", "method_of", "parse_input_size", "preprocess_costs"]
