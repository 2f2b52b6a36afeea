"""``veca-deploy eval``: the task metric (top-1, mIoU, MAE) or feature cosine per tier x precision x
backend, into the manifest."""

from __future__ import annotations

import click

from .common import console, format_top1, out, parse_list, progress_reporter


@click.command("eval")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--data", default="fashion-mnist", show_default=True,
              help="fashion-mnist (TEST split; a model with its own held-out data, such as veca_tiny_seg, uses "
                   "that), seg-fashion-mnist, a labelled .npz (images + labels, masks or maps), or unlabelled "
                   "images (cosine).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the report here.")
@click.option("--limit", type=int, default=None,
              help="Use only the first N images (default: all). A manifest record measured on more images "
                   "is kept, not replaced (see --overwrite).")
@click.option("--backend", "backends", default=None, help="Only these backends, comma-separated.")
@click.option("--metric", type=click.Choice(["top1", "miou", "mae", "cosine"]), default=None,
              help="Task metric of the gate (default: from the outputs and the data).")
@click.option("--allow-drop", type=float, default=None,
              help="Accept a drop up to X points (top-1, mIoU) or an error rise up to X %% (MAE) vs FP32 (recorded).")
@click.option("--variants", default="auto", show_default=True,
              help="Execution variants to measure as well, each on the same images and gated like an artifact: "
                   "auto (those this machine runs natively, e.g. OpenVINO in bf16 on AMX), none, or a list (bf16,f16): "
                   "those of it this machine runs natively.")
@click.option("--no-write", is_flag=True, help="Do not record the accuracy in the manifest.")
@click.option("--overwrite", is_flag=True,
              help="Record this run's numbers even where the manifest holds a measurement on more images.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(bundle_dir, data, json_out, limit, backends, metric, allow_drop, variants, no_write, overwrite,
            quiet) -> None:
    """Measure every artifact of BUNDLE_DIR on held-out data; fail if FP16/INT8 falls > 1 point below FP32.

    The numbers are recorded in the manifest, where select compares them. An artifact whose
    record there rests on more images than this run (an earlier full eval, now --limit 200) keeps
    that record, so select never compares a 200-image accuracy of one backend with 2,000-image
    ones of the others; the command says which records it kept, and --json FILE still gets this
    run's numbers. --overwrite records them anyway.

    Execution variants (--variants) are recorded beside their artifact's numbers; one that falls
    more than the allowed drop below FP32 is reported and never selected here, without failing
    the command (the bundle is fine; this device's lower-precision execution is not).
    """
    from rich.table import Table

    from ..calibration.evaluate import METRIC_LABELS, evaluate, tier_values, unmeasured_variants
    from ..errors import QuantizationError

    wanted = _variants(variants)
    with progress_reporter(not quiet) as rep:
        report = evaluate(bundle_dir, data=data, limit=limit, backends=parse_list(backends), allow_drop=allow_drop,
                          json_out=json_out, write=not no_write, gate_results=False, progress=rep,
                          overwrite=overwrite, metric=metric, variants=wanted)
    absent = unmeasured_variants(wanted)
    if absent:
        console.print(f"not measured: {', '.join(absent)} (this machine does not run "
                      f"{'it' if len(absent) == 1 else 'them'} natively; an accuracy is measured where it runs)",
                      highlight=False, soft_wrap=True)
    kept = report.get("kept") or []
    if kept:
        sizes = sorted({k["recorded_samples"] for k in kept})
        console.print(f"kept the manifest's larger records of {len(kept)} artifact(s) (measured on "
                      f"{'/'.join(map(str, sizes))} images; this run: {report['samples']}): "
                      + ", ".join(k["artifact"] for k in kept[:4]) + (f" (+{len(kept) - 4} more)" if len(kept) > 4 else "")
                      + "; --overwrite records this run instead", highlight=False, soft_wrap=True)
    rows: dict[tuple[str, str], dict[str, str]] = {}
    tiers: set[int] = set()
    for r in report["results"]:
        if r.get("reference"):  # the FP32 graph the others' features are compared with
            vals = {str(c): None for c in r.get("tiers", [r["cores"]])}
        else:
            vals = r.get("per_tier") or {str(r["cores"]): r.get(r.get("metric", "top1"))}
        kind = "elastic" if r["elastic"] else "per-tier"
        key = (f"{r['precision']} {kind}", r["backend"])
        for c, v in vals.items():
            rows.setdefault(key, {})[c] = v
            tiers.add(int(c))
        for name, vr in (r.get("variants") or {}).items():  # an execution variant: a row of its own
            if not vr.get("error"):  # one that could not run is listed below the table
                rows.setdefault((f"{r['precision']} {kind} in {name}", r["backend"]), {}).update(
                    {(str(r["cores"]) if c == "_" else c): v for c, v in tier_values(vr).items()})
    metric = next((r["metric"] for r in report["results"] if not r.get("reference")), "top1")
    label = METRIC_LABELS.get(metric, metric)
    t = Table(title=f"{label} on {report['dataset']} (n={report['samples']})")
    t.add_column("precision")
    t.add_column("backend")
    for c in sorted(tiers):
        t.add_column(f"c={c}", justify="right")
    for (prec, backend), vals in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        fmt = (lambda v: "reference" if v is None else format_top1(v)) if metric not in ("cosine", "mae") else \
            (lambda v: "reference" if v is None else f"{v:.5g}")
        t.add_row(prec, backend, *[fmt(vals[str(c)]) if str(c) in vals else "-" for c in sorted(tiers)])
    out.print(t)
    vfails = report["gate"].get("variant_failures") or []
    if vfails:
        kept_ids = {k["artifact"] for k in kept}  # failures read "<artifact>+<variant>..."
        unwritten = no_write or any(f.split("+", 1)[0] in kept_ids for f in vfails)
        console.print(f"[yellow]{len(vfails)} execution variant failure(s) in this run[/yellow] ("
                      + ("not all recorded: --no-write or a larger record kept" if unwritten else
                         "recorded; select never picks them") + "): " + "; ".join(vfails[:4])
                      + (f" (+{len(vfails) - 4} more)" if len(vfails) > 4 else ""), highlight=False, soft_wrap=True)
    fails = report["gate"]["failures"]
    if fails:
        raise QuantizationError("accuracy gate failed: " + "; ".join(fails[:6])
                                + (f" (+{len(fails) - 6} more)" if len(fails) > 6 else "")
                                + " (numbers recorded; --allow-drop X accepts a larger drop)")
    if metric == "cosine":
        out.print(f"[green]gate passed[/green]: feature cosine >= {report['gate']['min_feature_cosine']}")
    elif metric == "mae":
        out.print(f"[green]gate passed[/green]: every FP16/INT8 artifact's {label} within "
                  f"{report['gate']['max_drop_points']:g} % of FP32")
    else:
        out.print(f"[green]gate passed[/green]: every FP16/INT8 artifact within "
                  f"{report['gate']['max_drop_points']:g} point(s) of FP32 {label}")


def _variants(text: str) -> bool | list[str]:
    """``--variants``: auto -> True (native ones), none -> False, else the named ones (checked)."""
    from ..errors import UsageError
    from ..formats import BACKENDS

    if text.strip().lower() == "auto":
        return True
    if text.strip().lower() == "none":
        return False
    names = parse_list(text) or []
    known = sorted({v for b in BACKENDS.values() for v in b.execution_variants})
    for n in names:
        if n not in known:
            raise UsageError(f"--variants: unknown execution variant {n!r}; choose from auto, none, {', '.join(known)}")
    return names
