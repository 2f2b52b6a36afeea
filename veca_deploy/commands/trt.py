"""``veca-deploy build-trt`` and ``veca-deploy check-trt``: TensorRT engines for a bundle.

``check-trt`` runs anywhere (no TensorRT, no GPU) so problems surface on the export machine;
``build-trt`` runs on the device that will execute the engines. Neither imports torch.
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from ..convert.trt_int8 import DEFAULT_INT8_SOURCE, INT8_SOURCES
from ..errors import ExportError
from .common import console, out, parse_int_list, parse_list, progress_reporter


@click.command("build-trt")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--tiers", default=None, help="Core tiers to build, e.g. 8,16 (default: every tier in the bundle).")
@click.option("--precision", "precision", default="fp16", show_default=True,
              help="ONNX precisions to build, comma-separated (fp32, fp16, int8). Engines keep the ONNX types.")
@click.option("--int8-source", type=click.Choice(list(INT8_SOURCES)), default=DEFAULT_INT8_SOURCE, show_default=True,
              help="INT8 engines: qdq-fp16 = the S8S8 Q/DQ graph with FP16 outside the INT8 GEMMs; "
                   "qdq-fp32 = the S8S8 graph as stored (FP32 outside the GEMMs). The table shows INT8 vs FP16 "
                   "latency per tier.")
@click.option("--workspace", "workspace_mb", type=int, default=None,
              help="Builder workspace in MiB (default: half the free memory on Jetson, 90% on a discrete GPU).")
@click.option("--no-elastic", is_flag=True, help="Skip elastic graphs (one profile per tier).")
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Largest batch the engines accept (recorded as the artifact's max_batch; Runtime splits larger batches).")
@click.option("--no-timing-cache", is_flag=True, help="Do not read or write the bundle's timing cache.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def build_trt(bundle_dir: str, tiers: str | None, precision: str, int8_source: str, workspace_mb: int | None,
              no_elastic: bool, max_batch: int, no_timing_cache: bool, quiet: bool) -> None:
    """Build TensorRT engines (strongly typed plans) from the bundle's ONNX graphs, on this device,
    and gate each one on the bundle's golden outputs before the bundle changes."""
    from ..convert.tensorrt_build import build_engines, build_environment

    build_environment()  # no TensorRT / cuda-python / GPU: one line and exit 7, before any progress output
    with progress_reporter(not quiet) as rep:
        arts = build_engines(bundle_dir, tiers=parse_int_list(tiers, "--tiers"),
                             precisions=tuple(parse_list(precision) or ["fp16"]), workspace_mb=workspace_mb,
                             elastic=not no_elastic, timing_cache=not no_timing_cache, progress=rep,
                             max_batch=max_batch, int8_source=int8_source)
    out.print(engine_table(arts, f"TensorRT engines in {bundle_dir}"))


def engine_table(arts, title: str) -> Table:
    """One row per engine: tiers, size, INT8 source, worst gate cosine, batch-1 p50 per tier and,
    for INT8, the speed-up over the FP16 engine of the same tier."""
    table = Table(title=title)
    for col in ("engine", "tiers", "max batch", "MiB", "INT8 source", "min cosine", "p50 ms (b=1)",
                "INT8 vs FP16", "GPU", "TensorRT", "build s"):
        table.add_column(col)
    for a in arts:
        d = a.details
        lat = d.get("latency_ms") or {}
        vs = d.get("int8_vs_fp16") or {}
        cmp = ", ".join(f"c{t} {v['speedup']:.2f}x" for t, v in vs.items()) if vs else (
            "no FP16 engine" if a.precision == "int8" else "-")
        table.add_row(a.id, ",".join(map(str, a.tiers)), str(a.max_batch), f"{a.bytes / 2**20:.1f}",
                      str(d.get("int8_source") or "-"), _min_cosine(a), ", ".join(f"c{t} {v:.3f}" for t, v in lat.items())
                      or "-", cmp, str(d.get("gpu")), str(d.get("tensorrt")), str(d.get("build_seconds")))
    return table


def _min_cosine(a) -> str:
    reps = list(a.parity.values()) if a.elastic else [a.parity]
    cos = [o.get("cosine") for r in reps if isinstance(r, dict) for o in (r.get("outputs") or {}).values()]
    cos = [c for c in cos if isinstance(c, (int, float))]
    return f"{min(cos):.5f}" if cos else "-"


@click.command("check-trt")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--trt-version", default=None,
              help="TensorRT release to check against, MAJOR.MINOR[.PATCH] with major 10 or 11 "
                   "(default 10.3, JetPack 6.1/6.2).")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def check_trt(bundle_dir: str, trt_version: str | None, as_json: bool) -> None:
    """Check that every ONNX graph of a bundle would build with TensorRT (no TensorRT needed)."""
    from ..convert.trt_check import DEFAULT_TRT_VERSION, check_bundle_for_tensorrt, parse_trt_version

    trt_version = parse_trt_version(trt_version) if trt_version is not None else None  # before the bundle is read
    results = check_bundle_for_tensorrt(bundle_dir, trt_version or DEFAULT_TRT_VERSION)
    if as_json:
        click.echo(json.dumps([{"artifact": aid, **rep.to_dict()} for aid, rep in results], indent=1))
    else:
        table = Table(title=f"TensorRT {trt_version or DEFAULT_TRT_VERSION} readiness of {bundle_dir}")
        for col in ("artifact", "result", "nodes", "dynamic dims", "detail"):
            table.add_column(col)
        for aid, rep in results:
            dyn = ", ".join(f"{n}[{ax}]" for n, dims in rep.dynamic_dims.items() for ax in dims) or "-"
            detail = rep.summary() if not rep.ok else ("; ".join(rep.warnings) or "-")
            table.add_row(aid, "[green]ok[/]" if rep.ok else "[red]FAIL[/]", str(len(rep.nodes)), dyn, detail)
        out.print(table)
    failed = [(aid, rep) for aid, rep in results if not rep.ok]
    if failed:
        aid, rep = failed[0]
        more = f" (and {len(failed) - 1} more graph(s))" if len(failed) > 1 else ""
        raise ExportError(f"{len(failed)} of {len(results)} graph(s) would not build with TensorRT: "
                          f"{aid}: {rep.summary()}{more}")
    if not as_json:
        console.print(f"all {len(results)} graph(s) pass the static TensorRT check")
