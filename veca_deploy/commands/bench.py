"""``veca-deploy bench``: time every artifact (every tier of elastic ones) on this device.

Uses the same harness and runner settings as the selector, and saves the result as the
bundle's profile for this device (``DIR/profiles/<device>.json``), so ``select`` and
``Runtime.open`` reuse it instead of measuring again. Nothing else in the bundle is written.
A bundle that cannot be written here (read-only) gets its profile in the cache
(``<cache root>/profiles/<manifest sha256>/<device>.json``, see
:func:`veca_deploy.selector.profile.save_profile`), where ``select`` and ``Runtime.open`` find it;
the command says where it went. ``--out FILE`` writes the profile to FILE instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
from rich import box
from rich.table import Table

from ..errors import BundleError, UsageError
from ..formats import PRECISIONS
from .common import console, format_top1, out, parse_int_list, parse_list, progress_reporter


SHORT = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt"}


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


@click.command("bench")
@click.argument("bundle", type=click.Path())
@click.option("--backend", default="auto", show_default=True, help="auto or a comma list: onnxruntime,openvino,tensorrt.")
@click.option("--tiers", default=None, help="Only these core counts, e.g. 8,16.")
@click.option("--precision", "precisions", default=None, help="Only these precisions, e.g. fp32,int8.")
@click.option("--count", type=int, default=None, help="Timed runs per tier [default: 100].")
@click.option("--duration", type=float, default=None, help="Seconds of timed runs per tier (instead of --count).")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs after the first one.")
@click.option("--passes", type=int, default=4, show_default=True,
              help="Spread each candidate's runs over this many passes over all candidates (order reversed "
                   "each pass), so a host that slows down midway slows them all alike; 1 = one run each.")
@click.option("--threads", type=int, default=None, help="Intra-op threads per runner (default: runtime's choice).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None,
              help="Write a latency-vs-accuracy PNG here (outside the bundle).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the profile to this file (outside the bundle) instead of DIR/profiles/.")
@click.option("--input-size", default=None,
              help="HxW (or N) of the images the application feeds (e.g. 1080x1920): also time the bundle's "
                   "preprocessing of that size to each tier size and store it in the profile (select --input-size).")
@click.option("--concurrency", default=None,
              help="Also measure images/s and latency with N requests in flight, e.g. 1,2,4 (saved in the "
                   "profile entry under 'concurrency'; select --streams --fps reads it).")
@click.option("--json", "as_json", is_flag=True, help="Print the measured entries as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(bundle, backend, tiers, precisions, count, duration, warmup, threads, plot, out_file, input_size, as_json,
            quiet, concurrency=None, passes=4):
    """Benchmark BUNDLE on this device and save DIR/profiles/<device>.json (the cache when
    BUNDLE is read-only, FILE with --out)."""
    from ..bundle.reader import Bundle
    from ..selector.candidates import candidates, resolve_backends
    from ..selector.profile import load_profile, measure_candidates, profile_path, save_profile, write_profile

    if count is not None and duration is not None:
        raise UsageError("pass --count or --duration, not both")
    if count is not None and count < 1:
        raise UsageError(f"--count must be >= 1, got {count}")
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        raise UsageError(f"--duration must be a positive number of seconds, got {duration}")
    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if passes < 1:
        raise UsageError(f"--passes must be >= 1, got {passes}")
    b = Bundle.open(bundle)
    if plot and _inside(Path(plot), b.root):
        raise UsageError(f"--plot {plot} is inside the bundle; bench writes only profiles/ there")
    if plot and not Path(plot).parent.is_dir():  # refused before measuring, and never created
        raise UsageError(f"--plot {plot}: folder {Path(plot).parent} does not exist")
    if out_file and _inside(Path(out_file), b.root):
        raise UsageError(f"--out {out_file} is inside the bundle; bench writes only profiles/ there")
    if out_file and Path(out_file).is_dir():
        raise UsageError(f"--out {out_file} is a folder; give a file name")
    tier_list = parse_int_list(tiers, "--tiers")
    prec_list = parse_list(precisions)
    from ..selector.workload import measure_concurrency, parse_levels

    levels = parse_levels(concurrency, "--concurrency")
    for p in prec_list or []:
        if p not in PRECISIONS:
            raise UsageError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    backends = resolve_backends(backend, b)
    cands = candidates(b, backends, tier_list, prec_list)
    if not cands:
        raise UsageError(f"{bundle}: nothing to benchmark for backend(s) {', '.join(backends) or 'none available'}"
                         + (f", tiers {tier_list}" if tier_list else "") + (f", precisions {prec_list}" if prec_list else ""))
    if count is None and duration is None:
        count = 100
    from ..selector.preprocess_cost import cost_key, parse_input_size, preprocess_costs

    input_size = parse_input_size(input_size)
    prof = load_profile(b)
    with progress_reporter(not quiet and not as_json) as rep:
        prof = measure_candidates(b, cands, count=count, duration_s=duration, warmup=warmup, threads=threads,
                                  profile=prof, progress=rep, passes=passes)
        if levels:
            prof = measure_concurrency(b, cands, levels, count=count, duration_s=duration, warmup=warmup,
                                       threads=threads, profile=prof, progress=rep)
    pre_rows = []
    if input_size is not None:
        sizes = sorted({(c.artifact.height, c.artifact.width) for c in cands})
        for key in [cost_key(input_size, sz, b.preprocess) for sz in sizes]:
            prof.preprocess.pop(key, None)  # bench re-measures, like the candidates
        preprocess_costs(b.preprocess, prof, input_size, sizes, 95)
        pre_rows = [prof.preprocess[cost_key(input_size, sz, b.preprocess)] for sz in sizes]
    if out_file:
        path = write_profile(out_file, prof)
    else:
        path = save_profile(b, prof)
        if path != profile_path(b.root, prof.device):
            console.print(f"{b.root} is read-only here: profile saved to {path} "
                          "(select and Runtime.open read it from there)", highlight=False, soft_wrap=True)
    rows = [(c, prof.entries.get(c.key)) for c in cands]
    if as_json:
        click.echo(json.dumps({"device": prof.device, "profile": str(path), "fingerprint": prof.fingerprint,
                               "entries": [e for _, e in rows if e],
                               **({"preprocess": pre_rows} if pre_rows else {})}, indent=1))
    else:
        _table(prof, rows, path)
        if levels:
            from .throughput import concurrency_table

            concurrency_table(rows, levels)
        _pre_table(pre_rows)
    if plot:
        _plot(rows, Path(plot), prof.device)
        console.print(f"plot: {plot}")
    measured = [c for c, e in rows if e is not None]
    failed = [(c, e) for c, e in rows if e is not None and e.get("error")]
    if not measured:
        raise UsageError("no candidate could run here (backend libraries missing?)")
    # an execution variant (OpenVINO running a graph in bf16/f16, ONNX Runtime's bf16 GEMMs on Arm) is an option of this runtime, not
    # part of the bundle: one this device cannot compile or that fails its gate here is recorded and
    # never selected, but the bundle is fine. A failing artifact in its own precision is an error.
    broken = {(c.artifact.id, c.cores) for c, _ in failed if not c.variant}
    refused = [(c, e) for c, e in failed if c.variant and (c.artifact.id, c.cores) not in broken]
    failed = [(c, e) for c, e in failed if (c.artifact.id, c.cores) in broken]
    if failed:  # the variants of a failing artifact fail with it: one error, about the artifact
        first = next((c, e) for c, e in failed if not c.variant)
        raise BundleError(f"{len(failed)} of {len(measured)} measurement(s) failed, first: {first[0].key}: "
                          f"{first[1]['error']}")
    if refused:
        console.print(f"{len(refused)} execution variant(s) refused here, never selected: "
                      + "; ".join(f"{c.key}: {e['error'][:120]}" for c, e in refused[:3]), highlight=False,
                      soft_wrap=True)


def _pre_table(pre_rows) -> None:
    """Preprocessing cost per tier size (bench --input-size): what a call pays before inference."""
    if not pre_rows:
        return
    from ..runtimes.timing import percentile_of

    t = Table("input", "to", "method", "p50 ms", "p95 ms", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for r in pre_rows:
        t.add_row("x".join(map(str, r["input_size"])), "x".join(map(str, r["size"])), r["method"],
                  _f(percentile_of(r["samples_ms"], 50)), _f(percentile_of(r["samples_ms"], 95)))
    out.print(t)
    out.print("preprocessing per image (the bundle's declared resize + normalisation, batch 1): "
              "select/Runtime.open with the same input size budget on preprocessing + inference")


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _table(prof, rows, path) -> None:
    cpu = (prof.fingerprint.get("cpu") or {})
    out.print(f"[bold]{prof.device}[/bold]  {cpu.get('model')}  {cpu.get('usable_cores')} cores  "
              f"isa {' '.join(cpu.get('isa') or []) or '-'}")
    t = Table("graph", "C", "size", "load", "1st", "p50", "p90", "p99", "mean", "img/s", "RSS", "top-1",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.columns[0].min_width = 11
    for c, e in rows:
        a = c.artifact
        label = (f"{SHORT.get(c.backend, c.backend)}-{a.precision}" + ("-el" if a.elastic else "")
                 + (f" in {c.variant}" if c.variant else ""))
        size = f"{a.height}x{a.width}"
        if e is None:
            t.add_row(label, str(c.cores), size, "[yellow]backend missing[/yellow]", *["-"] * 8)
            continue
        tm = e.get("timing")
        if e.get("error") or not tm:
            color = "yellow" if c.variant else "red"  # a refused variant is not a bundle defect
            t.add_row(label, str(c.cores), size, f"[{color}]{(e.get('error') or '')[:60]}[/{color}]", *["-"] * 8)
            continue
        pct = tm["percentiles_ms"]
        t.add_row(label, str(c.cores), size, _f(tm.get("load_ms"), 0), _f(tm.get("first_ms"), 1),
                  _f(pct["50"]), _f(pct["90"]), _f(pct["99"]), _f(tm["mean_ms"]), _f(tm["throughput_ips"], 0),
                  _f(tm.get("rss_mb"), 0), format_top1(c.accuracy, c.samples))
    out.print(t)
    from ..selector.profile import passes_of

    passes = passes_of(e for _, e in rows)
    spread = f"; runs spread over {passes} passes, order reversed each pass" if passes > 1 else ""
    out.print(f"profile: {path}\n(ms at batch 1; ort/ov/trt = onnxruntime/openvino/tensorrt, -el = elastic graph, in bf16 = an execution variant; load = load + compile (first pass); 1st = first inference; RSS = process MiB after the run{spread})")


def _plot(rows, path: Path, device: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'veca-deploy[plot]'") from None
    pts = [(c, e["timing"]["percentiles_ms"]["50"]) for c, e in rows if e and not e.get("error") and e.get("timing")]
    if not pts:
        raise UsageError("nothing measured to plot")
    have_acc = any(c.accuracy is not None for c, _ in pts)
    ys = [(c.accuracy if have_acc else c.cores) for c, _ in pts]
    if have_acc:
        keep = [i for i, (c, _) in enumerate(pts) if c.accuracy is not None]
        pts, ys = [pts[i] for i in keep], [ys[i] for i in keep]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    series: dict[str, list[int]] = {}
    for i, (c, _) in enumerate(pts):
        series.setdefault(f"{c.artifact.precision} {c.backend}" + (" elastic" if c.artifact.elastic else "")
                          + (f" in {c.variant}" if c.variant else ""), []).append(i)
    for label, idx in sorted(series.items()):
        ax.plot([pts[i][1] for i in idx], [ys[i] for i in idx], "o", label=label, alpha=0.8)
        for i in idx:
            ax.annotate(f"C{pts[i][0].cores}", (pts[i][1], ys[i]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    from ..selector.select import pareto

    front = pareto([(lat, y) for (_, lat), y in zip(pts, ys)])
    ax.step([pts[i][1] for i in front], [ys[i] for i in front], "k--", where="post", lw=1, label="Pareto front")
    ax.plot([pts[i][1] for i in front], [ys[i] for i in front], "o", mfc="none", mec="k", ms=11)
    ax.set_xlabel("latency p50 (ms, batch 1)")
    ax.set_ylabel("top-1 accuracy" if have_acc else "cores (no accuracy in the manifest)")
    ax.set_title(f"{device}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
