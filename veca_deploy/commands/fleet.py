"""``veca-deploy fleet``: profiles from many devices, one table per device class."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich import box
from rich.table import Table

from ..errors import UsageError
from .common import console, format_top1, out


def _pct(acc, n) -> str:
    return format_top1(acc, n)


@click.command("fleet")
@click.argument("bundle", type=click.Path())
@click.argument("profiles", nargs=-1, type=click.Path())
@click.option("--budget-ms", type=float, default=None, help="Also show what select would choose on each device class.")
@click.option("--percentile", type=float, default=95, show_default=True, help="Latency percentile that must fit.")
@click.option("--margin", type=float, default=0.1, show_default=True, help="Safety margin of the selection.")
@click.option("--threads", type=int, default=None, help="Use the measurements made with this thread count.")
@click.option("--plot", type=click.Path(), default=None, help="Write a PNG of latency vs accuracy per device class.")
@click.option("--json", "as_json", is_flag=True, help="Print the fleet view as JSON.")
def command(bundle, profiles, budget_ms, percentile, margin, threads, plot, as_json):
    """Merge PROFILES (bench --out files from devices) for BUNDLE: device classes, Pareto fronts, selections."""
    from ..bundle.reader import Bundle
    from ..fleet.view import fleet_view, plot_fleet
    from ..selector.select import check_budget

    check_budget(budget_ms, percentile, margin)
    if plot and not Path(plot).resolve().parent.is_dir():
        raise UsageError(f"--plot {plot}: folder {Path(plot).parent} does not exist")
    b = Bundle.open(bundle)
    views = fleet_view(b, profiles, budget_ms, percentile=percentile, margin=margin, threads=threads)
    if plot:
        plot_fleet(views, plot, percentile)
    if as_json:
        click.echo(json.dumps({"bundle": str(b.root), "budget_ms": budget_ms, "percentile": percentile,
                               "classes": [v.to_dict() for v in views], "plot": plot}, indent=1))
        return
    for v in views:
        s = v.dev.summary()
        out.print(f"[bold]{v.dev.device}[/bold]: {s['cpu']}, {s['usable_cores']} usable core(s), "
                  f"{' '.join(s['isa'] or []) or 'ISA unknown'}" + (f", GPU {s['gpu']}" if s["gpu"] else "")
                  + f"; {len(v.dev.sources)} profile(s), {v.dev.matched} entries"
                  + (f" ({v.dev.stale} stale, ignored)" if v.dev.stale else ""), highlight=False, soft_wrap=True)
        front = {id(m) for m in v.front}
        chosen = v.selection.chosen if v.selection is not None else None
        t = Table("", "candidate", "C", f"p{percentile:g} ms", "top-1", "pareto", box=box.SIMPLE_HEAD, pad_edge=False)
        for m in v.measured:
            t.add_row("->" if m is chosen else "", m.cand.key, str(m.cand.cores), f"{m.latency_ms:.3f}",
                      _pct(m.cand.accuracy, m.cand.samples), "*" if id(m) in front else "")
        out.print(t)
        if v.selection is not None:
            out.print(f"  select --budget-ms {budget_ms:g}: {v.selection.chosen.cand.key} "
                      f"(p{percentile:g} {v.selection.chosen.latency_ms:.3f} ms)", highlight=False, soft_wrap=True)
        elif v.failure:
            out.print(f"  select --budget-ms {budget_ms:g}: nothing fits: {v.failure}", highlight=False, soft_wrap=True)
    if plot:
        console.print(f"plot: {plot}")
