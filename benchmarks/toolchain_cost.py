"""What does a full export cost? Wall time of ``veca_deploy.export`` for the reference model with
every tier (4), both formats (ONNX, OpenVINO IR), all precisions (FP32, FP16, INT8 calibrated on
Fashion-MNIST TRAIN, accuracy gate on TEST) and the elastic ONNX graph, broken down by stage
(from the exporter's progress messages), and the bundle's bytes: per-tier graphs vs the one
elastic graph that serves every tier.

    python benchmarks/toolchain_cost.py --keep-bundle /tmp/ref_bundle   # full run, keep the bundle
    python benchmarks/toolchain_cost.py --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "toolchain_cost"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep-bundle", default=None, help="write the bundle here (kept) instead of a temp folder")
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true", help="2 tiers, ONNX FP32 + elastic only")
    ap.add_argument("--bundle", default=None, help="measure the bytes of an existing full bundle instead of exporting")
    ap.add_argument("--export-wall-s", type=float, default=None,
                    help="with --bundle: the wall time measured when that bundle was exported (recorded as such)")
    return ap.parse_args(argv)


def stage_of(msg: str) -> str:
    """Group the exporter's progress messages: 'ONNX c=8 28x28' -> 'ONNX fp32 per-tier', ..."""
    m = msg.lower()
    if m.startswith("onnx elastic"):
        return "ONNX fp32 elastic (export+simplify+parity)"
    if m.startswith("onnx c="):
        return "ONNX fp32 per-tier (export+simplify+parity)"
    if m.startswith("openvino fp"):
        return f"OpenVINO {m.split()[1]} IR (convert+parity)"
    if m.startswith("onnx fp16") or m.startswith("onnx int8") or m.startswith("openvino int8"):
        fmt, prec = m.split()[:2]
        return f"{'ONNX' if fmt == 'onnx' else 'OpenVINO'} {prec} ({'QDQ' if fmt == 'onnx' and prec == 'int8' else 'NNCF' if prec == 'int8' else 'convert'}+parity)"
    return msg.split(" c=")[0]


def main(argv=None) -> dict:
    a = parse(argv)
    import veca_deploy
    from veca_deploy.bundle.reader import Bundle

    fp = cm.fingerprint()
    result = cm.header(fp, benchmark=NAME, model="veca_tiny (built-in reference)")
    cm.log(f"machine: {result['machine']}")
    tmp = Path(tempfile.mkdtemp(prefix="veca-toolchain-"))
    out_dir = Path(a.keep_bundle) if a.keep_bundle else tmp / "bundle"
    events: list[tuple[float, str]] = []

    def progress(msg="", *args, **kw):
        events.append((time.perf_counter(), str(msg)))

    if a.smoke:
        kwargs = dict(cores=[8, 16], formats=["onnx"], precisions=["fp32"], elastic=True)
    else:
        kwargs = dict(formats=["onnx", "openvino"], precisions=["fp32", "fp16", "int8"], calib="fashion-mnist",
                      elastic=True)
    if a.bundle:
        from veca_deploy.bundle.manifest import read_manifest

        out_dir = Path(a.bundle)
        manifest = read_manifest(out_dir)
        total_s = a.export_wall_s or float("nan")
        kwargs["note"] = "bundle exported in a separate run; export_wall_s given on the command line"
    else:
        cm.log(f"export {kwargs} -> {out_dir}")
        t0 = time.perf_counter()
        events.append((t0, "start"))
        manifest = veca_deploy.export(None, out=out_dir, force=True, progress=progress, **kwargs)
        total_s = time.perf_counter() - t0
        events.append((time.perf_counter(), "end"))
    stages: dict[str, float] = defaultdict(float)
    for (t_a, m_a), (t_b, _) in zip(events, events[1:]):
        stages[stage_of(m_a)] += t_b - t_a
    bundle = Bundle.open(out_dir)
    arts = bundle.artifacts
    nbytes = lambda art: art.bytes + sum(f.bytes for f in art.files)  # noqa: E731
    sizes = []
    for prec in ("fp32", "fp16", "int8"):
        per = [x for x in arts if x.format == "onnx" and x.precision == prec and not x.elastic]
        el = [x for x in arts if x.format == "onnx" and x.precision == prec and x.elastic]
        if not per:
            continue
        one = max(nbytes(x) for x in per)
        e = nbytes(el[0]) if el else None
        sizes.append({"format": "onnx", "precision": prec, "tiers": sorted(x.cores for x in per),
                      "one_tier_bytes": one, "all_per_tier_bytes": sum(nbytes(x) for x in per),
                      "elastic_bytes": e, "elastic_over_one_tier": cm.ratio(e, one),
                      "per_tier_total_over_one_tier": cm.ratio(sum(nbytes(x) for x in per), one)})
    for prec in ("fp32", "fp16", "int8"):
        per = [x for x in arts if x.format == "openvino" and x.precision == prec]
        if per:
            one = max(nbytes(x) for x in per)
            sizes.append({"format": "openvino", "precision": prec, "tiers": sorted(x.cores for x in per),
                          "one_tier_bytes": one, "all_per_tier_bytes": sum(nbytes(x) for x in per),
                          "elastic_bytes": None, "elastic_over_one_tier": None,
                          "per_tier_total_over_one_tier": cm.ratio(sum(nbytes(x) for x in per), one)})
    dir_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    fp32 = next((s for s in sizes if s["format"] == "onnx" and s["precision"] == "fp32"), None)
    result.update(export_kwargs=kwargs, export_wall_s=round(total_s, 1),
                  stages_s={k: round(v, 2) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])},
                  artifacts=len(manifest.artifacts), bundle_dir_bytes=dir_bytes, sizes=sizes,
                  bundle=str(out_dir) if (a.keep_bundle or a.bundle) else None,
                  target_elastic_bytes={"elastic_over_one_tier": fp32 and fp32["elastic_over_one_tier"],
                                        "target": 1.1, "met": bool(fp32 and fp32["elastic_over_one_tier"]
                                                                   and fp32["elastic_over_one_tier"] <= 1.1)})
    cm.finish(result)
    md = (f"Machine: {result['machine']}. Reference model, `veca_deploy.export(None, {', '.join(f'{k}={v!r}' for k, v in kwargs.items())})`: "
          f"**{total_s:.1f} s** wall, {len(manifest.artifacts)} artifacts, bundle folder {dir_bytes / 1e6:.2f} MB.\n\n"
          + cm.md_table(["stage", "seconds", "% of export"],
                        [[k, round(v, 1), round(100 * v / total_s, 1)] for k, v in result["stages_s"].items()]
                        or [["(stages not measured in this run)", total_s, 100.0]])
          + "\n" + cm.md_table(["format", "precision", "tiers", "one tier (kB)", "all per-tier graphs (kB)",
                                "elastic graph (kB)", "elastic / one tier", "per-tier total / one tier"],
                               [[s["format"], s["precision"], ",".join(map(str, s["tiers"])),
                                 round(s["one_tier_bytes"] / 1e3, 1), round(s["all_per_tier_bytes"] / 1e3, 1),
                                 s["elastic_bytes"] and round(s["elastic_bytes"] / 1e3, 1),
                                 s["elastic_over_one_tier"], s["per_tier_total_over_one_tier"]] for s in sizes]))
    plt = cm.plt()
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    st = list(result["stages_s"].items())
    ax[0].barh([k for k, _ in st][::-1], [v for _, v in st][::-1])
    ax[0].set(xlabel="seconds", title=f"full export {total_s:.0f} s")
    ax[0].tick_params(axis="y", labelsize=7)
    lab = [f"{s['format']} {s['precision']}" for s in sizes]
    xs = range(len(sizes))
    ax[1].bar([x - 0.2 for x in xs], [s["all_per_tier_bytes"] / 1e6 for s in sizes], 0.4, label="all per-tier graphs")
    ax[1].bar([x + 0.2 for x in xs], [(s["elastic_bytes"] or 0) / 1e6 for s in sizes], 0.4, label="one elastic graph")
    ax[1].scatter(list(xs), [s["one_tier_bytes"] / 1e6 for s in sizes], c="k", zorder=3, label="one tier")
    ax[1].set_xticks(list(xs), lab, fontsize=7)
    ax[1].set(ylabel="MB", title="bundle bytes")
    ax[1].legend(fontsize=7)
    fig.suptitle(result["machine"], fontsize=9)
    if not a.keep_bundle and not a.bundle:
        shutil.rmtree(tmp, ignore_errors=True)
    cm.publish(a.out, NAME, result, md, fig)
    return result


if __name__ == "__main__":
    main()
