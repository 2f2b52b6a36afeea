"""Tables of the throughput options (issue 19): ``bench --concurrency`` and ``select --streams --fps``.
Shared by the two commands; the measuring and the choosing live in
:mod:`veca_deploy.selector.workload`."""

from __future__ import annotations

import math

from rich import box
from rich.table import Table

from .common import out

SHORT = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt"}


def _f(v, nd: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _label(c) -> str:
    a = c.artifact
    return (f"{SHORT.get(c.backend, c.backend)}-{a.precision}" + ("-el" if a.elastic else "")
            + (f" ({c.variant})" if c.variant else ""))


def concurrency_table(rows, levels: list[int]) -> None:
    """One row per (candidate, requests in flight): images/s, latency percentiles, speed-up over 1."""
    t = Table("graph", "C", "size", "in flight", "img/s", "x vs 1", "p50", "p90", "p99", "mean",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.columns[0].min_width = 11
    for c, e in rows:
        conc = (e or {}).get("concurrency") or {}
        if not e or e.get("error") or not conc:
            continue
        one = (conc.get("1") or {}).get("throughput_ips")
        for k in levels:
            d = conc.get(str(k))
            if d is None:
                continue
            size = f"{c.artifact.height}x{c.artifact.width}"
            if d.get("error"):
                t.add_row(_label(c), str(c.cores), size, str(k), f"[red]{d['error'][:60]}[/red]", *["-"] * 5)
                continue
            pct = d.get("percentiles_ms") or {}
            ips = d.get("throughput_ips")
            t.add_row(_label(c), str(c.cores), size, str(k), _f(ips, 0),
                      _f(ips / one if ips and one else None, 2), _f(pct.get("50")), _f(pct.get("90")),
                      _f(pct.get("99")), _f(d.get("mean_ms")))
    out.print(t)
    out.print("(batch 1, N requests kept in flight; latency = submit to completion, ms; x vs 1 = images/s over "
              "1 in flight)")


def workload_table(ws) -> None:
    """Every measured (candidate, concurrency) of a workload selection, the chosen one marked."""
    pct = ws.percentile
    t = Table("", "artifact", "C", "size", "in flight", "img/s", f"p{pct:g} ms", "top-1", "throughput", "latency",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for p in ws.points:
        tier = p.cand.tier
        thr, lat = ws.fits(p)
        t.add_row("->" if p == ws.chosen else "",
                  tier.artifact + (f" ({tier.execution})" if tier.execution else ""), str(tier.cores),
                  f"{tier.height}x{tier.width}", str(p.streams), f"{p.throughput_ips:.0f}", f"{p.latency_ms:.3f}",
                  "-" if p.cand.accuracy is None else f"{100 * p.cand.accuracy:.2f}%",
                  "yes" if thr else "no", "yes" if lat else "no")
    out.print(t)
    c, limit = ws.chosen, ws.limit_ms
    out.print(f"selected [bold]{c.cand.tier}[/bold] with {c.streams} request(s) in flight: "
              f"{c.throughput_ips:.0f} img/s >= {ws.required_ips:g} ({ws.streams_needed} x {ws.fps:g} fps), "
              f"p{pct:g} {c.latency_ms:.3f} ms"
              + ("" if limit is None else f" <= {limit:.3f} ms (budget {ws.budget_ms:g} ms, margin {ws.margin:g})")
              + f" on {ws.device}")
    d = ws.decision or {}
    if d.get("reason"):
        ties = [k for k in d.get("tied", []) if k != c.cand.key]
        out.print(f"why: {d['reason']}; {d.get('concurrency_rule', '')}" + (f"; tied: {', '.join(ties)}" if ties else ""))


def run_workload(b, streams, fps, budget_ms, *, percentile, margin, backend, tiers, precisions, concurrency, count,
                 threads, measure, profile_file, input_size, as_json, progress, saved_profile) -> None:
    """``select --streams N --fps F``: :func:`~veca_deploy.selector.workload.select_workload`, then its table."""
    import contextlib
    import json

    import click

    from ..errors import UsageError
    from ..selector.workload import parse_levels, select_workload
    from .common import console

    if streams is None or fps is None:
        raise UsageError("a workload needs both --streams and --fps")
    if input_size is not None:
        raise UsageError("--input-size is not supported with --streams/--fps yet")
    levels = parse_levels(concurrency, "--concurrency")
    opts = dict(percentile=percentile, margin=margin, backend=backend, tiers=tiers, precisions=precisions,
                levels=levels, count=count)
    if profile_file is not None:
        from ..fleet.profiles import device_classes

        (dev,) = device_classes(b, [profile_file], threads)
        ws = select_workload(b, streams, fps, budget_ms, profile=dev.profile, threads=dev.threads, offline=True,
                             **opts)
    else:
        with contextlib.ExitStack() as stack:
            ws = select_workload(b, streams, fps, budget_ms, measure=measure, threads=threads,
                                 progress=progress(stack, enabled=not as_json), **opts)
    saved = saved_profile(b) if ws.profiled and profile_file is None else None
    if as_json:
        click.echo(json.dumps({**ws.to_dict(), "profile": None if saved is None else str(saved)}, indent=1))
        return
    if ws.profiled:
        console.print(f"profiled this device ({ws.device}) and saved it in {saved or b.root / 'profiles'}",
                      highlight=False, soft_wrap=True)
    workload_table(ws)
