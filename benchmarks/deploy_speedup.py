"""What does deployment buy over PyTorch? PyTorch eager FP32 vs ONNX Runtime FP32/INT8 vs OpenVINO
FP32/FP16/INT8, batch 1, for veca_small (random weights) at 256 and 512 px and C = 8, 16, 32, 64,
and for the built-in reference model (veca_tiny, trained, 28 px, its four tiers).

All variants of one (model, size, C) are timed side by side in one process, in rounds: each variant
runs a block of calls (the first untimed), the order alternating between rounds (A B C, C B A, ...);
ONNX Runtime's intra-op workers are told not to spin after a run (``allow_spinning=False``).
Every variant is also timed *alone* (its calls back to back, before the rounds), and the ratio
interleaved / alone is reported per variant: interleaving eager PyTorch call by call with ONNX
Runtime and OpenVINO once inflated the eager median 7x on a 2-core AMX Xeon (the other
runtimes' lingering threads took the cores from torch's OpenMP team), so a variant whose
interleaved median differs from its alone median by more than 20% is flagged in the JSON, the
markdown and the log, and a speedup against a flagged eager baseline is not to be quoted. INT8 comes from the project's
quantization code (``veca_deploy.calibration``: ORT static QDQ on MatMul/Gemm/Conv, both
schemes: S8S8 and U8S8; NNCF for OpenVINO). Calibration data: for veca_small (random weights, latency only)
random crops/flips of the photos bundled with scikit-image (``skimage.data``), few images
(``--calib-count``, recorded as forced below the 300-image minimum: scales do not change
latency); for the reference model the bundle's own Fashion-MNIST TRAIN calibration (512 images).
OpenVINO "FP16" is the FP16-compressed IR the bundles ship; on a CPU without native FP16/BF16
compute it executes in f32 (the execution precision OpenVINO reports is recorded).

The speed target of issue 15 is about the product, not an inner function: ``--product`` (on by
default for the C=16 tier at 512 px) exports that tier through the real CLI (``veca-deploy export
--precision fp32,int8 --calib photos`` with every gate, the host's ``--target``), runs ``veca-deploy
bench``, asks ``veca-deploy select`` for the most accurate path whose median fits eager / target,
then times what ``Runtime.open`` serves for that decision side by side with eager PyTorch.

    python benchmarks/deploy_speedup.py                       # full run
    python benchmarks/deploy_speedup.py --bundle DIR          # reuse a reference bundle
    python benchmarks/deploy_speedup.py --smoke --out /tmp/x  # CI
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "deploy_speedup"
VARIANTS = ("torch_fp32", "ort_fp32", "ort_fp16", "ort_int8", "ort_int8_u8s8", "ov_fp32", "ov_fp16", "ov_int8",
            "ov_int8_bf16", "ov_int8_f16", "ov_fp32_bf16", "ov_fp32_f16", "ov_fp16_bf16", "ov_fp16_f16",
            "ort_fp32_bf16", "ort_int8_bf16", "ort_int8_u8s8_bf16")  # *_bf16/_f16: execution variants, where the CPU
#                                                                   runs them (runtimes.supported_variants)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="veca_small")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--cores", default="8,16,32,64")
    ap.add_argument("--int8-tiers", default="8@256,16@256,32@256,64@256,16@512",
                    help="C@size list quantized to INT8, or 'all' (each INT8 tier costs two calibrations)")
    ap.add_argument("--calib-count", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=3, help="timed calls per variant per round (plus one untimed)")
    ap.add_argument("--alone", type=int, default=5,
                    help="back-to-back timed calls per variant, timed alone before the rounds and again after them")
    ap.add_argument("--allow-spinning", action="store_true",
                    help="leave ONNX Runtime's intra-op spinning on (the old method; with --block 1 it reproduces "
                         "the starved eager baseline, which the alone/interleaved check then flags)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peak-shape", default="1024,1024,4096",
                    help="M,K,N of the single-MatMul model that measures each backend/precision's practical peak")
    ap.add_argument("--bundle", default=None, help="reference bundle to reuse (else one is exported)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--product", default="16@512",
                    help="C@size tiers (of --model) to also run through the CLI: export, bench, select at eager / "
                         "target, then the chosen path vs eager; '' for none")
    ap.add_argument("--product-goal", type=float, default=None,
                    help="speed-up over eager the selected path must reach (default: the issue-15 target of this "
                         "CPU's class; --smoke: 1)")
    ap.add_argument("--product-calib", type=int, default=64,
                    help="photo crops the CLI export calibrates on (forced below the 300 minimum: random weights)")
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        a.model, a.sizes, a.cores, a.calib_count, a.rounds, a.block, a.alone = "veca_tiny", "28", "8", 8, 2, 2, 3
        if a.peak_shape == ap.get_default("peak_shape"):
            a.peak_shape = "64,64,256"
        if a.int8_tiers == ap.get_default("int8_tiers"):
            a.int8_tiers = "8@28"
        if a.product == ap.get_default("product"):
            a.product, a.product_calib = "8@28", 8
        if a.product_goal is None:  # at 28 px the runtimes' own call cost is what is left to win
            a.product_goal = 1.0
    a.sizes = [int(s) for s in str(a.sizes).split(",") if s]
    try:
        a.peak_shape = [int(v) for v in str(a.peak_shape).split(",")]
        assert len(a.peak_shape) == 3 and min(a.peak_shape) > 0
    except (ValueError, AssertionError):
        ap.error(f"--peak-shape wants M,K,N, got {a.peak_shape!r}")
    a.cores = [int(c) for c in str(a.cores).split(",") if c]
    a.int8 = ({(c, s) for c in a.cores for s in a.sizes} if a.int8_tiers == "all" else
              {tuple(int(v) for v in t.split("@")) for t in a.int8_tiers.split(",") if t})
    a.product = [tuple(int(v) for v in t.split("@")) for t in str(a.product).split(",") if t]
    return a


def skimage_calibration(count: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """uint8 NHWC 256x256 random crops / flips of the RGB photos shipped with scikit-image."""
    from skimage import data as skd
    from skimage.transform import resize

    names = [n for n in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat")
             if hasattr(skd, n)]
    photos = []
    for n in names:
        img = getattr(skd, n)()
        if img.ndim == 3 and img.shape[2] >= 3:
            photos.append(img[..., :3])
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append((resize(crop, (256, 256), anti_aliasing=True) * 255).round().astype(np.uint8))
    return np.stack(out), names


#: interleaved / alone medians beyond this are flagged (starvation or drift between the phases)
STARVATION_LIMIT = 0.20


def timed(variants: dict, rounds: int, iters: int, block: int = 3, alone: int = 5) -> tuple[dict, dict]:
    """(interleaved summaries, alone summaries). Alone: each variant's calls back to back (three
    untimed first: OpenVINO's bf16 path needs a few calls to settle), no other runtime in
    between, once before the rounds and once after them (one median over both, so a burst of
    load from other jobs in one phase does not decide it); interleaved: rounds of blocks,
    alternating order."""
    solo = {k: [] for k in variants}

    def alone_phase() -> None:
        for k, f in variants.items():
            solo[k] += cm.interleaved({k: f}, rounds=alone, warmup=3, iters=iters)[k]

    alone_phase()
    samples = cm.interleaved(variants, rounds=rounds, warmup=1, iters=iters, block=block, discard=1)
    alone_phase()
    return {k: cm.summary(v) for k, v in samples.items()}, {k: cm.summary(v) for k, v in solo.items()}


def isa_class(fp: dict) -> str:
    """This CPU's class, by the classifier ``--target`` uses too (``fingerprint.isa_class``)."""
    from veca_deploy.runtimes.fingerprint import isa_class as classify

    cpu = fp.get("cpu") or {}
    return classify(cpu.get("isa"), cpu.get("arch"))


#: issue 15: the path select chooses vs PyTorch eager FP32, veca_small C=16 at 512 px. The issue
#: names AMX, AVX-512 VNNI/BF16 without AMX, and AVX2 only; the two x86 classes between them
#: (AVX-512 without VNNI, AVX2 with the 256-bit AVX-VNNI) are held to the AVX2 floor. Arm and
#: other CPUs have no target: the run reports the ratio and says so.
SPEED_TARGETS = {"amx": 5.0, "avx512-vnni": 2.5, "avx512": 1.5, "avx-vnni": 1.5, "avx2": 1.5}


def inner_variant(chosen: dict | None, int8_choice: str | None, have: dict) -> str | None:
    """The inner-table column that runs what select chose (None when the table has none)."""
    if not chosen:
        return None
    prec, ex = chosen.get("precision"), chosen.get("execution")
    if chosen.get("backend") == "openvino":
        name = {"fp32": "ov_fp32", "fp16": "ov_fp16", "int8": "ov_int8"}.get(prec)
    elif chosen.get("backend") == "onnxruntime":
        u8 = "U8S8" in (int8_choice or "")
        name = {"fp32": "ort_fp32", "fp16": "ort_fp16", "int8": "ort_int8_u8s8" if u8 else "ort_int8"}.get(prec)
    else:
        name = None
    name = f"{name}_{ex}" if name and ex and ex != "f32" else name
    return name if name in have else None


def main(argv=None) -> dict:
    a = parse(argv)
    import torch

    from veca_deploy.calibration.data import load_calibration
    from veca_deploy.calibration.onnx_quant import quantize_onnx_int8
    from veca_deploy.calibration.openvino_quant import quantize_openvino_int8
    from veca_deploy.calibration.recipe import NncfRecipe, ort_recipe
    from veca_deploy.calibration.target import nncf_preset_for, resolve_target
    from veca_deploy.convert.onnx_graph import simplify_onnx
    from veca_deploy.export.onnx_export import export_onnx
    from veca_deploy.convert.openvino_ir import export_openvino
    from veca_deploy.model.flops import forward_flops
    from veca_deploy.model.registry import create_model, latency_weights
    from veca_deploy.preprocess import Preprocess
    from veca_deploy.runtimes import create_runner, supported_variants

    fp = cm.fingerprint(a.threads)
    ort_opts = {"allow_spinning": bool(a.allow_spinning), **({"threads": a.threads} if a.threads else {})}
    ov_opts = {"inference_precision": "f32", **({"threads": a.threads} if a.threads else {})}
    if a.threads:
        torch.set_num_threads(a.threads)
    result = cm.header(fp, benchmark=NAME, model=a.model, sizes=a.sizes, cores=a.cores,
                       int8_tiers=sorted(f"{c}@{s}" for c, s in a.int8), torch_threads=torch.get_num_threads(),
                       method={"interleaved": f"{a.rounds} rounds, each variant a block of 1 untimed + {a.block} "
                                              "timed calls, order alternating", "alone": f"each variant {a.alone} "
                                              "timed calls back to back (3 untimed first), before the rounds and again after them",
                               "flag": f"|interleaved/alone - 1| > {STARVATION_LIMIT:.0%}"},
                       settings={"onnxruntime": {"threads": a.threads or "default",
                                                 "allow_spinning": bool(a.allow_spinning)},
                                 "openvino": {"hint": "LATENCY", "inference_precision": "f32 (FP16 IR: weights "
                                              "fp16-compressed, compute as reported)"},
                                 "torch": "eager, torch.inference_mode(), FP32"})
    cm.log(f"machine: {result['machine']}")
    from _peak import VARIANT_PEAK, measure_peaks

    def peaks_now() -> dict:
        return measure_peaks(*a.peak_shape, threads=a.threads, ort_options=ort_opts,
                             ov_precisions=["f32", *supported_variants("openvino")], rounds=a.rounds, block=a.block,
                             log=cm.log)

    cm.log("practical GEMM peaks (start) ...")
    peaks_start = peaks_now()
    tmp = Path(tempfile.mkdtemp(prefix="veca-speedup-"))
    rows: list[dict] = []

    # ------------------------------------------------------------ veca_small, random weights
    torch.manual_seed(0)
    model = latency_weights(create_model(a.model)).eval()
    cfg = model.cfg
    pre = Preprocess(mean=cfg.mean, std=cfg.std)
    raw, photo_names = skimage_calibration(a.calib_count)
    nncf = NncfRecipe(preset=nncf_preset_for(resolve_target(None))[0])  # what --target host builds here
    result["calibration"] = {"source": f"skimage.data photos {photo_names}: random crops/flips", "count": a.calib_count,
                             "forced_below_minimum": True, "note": "random weights: scales only, latency unaffected",
                             "ort_recipe": ort_recipe().to_dict(), "nncf_recipe": nncf.to_dict()}
    for size in a.sizes:
        cal = None
        x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        xt = torch.from_numpy(x)
        for c in a.cores:
            cm.log(f"== {a.model} {size} px C={c}")
            build: dict[str, float] = {}
            onnx_p = tmp / f"c{c}_{size}.onnx"
            t0 = time.perf_counter()
            export_onnx(model, onnx_p, height=size, width=size, cores=c)
            simplify_onnx(onnx_p, "onnxslim")
            build["onnx_fp32_s"] = round(time.perf_counter() - t0, 2)
            xml32, xml16 = tmp / f"fp32_c{c}_{size}.xml", tmp / f"fp16_c{c}_{size}.xml"
            t0 = time.perf_counter()
            export_openvino(onnx_p, xml32, precision="fp32")
            export_openvino(onnx_p, xml16, precision="fp16")
            build["openvino_fp32_fp16_s"] = round(time.perf_counter() - t0, 2)
            runners = {"ort_fp32": create_runner("onnxruntime", onnx_p, **ort_opts),
                       "ov_fp32": create_runner("openvino", xml32, **ov_opts),
                       "ov_fp16": create_runner("openvino", xml16, **ov_opts)}
            # the selector's execution variants of each artifact, where this CPU runs them, same settings
            for v in supported_variants("openvino", precision="fp32"):
                runners[f"ov_fp32_{v}"] = create_runner("openvino", xml32, **{**ov_opts, "inference_precision": v})
            for v in supported_variants("openvino", precision="fp16"):
                runners[f"ov_fp16_{v}"] = create_runner("openvino", xml16, **{**ov_opts, "inference_precision": v})
            for v in supported_variants("onnxruntime", precision="fp32"):
                runners[f"ort_fp32_{v}"] = create_runner("onnxruntime", onnx_p, **{**ort_opts, "inference_precision": v})
            if (c, size) in a.int8:
                if cal is None:
                    cal = load_calibration(raw, pre, (size, size), count=a.calib_count, force=True)
                q_onnx, q_xml = tmp / f"c{c}_{size}.int8.onnx", tmp / f"int8_c{c}_{size}.xml"
                t0 = time.perf_counter()
                quantize_onnx_int8(onnx_p, q_onnx, cal, ort_recipe(), cache_dir=str(tmp / "cache"))
                build["ort_int8_s"] = round(time.perf_counter() - t0, 2)
                q_u8 = tmp / f"c{c}_{size}.int8-u8s8.onnx"
                quantize_onnx_int8(onnx_p, q_u8, cal, ort_recipe(scheme="u8s8"), cache_dir=str(tmp / "cache"))
                t0 = time.perf_counter()
                quantize_openvino_int8(xml32, q_xml, cal, nncf, cache_dir=str(tmp / "cache"))
                build["openvino_int8_s"] = round(time.perf_counter() - t0, 2)
                runners["ort_int8"] = create_runner("onnxruntime", q_onnx, **ort_opts)
                runners["ort_int8_u8s8"] = create_runner("onnxruntime", q_u8, **ort_opts)
                runners["ov_int8"] = create_runner("openvino", q_xml, **ov_opts)
                for v in supported_variants("openvino", precision="int8"):  # INT8 products, float ops in v
                    runners[f"ov_int8_{v}"] = create_runner("openvino", q_xml, **{**ov_opts, "inference_precision": v})
                for v in supported_variants("onnxruntime", precision="int8"):
                    for name, path in (("ort_int8", q_onnx), ("ort_int8_u8s8", q_u8)):
                        runners[f"{name}_{v}"] = create_runner("onnxruntime", path,
                                                               **{**ort_opts, "inference_precision": v})
            for r in runners.values():
                r.activate()
            feed = {"images": x}
            calls = {"torch_fp32": lambda: model(xt, cores=c)}
            calls.update({k: (lambda r=r: r.infer(feed, check=False)) for k, r in sorted(runners.items())})
            cm.log(f"  built {build}")
            with torch.inference_mode():
                res, solo = timed(calls, a.rounds, iters=1 if size >= 384 else 3, block=a.block, alone=a.alone)
            rows.append(_row(a.model, size, c, forward_flops(cfg, size, size, c), res, runners, build, False, solo))
            cm.log("  " + ", ".join(f"{k}={v['median_ms']:.1f} ms (alone {solo[k]['median_ms']:.1f})"
                                    for k, v in res.items()))
            for flag in rows[-1]["flags"]:
                cm.log(f"  WARNING: {flag}")
            for r in runners.values():
                r.close()
            del runners, calls
            gc.collect()

    # ------------------------------------------------------------ through the product (CLI)
    products = []
    goal = a.product_goal or SPEED_TARGETS.get(isa_class(fp))
    for c, size in a.product:
        cm.log(f"== through the CLI: {a.model} C={c} {size} px (export, bench, select at eager / {goal})")
        xt = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32))

        def eager(xt=xt, c=c):
            with torch.inference_mode():
                return model(xt, cores=c)
        products.append(product_path(a.model, c, size, eager, goal, a.product_calib, tmp, a.rounds, a.block,
                                     a.alone))
        p = products[-1]
        cm.log(f"  select chose {p.get('served') or p.get('error')}" + (
            f": {p['ms']['selected']:.1f} ms vs eager {p['ms']['torch_fp32']:.1f} ms = {p['speedup_vs_torch']}x"
            if p.get("ms") else ""))
    result["product"] = products

    # ------------------------------------------------------------ the reference model bundle
    ref_export_s = None
    if not a.skip_reference:
        from veca_deploy.bundle.reader import Bundle
        from veca_deploy.model.checkpoint import load_reference_model

        bdir, ref_export_s = cm.reference_bundle(a.bundle, tmp / "reference", a.smoke)
        bundle = Bundle.open(bdir)
        ref = load_reference_model().eval()
        for (c, h, w) in sorted({(t.cores, t.height, t.width) for t in bundle.artifacts if not t.elastic}):
            cm.log(f"== reference veca_tiny {h} px C={c}")
            x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
            xt = torch.from_numpy(x)
            runners = {}
            for art in bundle.artifacts:
                if art.elastic or art.cores != c or (art.height, art.width) != (h, w):
                    continue
                key = ("ort_" if art.format == "onnx" else "ov_") + art.precision
                backend = "onnxruntime" if art.format == "onnx" else "openvino"
                runners[key] = create_runner(backend, bundle.path_of(art), **(ort_opts if art.format == "onnx"
                                                                              else ov_opts)).activate()
            feed = {"images": x}
            calls = {"torch_fp32": lambda: ref(xt, cores=c)}
            calls.update({k: (lambda r=r: r.infer(feed, check=False)) for k, r in sorted(runners.items())})
            with torch.inference_mode():
                res, solo = timed(calls, max(a.rounds, 5), iters=5 if a.smoke else 40, block=a.block, alone=a.alone)
            rows.append(_row("veca_tiny (reference)", h, c, forward_flops(ref.cfg, h, w, c), res, runners, {}, True,
                             solo))
            for flag in rows[-1]["flags"]:
                cm.log(f"  WARNING: {flag}")
            cm.log("  " + ", ".join(f"{k}={v['median_ms']:.3f} ms" for k, v in res.items()))
            for r in runners.values():
                r.close()
        result["reference_bundle"] = {"path": str(bdir), "export_s": ref_export_s and round(ref_export_s, 1)}
    cm.log("practical GEMM peaks (end) ...")
    peaks_end = peaks_now()
    # the better of the two measurements: load from other jobs lowers a peak, never raises it
    peak = {k: max(v["gflops"], peaks_end["peaks"].get(k, v)["gflops"]) for k, v in peaks_start["peaks"].items()}
    result["peaks"] = {"gflops": peak, "start": peaks_start, "end": peaks_end, "variant_peak": VARIANT_PEAK}
    for r in rows:
        r["gflops"] = {k: round(r["flops"] / v / 1e6, 1) for k, v in r["ms"].items()}
        r["pct_of_peak"] = {k: round(100 * g / peak[VARIANT_PEAK[k]], 1) for k, g in r["gflops"].items()
                            if peak.get(VARIANT_PEAK.get(k))}
    result["rows"] = rows
    tgt = next((r for r in rows if r["model"] == a.model and r["size"] == 512 and r["cores"] == 16), None)
    if tgt and tgt["speedup_vs_torch"].get("ov_int8"):
        result["target_ov_int8_c16_512"] = {"speedup_vs_torch": tgt["speedup_vs_torch"]["ov_int8"],
                                            "target": 3.0, "met": tgt["speedup_vs_torch"]["ov_int8"] >= 3.0}
    if tgt:
        klass = isa_class(fp)
        best = min((k for k in tgt["ms"] if k != "torch_fp32"), key=lambda k: tgt["ms"][k])
        goal = SPEED_TARGETS.get(klass)
        result["target_fastest_vs_eager_c16_512"] = {
            "isa_class": klass, "target": goal, "fastest": best, "fastest_ms": tgt["ms"][best],
            "eager_ms": tgt["ms"]["torch_fp32"], "eager_alone_ms": tgt["alone_ms"]["torch_fp32"],
            "speedup_vs_torch": tgt["speedup_vs_torch"][best],
            "speedup_vs_torch_alone": cm.ratio(tgt["alone_ms"]["torch_fp32"], tgt["ms"][best]),
            "baseline_valid": tgt["baseline_valid"],
            "met": bool(goal and tgt["baseline_valid"] and tgt["speedup_vs_torch"][best] >= goal)}
        # the target is about the path select chooses: the inner column that runs it, else the fastest
        served = next((p for p in products if p.get("cores") == 16 and p.get("size") == 512), None)
        chosen = inner_variant(((served or {}).get("decision") or {}).get("chosen"), (served or {}).get("int8_choice"),
                               tgt["ms"])
        path = chosen or best
        key = VARIANT_PEAK[path]
        result["target_fastest_pct_of_peak_c16_512"] = {
            "fastest": path, "which": "chosen by select" if chosen else "the fastest of the table",
            "peak": key, "peak_gflops": peak.get(key), "gflops": tgt["gflops"][path],
            "pct_of_peak": tgt["pct_of_peak"].get(path), "target_pct": 40.0,
            "met": bool(tgt["pct_of_peak"].get(path) and tgt["pct_of_peak"][path] >= 40.0)}
    cm.finish(result)

    # ------------------------------------------------------------ markdown + plot
    cols = [v for v in VARIANTS if any(v in r["ms"] for r in rows)]
    hdr = ["model", "size", "C"] + [f"{v} ms" for v in cols] + [f"{v} x" for v in cols if v != "torch_fp32"]
    tab = [[r["model"], r["size"], r["cores"]] + [r["ms"].get(v) for v in cols] +
           [r["speedup_vs_torch"].get(v) for v in cols if v != "torch_fp32"] for r in rows]
    md = (f"Machine: {result['machine']}. Batch 1; medians of interleaved rounds (each variant a block of "
          f"{a.block} timed calls after an untimed one, order alternating); `x` = PyTorch eager FP32 latency "
          "/ variant latency. OpenVINO runs with `INFERENCE_PRECISION_HINT=f32`; `ov_fp16` is the FP16-compressed IR "
          "(execution precision recorded in the JSON). INT8: ORT static QDQ (MatMul/Gemm/Conv, per-channel; `ort_int8` = "
          "S8S8, the TensorRT-portable default; `ort_int8_u8s8` = `--int8-scheme u8s8`) and NNCF (SmoothQuant off).\n\n" + cm.md_table(hdr, tab))
    md += ("\n**Alone vs interleaved** (each variant's median timed alone, back to back, and the ratio "
           f"interleaved / alone; beyond {STARVATION_LIMIT:.0%} it is flagged):\n\n"
           + cm.md_table(["model", "size", "C"] + [f"{v} alone ms" for v in cols] + [f"{v} int/alone" for v in cols],
                         [[r["model"], r["size"], r["cores"]] + [r["alone_ms"].get(v) for v in cols]
                          + [r["interleaved_over_alone"].get(v) for v in cols] for r in rows]))
    flags = [f"{r['model']} {r['size']} px C={r['cores']}: {f}" for r in rows for f in r["flags"]]
    md += ("\n" + ("**Flags:**\n\n" + "\n".join(f"- {f}" for f in flags) if flags else
                   "No variant's interleaved median differs from its alone median by more than "
                   f"{STARVATION_LIMIT:.0%}: the eager baseline is valid.") + "\n")
    md += (f"\n**GFLOP/s against the practical peak** of each variant's backend and precision, measured in this "
           f"run ({result['peaks']['start']['how']}; best of start and end):\n\n"
           + cm.md_table(["peak", "GFLOP/s"], [[k, v] for k, v in sorted(peak.items())]) + "\n"
           + cm.md_table(["model", "size", "C"] + [f"{v} GFLOP/s (% of {VARIANT_PEAK[v]})" for v in cols],
                         [[r["model"], r["size"], r["cores"]] + [f"{r['gflops'][v]} ({r['pct_of_peak'].get(v)} %)"
                                                                 if v in r["gflops"] else None for v in cols]
                          for r in rows]))
    tp = result.get("target_fastest_pct_of_peak_c16_512")
    if tp:
        md += (f"\nIssue-15 target (the chosen path reaches >= 40 % of its precision's practical peak, C=16, 512 px): "
               f"{tp['fastest']} ({tp.get('which', 'the fastest of the table')}) {tp['gflops']} GFLOP/s of "
               f"{tp['peak']} {tp['peak_gflops']} GFLOP/s = "
               f"{tp['pct_of_peak']} %: " + ("**met**" if tp["met"] else "**not met**") + ".\n")
    t15 = result.get("target_fastest_vs_eager_c16_512")
    if t15:
        head = (f"{t15['isa_class']}: fastest path >= {t15['target']}x eager" if t15["target"] else
                f"{t15['isa_class']}: the issue sets no speed target for this CPU class (it names AMX, AVX-512 "
                "VNNI and AVX2)")
        verdict = ("**met**" if t15["met"] else "**not met**") if t15["target"] else "no target"
        md += (f"\nIssue-15 target ({head}, C=16, 512 px): "
               f"{t15['fastest']} {t15['fastest_ms']:.1f} ms vs eager {t15['eager_ms']:.1f} ms interleaved "
               f"({t15['eager_alone_ms']:.1f} ms alone) = {t15['speedup_vs_torch']}x: "
               + verdict + ("" if t15["baseline_valid"] else " (eager baseline flagged)") + ".\n")
    for p in result.get("product", []):
        md += (f"\n**Through the product** ({a.model} C={p['cores']} {p['size']} px): "
               + "; ".join(f"`{' '.join(st['argv'][:2])}` {st['wall_s']} s, peak {st['peak_rss_gb']} GB"
                           for st in p["steps"].values()) + ". ")
        if p.get("ms"):
            how = f"({p['budget_note']})" if p.get("budget_note") else f"(eager / {p['goal']})"
            verdict = ("**met**" if p["met"] else "**not met**") if p.get("goal") else "no target for this CPU class"
            md += (f"`select --budget-ms {p['budget_ms']} --percentile 50 --margin 0` {how} chose "
                   f"**{p['served']}**; timed side by side: {p['ms']['selected']:.1f} ms vs eager "
                   f"{p['ms']['torch_fp32']:.1f} ms = **{p['speedup_vs_torch']}x** (alone: "
                   f"{p['alone_ms']['selected']:.1f} vs {p['alone_ms']['torch_fp32']:.1f} ms = "
                   f"{p['speedup_vs_torch_alone']}x): " + verdict + ".\n")
        else:
            f = p.get("fastest") or {}
            md += (f"{p.get('error')}; the fastest gated path was {f.get('key')} at {f.get('p50_ms')} ms "
                   f"(budget {p.get('budget_ms')} ms): " + ("**not met**" if p.get("goal") else "no target") + ".\n")
        md += "\n" + cm.md_table(["candidate", "p50 ms (bench)", "min cosine (gate)", "error"],
                                  [[q["key"], q["p50_ms"], q["gate"], (q["error"] or "")[:80]] for q in p["profile"]])
    plt = cm.plt()
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.9), 4.5))
    width = 0.8 / max(len(cols) - 1, 1)
    labels = [f"{r['model'].split(' ')[0]}\n{r['size']}px C={r['cores']}" for r in rows]
    for i, v in enumerate([v for v in cols if v != "torch_fp32"]):
        ax.bar(np.arange(len(rows)) + i * width, [r["speedup_vs_torch"].get(v) or 0 for r in rows], width, label=v)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(3.0, color="r", lw=0.8, ls="--", label="target 3x (OV INT8, C=16, 512 px)")
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, labels, fontsize=7)
    ax.set(ylabel="speedup over PyTorch eager FP32", title=f"deployment speedup - {result['machine']}")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    cm.publish(a.out, NAME, result, md, fig)
    return result


def product_path(model_name: str, cores: int, size: int, eager, goal: float | None, calib: int, tmp: Path,
                 rounds: int, block: int, alone: int) -> dict:
    """The issue-15 target as a user meets it: ``veca-deploy export`` (fp32 + int8 for the host's
    ``--target``, every gate), ``bench``, ``select`` with the median of eager / ``goal`` as the budget
    (margin 0: the median of the chosen path must fit), then what ``Runtime.open`` serves for that
    decision timed side by side with ``eager`` (interleaved and alone, as the rest of this file)."""
    import json

    import veca_deploy

    out = tmp / f"product_c{cores}_{size}"
    steps: dict[str, dict] = {}

    def cli(name: str, argv: list[str]) -> dict:
        r = cm.run_cli(argv)
        steps[name] = {k: r[k] for k in ("argv", "rc", "wall_s", "peak_rss_gb", "error")}
        cm.log(f"  veca-deploy {name}: rc {r['rc']}, {r['wall_s']} s, peak {r['peak_rss_gb']} GB"
               + (f" - {r['error']}" if r["rc"] else ""))
        return r

    res: dict = {"cores": cores, "size": size, "goal": goal, "steps": steps}
    r = cli("export", ["export", model_name, "--random-weights", "--cores", str(cores), "--image-size", str(size),
                       "--formats", "onnx,openvino", "--precision", "fp32,int8", "--calib", "photos",
                       "--calib-size", str(calib), "--allow-small-calib", "--out", str(out), "--force", "-q"])
    if r["rc"]:
        return {**res, "error": f"export failed: {r['error']}"}
    choice = [line for line in r["stdout"].splitlines() + r["stderr"].splitlines() if line.startswith("INT8 for target")]
    res["int8_choice"] = choice[0] if choice else None
    r = cli("bench", ["bench", str(out), "--count", "30", "--warmup", "5", "--json", "--quiet"])
    if r["rc"]:
        return {**res, "error": f"bench failed: {r['error']}"}
    entries = json.loads(r["stdout"])["entries"]
    res["profile"] = [{"key": f"{e['artifact']}@c{e['cores']}" + (f"+{e['execution']}" if e.get("execution") else ""),
                       "p50_ms": (e.get("timing") or {}).get("percentiles_ms", {}).get("50"), "error": e.get("error"),
                       "gate": (e.get("gate") or {}).get("min_cosine")} for e in entries]
    eager_ms = cm.interleaved({"eager": eager}, rounds=alone, warmup=2)["eager"]
    res["eager_alone_before_select_ms"] = round(cm.med(eager_ms), 3)
    fastest = min((p for p in res["profile"] if p["p50_ms"]), key=lambda p: p["p50_ms"], default=None)
    if fastest is None:
        return {**res, "chosen": None, "fastest": None, "error": "bench timed no candidate"}

    def ask(budget: float) -> dict:
        budget = math.ceil(budget * 1000) / 1000  # rounded up: the fastest p50 must still fit
        res["budget_ms"] = budget
        return cli("select", ["select", str(out), "--budget-ms", f"{budget:.3f}", "--percentile", "50",
                              "--margin", "0", "--no-measure", "--json"])

    r = ask(cm.med(eager_ms) / goal) if goal else None
    if r is None or r["rc"] == 8:
        # no target for this CPU class, or no path fit eager / goal in bench's numbers: bench and the
        # eager reference come from different minutes of a shared host, and the question is the
        # speed of the path select serves, measured side by side below, so ask select for the path
        # at the budget the fastest gated candidate fits (its p50 + 0.1 %)
        res["budget_note"] = ((f"no path fit eager / {goal:g} = {res['budget_ms']:.1f} ms in bench's numbers"
                               if goal else "no issue-15 target for this CPU class")
                              + f" (fastest {fastest['key']} {fastest['p50_ms']:.1f} ms); asked at its own p50")
        r = ask(fastest["p50_ms"] * 1.001)
    if r["rc"]:
        return {**res, "chosen": None, "fastest": fastest, "error": f"select: {r['error']}"}
    decision = json.loads(r["stdout"])
    res["decision"] = {k: decision.get(k) for k in ("chosen", "decision", "limit_ms", "percentile")}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    with veca_deploy.Runtime.open(out, res["budget_ms"], percentile=50, margin=0, measure=False) as rt:
        res["served"] = str(rt.tier)
        calls = {"torch_fp32": eager, "selected": lambda: rt.predict(x)}
        t, solo = timed(calls, rounds, iters=1, block=block, alone=alone)
    res.update(ms={k: v["median_ms"] for k, v in t.items()}, alone_ms={k: v["median_ms"] for k, v in solo.items()})
    res["speedup_vs_torch"] = cm.ratio(res["ms"]["torch_fp32"], res["ms"]["selected"])
    res["speedup_vs_torch_alone"] = cm.ratio(res["alone_ms"]["torch_fp32"], res["alone_ms"]["selected"])
    res["met"] = bool(goal and res["speedup_vs_torch"] >= goal)
    return res


def _row(model, size, c, flops, res, runners, build, reference, solo=None) -> dict:
    ms = {k: v["median_ms"] for k, v in res.items()}
    solo = solo or {}
    alone = {k: v["median_ms"] for k, v in solo.items()}
    over = {k: cm.ratio(ms[k], alone.get(k)) for k in ms}
    flags = [f"{k}: interleaved {ms[k]:.4g} ms vs alone {alone[k]:.4g} ms ({over[k]}x)"
             + (" - eager baseline not valid" if k == "torch_fp32" else "")
             for k in ms if over.get(k) is not None and abs(over[k] - 1) > STARVATION_LIMIT]
    return {"model": model, "size": size, "cores": c, "flops": flops, "ms": ms, "timings": res,
            "speedup_vs_torch": {k: cm.ratio(ms["torch_fp32"], v) for k, v in ms.items() if k != "torch_fp32"},
            "alone_ms": alone, "alone_timings": solo, "interleaved_over_alone": over, "flags": flags,
            "baseline_valid": not any(f.startswith("torch_fp32:") for f in flags),
            "runners": {k: r.describe() for k, r in runners.items()}, "build": build, "reference": reference}


if __name__ == "__main__":
    main()
