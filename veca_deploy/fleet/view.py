"""The fleet view: per device class, the Pareto front of latency vs accuracy and what ``select``
would choose for a budget there, decided offline with the device's own profile."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..bundle.reader import Bundle
from ..errors import BudgetError
from ..selector.select import Measured, Selection, pareto, select
from .profiles import DeviceProfiles, device_classes


@dataclass
class ClassView:
    dev: DeviceProfiles
    measured: list[Measured]  # every candidate with a valid timing, best quality first
    front: list[Measured]  # the Pareto front (lower latency, higher accuracy), by latency
    selection: Selection | None = None
    failure: str | None = None  # why nothing fits the budget (BudgetError's message)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        front = {id(m) for m in self.front}
        return {**self.dev.summary(),
                "candidates": [{**m.to_dict(), "key": m.cand.key, "pareto": id(m) in front} for m in self.measured],
                "pareto": [m.cand.key for m in self.front],
                "selection": None if self.selection is None else self.selection.to_dict(),
                "failure": self.failure, "skipped": self.skipped}


def offline_selection(bundle: Bundle, dev: DeviceProfiles, budget_ms: float | None, *, percentile: float = 95,
                      margin: float = 0.1, backend: Any = "auto", tiers: list[int] | None = None,
                      precisions: list[str] | None = None, input_size: Any = None) -> Selection:
    """``select`` for the device behind ``dev``, from its profile; nothing runs here (with
    ``input_size``, the profile must hold that device's preprocessing cost: bench --input-size)."""
    return select(bundle, budget_ms, percentile=percentile, margin=margin, backend=backend, tiers=tiers,
                  precisions=precisions, profile=dev.profile, threads=dev.threads, offline=True,
                  input_size=input_size)


def fleet_view(bundle: Bundle, paths: Iterable[str | os.PathLike], budget_ms: float | None = None, *,
               percentile: float = 95, margin: float = 0.1, threads: int | None = None) -> list[ClassView]:
    views = []
    for dev in device_classes(bundle, paths, threads):
        everything = offline_selection(bundle, dev, None, percentile=percentile, margin=margin)
        measured = [m for m in everything.ranked if math.isfinite(m.latency_ms)]
        with_acc = [m for m in measured if m.cand.accuracy is not None]
        pts = with_acc or measured
        idx = pareto([(m.latency_ms, m.cand.accuracy if with_acc else m.cand.cores) for m in pts])
        view = ClassView(dev, measured, [pts[i] for i in idx])
        if budget_ms is not None:
            try:
                view.selection = offline_selection(bundle, dev, budget_ms, percentile=percentile, margin=margin)
                view.skipped = view.selection.skipped
            except BudgetError as e:
                view.failure = str(e)
        views.append(view)
    return views


def plot_fleet(views: list[ClassView], path: str | os.PathLike, percentile: float = 95) -> None:
    """Latency vs accuracy per device class, Pareto fronts drawn, chosen candidates circled."""
    from pathlib import Path

    from ..errors import UsageError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'veca-deploy[plot]'") from None
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for v in views:
        pts = [m for m in v.measured if m.cand.accuracy is not None]
        if not pts:
            continue
        line, = ax.plot([m.latency_ms for m in pts], [m.cand.accuracy for m in pts], "o", alpha=0.45, ms=4)
        front = [m for m in v.front if m.cand.accuracy is not None]
        ax.step([m.latency_ms for m in front], [m.cand.accuracy for m in front], "--", where="post",
                color=line.get_color(), label=f"{v.dev.device}")
        if v.selection is not None:
            c = v.selection.chosen
            ax.plot([c.latency_ms], [c.cand.accuracy], "o", mfc="none", mec=line.get_color(), ms=12, mew=2)
    if views and views[0].selection is not None and views[0].selection.budget_ms is not None:
        ax.axvline(views[0].selection.limit_ms, color="grey", lw=1, ls=":", label="budget x (1 - margin)")
    ax.set_xscale("log")
    ax.set_xlabel(f"latency p{percentile:g} (ms, batch 1, log)")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
