"""``veca-deploy select``: which tier to run on this device for a latency budget.

Profiles first when this device has no profile in the bundle (same harness as ``bench``);
exits 8 (BudgetError) with the fastest tier's latency when nothing fits.
"""

from __future__ import annotations

import contextlib
import json

import click
from rich import box
from rich.table import Table

from ..errors import UsageError
from .common import console, format_top1, out, parse_int_list, parse_list, progress_reporter


def _budget(ctx, param, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--budget-ms must be a number of milliseconds, got {value!r}") from None
    return v


class _LazyProgress:
    """Shows a progress bar only once profiling actually starts (most selects just read)."""

    def __init__(self, stack: contextlib.ExitStack, enabled: bool) -> None:
        self.stack, self.enabled, self.rep = stack, enabled, None

    def __call__(self, *args, **kwargs) -> None:
        if not self.enabled:
            return
        if self.rep is None:
            self.rep = self.stack.enter_context(progress_reporter(True))
        self.rep(*args, **kwargs)


def _saved_profile(b):
    """The profile file ``select`` just wrote: the bundle's, or the cache's when the bundle is
    read-only (the newer of the two when both exist)."""
    from ..selector.profile import profile_locations

    paths = profile_locations(b)
    return max(paths, key=lambda p: p.stat().st_mtime_ns) if paths else None


@click.command("select")
@click.argument("bundle", type=click.Path())
@click.option("--budget-ms", required=True, callback=_budget, help="Latency budget per image in milliseconds.")
@click.option("--percentile", type=float, default=95, show_default=True, help="Latency percentile that must fit.")
@click.option("--backend", default="auto", show_default=True, help="auto or a comma list: onnxruntime,openvino,tensorrt.")
@click.option("--margin", type=float, default=0.1, show_default=True,
              help="Safety margin: the percentile must fit budget*(1-margin).")
@click.option("--tiers", default=None, help="Only consider these core counts.")
@click.option("--precision", "precisions", default=None, help="Only consider these precisions.")
@click.option("--count", type=int, default=50, show_default=True, help="Runs per tier if profiling is needed.")
@click.option("--threads", type=int, default=None,
              help="Intra-op threads the application will use (profiles are per thread count).")
@click.option("--no-measure", is_flag=True, help="Fail instead of profiling when the profile is missing.")
@click.option("--profile", "profile_file", type=click.Path(), default=None,
              help="Decide offline for the device that measured this profile (bench --out FILE there); nothing runs here.")
@click.option("--input-size", default=None,
              help="HxW (or N) of the images the application feeds (e.g. 1080x1920): the budget then covers "
                   "preprocessing them to each tier's size plus inference, both measured on this device.")
@click.option("--streams", type=int, default=None,
              help="Workload: this many camera streams at --fps each; picks the candidate and the number of "
                   "requests in flight whose measured images/s carries streams x fps within --budget-ms.")
@click.option("--fps", type=float, default=None, help="Workload: frames per second of each stream (with --streams).")
@click.option("--concurrency", default=None,
              help="Workload: only these numbers of requests in flight, e.g. 1,2,4 (measured when missing).")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def command(bundle, budget_ms, percentile, backend, margin, tiers, precisions, count, threads, no_measure, profile_file,
            input_size, as_json, streams=None, fps=None, concurrency=None):
    """Pick the most accurate (tier, precision, backend) of BUNDLE that fits --budget-ms here."""
    from ..bundle.reader import Bundle
    from ..selector.select import check_budget, select

    check_budget(budget_ms, percentile, margin)
    if count < 1:
        raise UsageError(f"--count must be >= 1, got {count}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    b = Bundle.open(bundle)
    if streams is not None or fps is not None or concurrency is not None:
        from .throughput import run_workload

        return run_workload(b, streams, fps, budget_ms, percentile=percentile, margin=margin, backend=backend,
                            tiers=parse_int_list(tiers, "--tiers"), precisions=parse_list(precisions),
                            concurrency=concurrency, count=count, threads=threads, measure=not no_measure,
                            profile_file=profile_file, input_size=input_size, as_json=as_json,
                            progress=_LazyProgress, saved_profile=_saved_profile)
    if profile_file is not None:
        from ..fleet.profiles import device_classes
        from ..fleet.view import offline_selection

        (dev,) = device_classes(b, [profile_file], threads)
        sel = offline_selection(b, dev, budget_ms, percentile=percentile, margin=margin, backend=backend,
                                tiers=parse_int_list(tiers, "--tiers"), precisions=parse_list(precisions),
                                input_size=input_size)
        from ..selector.select import verify_chosen

        verify_chosen(b, sel.chosen)  # the copy here is what pack ships to that device
    else:
        with contextlib.ExitStack() as stack:
            rep = _LazyProgress(stack, enabled=not as_json)
            sel = select(b, budget_ms, percentile=percentile, backend=backend, margin=margin,
                         tiers=parse_int_list(tiers, "--tiers"), precisions=parse_list(precisions),
                         measure=not no_measure, count=count, threads=threads, progress=rep, input_size=input_size)
    saved = _saved_profile(b) if sel.profiled else None
    if saved is not None and saved.parent != b.root / "profiles":
        console.print(f"{b.root} is read-only here: profile saved to {saved} "
                      "(select and Runtime.open read it from there)", highlight=False, soft_wrap=True)
    if as_json:
        click.echo(json.dumps({**sel.to_dict(), "profile": None if saved is None else str(saved)}, indent=1))
        return
    if sel.profiled:
        console.print(f"profiled this device ({sel.device}) and saved it in {saved or b.root / 'profiles'}",
                      highlight=False, soft_wrap=True)
    limit = sel.limit_ms
    parts = sel.input_size is not None
    cols = ["", "artifact", "C", "size"] + ([f"pre p{sel.percentile:g}", f"infer p{sel.percentile:g}"] if parts else [])
    t = Table(*cols, f"p{sel.percentile:g} ms" + (" total" if parts else ""), "top-1", "fits", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    for m in sel.ranked:
        tier = m.cand.tier
        t.add_row("->" if m is sel.chosen else "", tier.artifact + (f" ({tier.execution})" if tier.execution else ""),
                  str(tier.cores),
                  f"{tier.height}x{tier.width}",
                  *([f"{m.preprocess_ms:.3f}", f"{m.inference_ms:.3f}"] if parts and m.preprocess_ms is not None
                    else ["-", "-"] if parts else []),
                  f"{m.latency_ms:.3f}",
                  format_top1(m.cand.accuracy, m.cand.samples),
                  "yes" if limit is None or m.latency_ms <= limit else "no")
    out.print(t)
    c = sel.chosen
    out.print(f"selected [bold]{c.cand.tier}[/bold]: p{sel.percentile:g} {c.latency_ms:.3f} ms <= "
              f"{limit:.3f} ms (budget {budget_ms:g} ms, margin {sel.margin:g}) on {sel.device}"
              + (f"; per call: {c.preprocess_ms:.3f} ms preprocessing a {sel.input_size[0]}x{sel.input_size[1]} "
                 f"image + {c.inference_ms:.3f} ms inference" if parts and c.preprocess_ms is not None else ""))
    d = sel.decision or {}
    if d.get("reason"):
        ties = [k for k in d.get("tied", []) if k != c.cand.key]
        out.print(f"why: {d['reason']}" + (f"; tied: {', '.join(ties)}" if ties else ""))
