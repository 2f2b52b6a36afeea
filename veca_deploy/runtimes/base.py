"""The one interface every backend implements (after Polygraphy's runners).

``activate()`` loads/compiles, ``infer(feed) -> outputs`` runs, ``close()`` frees; runners are
context managers. Inputs are checked here once, so every backend reports bad data the same
way (:class:`InputError`) instead of a backend stack trace. numpy only.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

#: The elastic graph's second input: a float32 vector whose *length* is the active core count.
CORE_SELECT = "core_select"
IMAGES = "images"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str | None, ...]  # None or a string = dynamic dimension


class Runner(abc.ABC):
    """Base runner. Subclasses implement ``_activate``, ``_infer``, ``_close`` and ``input_specs``."""

    backend: str = "base"
    #: the batch size the runner is compiled for, when it is specialised to one (OpenVINO compiles
    #: batch 1 of a dynamic-batch graph): checks run at it, so the gate sees the kernels that serve
    served_batch: int | None = None

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        self.path = Path(path)
        self.options = options
        self.active = False

    # -------------------------------------------------------------- lifecycle
    def activate(self) -> "Runner":
        if not self.active:
            self._activate()
            self.active = True
        return self

    def close(self) -> None:
        if self.active:
            self._close()
            self.active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close() is the contract
        try:
            self.close()
        except Exception:
            pass

    # -------------------------------------------------------------- inference
    def infer(self, feed: dict[str, np.ndarray], check: bool = True) -> dict[str, np.ndarray]:
        """Run one batch. ``feed`` maps input names to arrays; returns output name -> array."""
        if not self.active:
            self.activate()
        if check:
            feed = check_feed(self.input_specs(), feed)
        tiers = self.core_tiers()
        if tiers and CORE_SELECT in feed:  # always (cheap): an elastic graph runs any length it is fed
            check_core_select(feed[CORE_SELECT], tiers, self.path.name)
        return self._infer(feed)

    def core_tiers(self) -> tuple[int, ...] | None:
        """The core counts an elastic artifact serves (its ``veca.tiers`` metadata), else None.
        The ``tiers`` option overrides what the file says."""
        if self.options.get("tiers"):
            return tuple(int(t) for t in self.options["tiers"])
        return getattr(self, "_core_tiers", None)

    @abc.abstractmethod
    def input_specs(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def output_names(self) -> list[str]: ...

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Backend settings worth recording next to a measurement (threads, precision, ...)."""
        return {"backend": self.backend}


def check_feed(specs: list[TensorSpec], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate names, ranks, static dims, dtype and finiteness; return C-contiguous arrays."""
    if not isinstance(feed, dict):
        raise InputError(f"feed must be a dict of input name -> array, got {type(feed).__name__}")
    names = {s.name for s in specs}
    unknown = sorted(set(feed) - names)
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(unknown)}; expected {', '.join(sorted(names))}")
    out: dict[str, np.ndarray] = {}
    for s in specs:
        if s.name not in feed:
            raise InputError(f"missing input {s.name!r}")
        x = feed[s.name]
        if not isinstance(x, np.ndarray):
            raise InputError(f"input {s.name!r} must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.dtype(s.dtype):
            raise InputError(f"input {s.name!r} must be {s.dtype}, got {x.dtype}")
        if x.ndim != len(s.shape):
            raise InputError(f"input {s.name!r} must have {len(s.shape)} dims {_fmt(s.shape)}, got {list(x.shape)}")
        for axis, (want, got) in enumerate(zip(s.shape, x.shape)):
            if isinstance(want, int) and want >= 0 and want != got:
                what = "channels" if (s.name == IMAGES and axis == 1) else f"dim {axis}"
                raise InputError(f"input {s.name!r}: {what} must be {want}, got {got} (shape {list(x.shape)}, "
                                 f"expected {_fmt(s.shape)})")
        if s.name == IMAGES and x.shape[0] == 0:
            raise InputError("empty batch")
        if s.name == IMAGES and not np.isfinite(x).all():
            raise InputError(f"input {s.name!r} contains NaN or Inf")
        out[s.name] = np.ascontiguousarray(x)
    return out


def check_core_select(x: Any, tiers: tuple[int, ...], name: str = "the elastic graph") -> None:
    """An elastic graph computes with any ``core_select`` length; only its tiers were trained,
    parity-checked and profiled, so any other length is refused."""
    n = x.shape[0] if getattr(x, "ndim", 0) >= 1 else None
    if n not in tiers:
        raise InputError(f"{CORE_SELECT} length {n} is not a core tier of {name} "
                         f"(tiers {', '.join(map(str, sorted(tiers)))})")


def tiers_from_metadata(meta: dict[str, str]) -> tuple[int, ...] | None:
    """An artifact's served core tiers from its ``veca.*`` metadata when it is elastic."""
    if meta.get("veca.elastic") != "1":
        return None
    try:
        tiers = tuple(int(t) for t in meta.get("veca.tiers", "").split(",") if t.strip())
    except ValueError:
        return None
    return tiers or None


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("?" if (d is None or isinstance(d, str) or (isinstance(d, int) and d < 0)) else str(d)
                           for d in shape) + "]"


def core_select(cores: int) -> np.ndarray:
    """The elastic graph's tier selector: only its length matters."""
    return np.zeros((cores,), dtype=np.float32)
