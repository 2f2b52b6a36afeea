"""What does preprocessing cost, and does it match training (issue 16)? A raw uint8 RGB photo
(HxWx3) becomes the model's float32 NCHW input: resize to the tier's size, ``x / 255``, mean/std
normalisation. Batch 1, square outputs, every path timed interleaved (A B C, C B A, ...) per
(input size, output size), and its error against the reference that training pipelines compute:
``torch.nn.functional.interpolate(float image, size, mode="bilinear", antialias=True,
align_corners=False)``, in 0-255 pixel units before normalisation (each path's output is
un-normalised for the comparison). On a large downscale the non-antialiased paths show aliasing.

Paths (a row is skipped, with the reason in the JSON, where its library is not installed):

* ``numpy-bilinear``: ``veca_deploy.resize.resize_bilinear`` (2 taps; what old bundles use);
* ``numpy-antialias``: ``resize_antialias(..., use_pillow=False)`` (separable triangle-filter matmuls);
* ``pillow-antialias``: ``resize_antialias(..., use_pillow=True)`` (Pillow BILINEAR on uint8);
* ``opencv-area`` / ``opencv-linear``: ``cv2.resize`` INTER_AREA / INTER_LINEAR on uint8 (only when
  cv2 imports; the project does not depend on it);
* ``onnx-resize-in-graph``: an opset-18 ONNX graph, uint8 NHWC ``[1,H,W,3]`` (H, W dynamic) -> Cast
  -> Transpose -> Resize(linear, antialias=1, half_pixel) -> Mul + Add, run by onnxruntime, so an
  application hands camera frames straight in; ``onnx-resize-in-graph-excl`` is the same graph with
  ``exclude_outside=1`` (the ONNX default is 0, which treats the filter taps beyond the border
  differently from Pillow / torch);
* ``openvino-ppp-pillow`` / ``openvino-ppp-linear``: OpenVINO ``PrePostProcessor`` on an identity
  model (float32 ``[1,3,h,w]``): tensor u8 NHWC with a dynamic spatial shape, convert f32, resize
  RESIZE_BILINEAR_PILLOW / RESIZE_LINEAR, mean, scale; compiled for CPU with ``--threads`` threads
  and INFERENCE_PRECISION_HINT f32; ``openvino-ppp-pillow-default-hint`` leaves the precision hint at
  the device default (bf16 on CPUs with AMX / AVX512-BF16, which rounds the pixels);
* ``preprocess``: ``veca_deploy.preprocess.Preprocess(antialias=True, resize_mode="stretch")(img,
  size)``, the whole call as ``Runtime.predict`` runs it.

    python benchmarks/preprocess_cost.py
    python benchmarks/preprocess_cost.py --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "preprocess_cost"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PHOTOS = Path("/usr/share/backgrounds/mate")
#: input size (W x H, as photos are named) -> the photo a centre crop of it is taken from
SOURCES = {(4000, 3000): PHOTOS / "abstract" / "Elephants_5640x3172.jpg",
           (1920, 1080): PHOTOS / "nature" / "Garden.jpg"}
DEFAULT_SOURCE = PHOTOS / "abstract" / "Elephants_5640x3172.jpg"
PATHS = ("numpy-bilinear", "numpy-antialias", "pillow-antialias", "opencv-area", "opencv-linear",
         "onnx-resize-in-graph", "onnx-resize-in-graph-excl", "openvino-ppp-pillow", "openvino-ppp-linear",
         "openvino-ppp-pillow-default-hint", "preprocess")
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "neon")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", default="4000x3000,1920x1080", help="input sizes, WxH, comma separated")
    ap.add_argument("--outputs", default="28,224,512", help="square output sizes, comma separated")
    ap.add_argument("--paths", default=",".join(PATHS), help="paths to time (default: all)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (timed calls per path)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per path before the rounds")
    ap.add_argument("--threads", type=int, default=2, help="threads for onnxruntime, OpenVINO, OpenCV, torch")
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="640x480 -> 28, 5 rounds, 1 warm-up call")
    a = ap.parse_args(argv)
    if a.smoke:
        a.inputs, a.outputs, a.rounds, a.warmup = "640x480", "28", 5, 1
    a.inputs = [tuple(int(v) for v in s.lower().split("x")) for s in a.inputs.split(",") if s]
    a.outputs = [int(s) for s in a.outputs.split(",") if s]
    a.paths = [p for p in a.paths.split(",") if p]
    unknown = sorted(set(a.paths) - set(PATHS))
    if unknown:
        ap.error(f"unknown paths {unknown}; known: {', '.join(PATHS)}")
    return a


# ------------------------------------------------------------------------------ inputs
def load_photo(w: int, h: int) -> tuple[np.ndarray, str]:
    """A ``h x w x 3`` uint8 photo: a centre crop at native resolution of the photo for that size
    (resized to cover it first when the photo is smaller); a deterministic synthetic image with
    fine detail where the photos are not installed."""
    src = SOURCES.get((w, h), DEFAULT_SOURCE)
    try:
        from PIL import Image

        im = Image.open(src).convert("RGB")
    except (ImportError, OSError):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        zone = 127.5 + 127.5 * np.cos(((xx - w / 2) ** 2 + (yy - h / 2) ** 2) * (np.pi / max(w, h)))
        noise = np.random.default_rng(0).integers(0, 64, (h, w, 3))
        img = np.clip(zone[..., None] * 0.75 + noise, 0, 255).astype(np.uint8)
        return img, "synthetic (zone plate + noise)"
    note = ""
    if im.width < w or im.height < h:
        s = max(w / im.width, h / im.height)
        im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))), Image.BILINEAR)
        note = f" (resized to {im.width}x{im.height} first)"
    left, top = (im.width - w) // 2, (im.height - h) // 2
    img = np.array(im.crop((left, top, left + w, top + h)), dtype=np.uint8)  # writable, contiguous
    return img, f"{src} centre crop{note}"


def reference(img: np.ndarray, size: int, threads: int) -> tuple[np.ndarray, str]:
    """``[3, size, size]`` float: the antialiased bilinear resize training pipelines compute."""
    try:
        import torch
    except ImportError:  # same filter, float64 numpy (only where torch is missing)
        from veca_deploy.resize import antialias_weights

        wy = antialias_weights(img.shape[0], size).astype(np.float64)
        wx = antialias_weights(img.shape[1], size).astype(np.float64)
        return np.stack([wy @ img[..., c].astype(np.float64) @ wx.T for c in range(3)]), "numpy float64 triangle filter"
    torch.set_num_threads(threads)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        r = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return r[0].double().numpy(), (f"torch {torch.__version__} interpolate(bilinear, antialias=True, "
                                   "align_corners=False)")


def _normalize(x: np.ndarray) -> np.ndarray:
    """HxWx3 float in 0..255 -> [1, 3, H, W] float32, as Preprocess does."""
    mean = np.asarray(MEAN, np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(STD, np.float32))[:, None, None]
    return ((x.transpose(2, 0, 1) * np.float32(1 / 255) - mean) * inv_std)[None]


def unnormalize(y: np.ndarray) -> np.ndarray:
    """[1, 3, h, w] model input -> [3, h, w] float64 in 0..255 pixel units."""
    y = np.asarray(y, np.float64)[0]
    return (y * np.asarray(STD)[:, None, None] + np.asarray(MEAN)[:, None, None]) * 255.0


# ------------------------------------------------------------------------------ paths
def onnx_graph(size: int, exclude_outside: bool = False):
    """uint8 NHWC [1, H, W, 3] (H, W dynamic) -> float32 NCHW [1, 3, size, size], normalised."""
    import onnx
    from onnx import TensorProto, helper

    resize_attrs = {"mode": "linear", "antialias": 1, "coordinate_transformation_mode": "half_pixel"}
    if exclude_outside:
        resize_attrs["exclude_outside"] = 1
    nodes = [helper.make_node("Cast", ["raw"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["xf"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Resize", ["xt", "", "", "sizes"], ["xr"], **resize_attrs),
             helper.make_node("Mul", ["xr", "mul"], ["xm"]),
             helper.make_node("Add", ["xm", "add"], ["images"])]
    std, mean = np.asarray(STD), np.asarray(MEAN)
    inits = [helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, size, size]),
             helper.make_tensor("mul", TensorProto.FLOAT, [1, 3, 1, 1], (1.0 / (255.0 * std)).tolist()),
             helper.make_tensor("add", TensorProto.FLOAT, [1, 3, 1, 1], (-mean / std).tolist())]
    graph = helper.make_graph(nodes, "preprocess",
                              [helper.make_tensor_value_info("raw", TensorProto.UINT8, [1, "H", "W", 3])],
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name=NAME)
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def ort_path(size: int, threads: int, exclude_outside: bool) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # interleaved: no spinning workers
    sess = ort.InferenceSession(onnx_graph(size, exclude_outside).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return (lambda img: sess.run(["images"], {"raw": img[None]})[0]), {
        "onnxruntime": ort.__version__, "opset": 18, "exclude_outside": int(exclude_outside), "threads": threads}


def openvino_path(size: int, threads: int, algorithm: str, hint: str | None) -> tuple[Callable, dict]:
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.preprocess import PrePostProcessor, ResizeAlgorithm

    param = ops.parameter([1, 3, size, size], np.float32, name="images")
    model = ov.Model([ops.result(param)], [param], "identity")
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_spatial_dynamic_shape()
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).resize(getattr(ResizeAlgorithm, algorithm)) \
        .mean([255.0 * m for m in MEAN]).scale([255.0 * s for s in STD])
    cfg: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if hint:
        cfg["INFERENCE_PRECISION_HINT"] = hint
    compiled = ov.Core().compile_model(ppp.build(), "CPU", cfg)
    req = compiled.create_infer_request()

    def run(img: np.ndarray) -> np.ndarray:
        req.infer({0: img[None]}, share_inputs=True)
        return req.get_output_tensor(0).data

    return run, {"openvino": ov.get_version(), "algorithm": algorithm, "threads": threads,
                 "precision_hint_requested": hint or "device default",
                 "execution_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()}


def build_path(name: str, size: int, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """``(fn(img) -> [1, 3, size, size] float32 normalised, settings)``; ImportError when the
    path's library is not installed."""
    from veca_deploy.resize import resize_antialias, resize_bilinear

    if name == "numpy-bilinear":
        return (lambda img: _normalize(resize_bilinear(img, size, size))), {}
    if name == "numpy-antialias":
        return (lambda img: _normalize(resize_antialias(img, size, size, use_pillow=False))), {}
    if name == "pillow-antialias":
        import PIL

        return (lambda img: _normalize(resize_antialias(img, size, size, use_pillow=True))), {"pillow": PIL.__version__}
    if name.startswith("opencv-"):
        import cv2

        cv2.setNumThreads(threads)
        interp = cv2.INTER_AREA if name == "opencv-area" else cv2.INTER_LINEAR
        return (lambda img: _normalize(cv2.resize(img, (size, size), interpolation=interp).astype(np.float32))), {
            "opencv": cv2.__version__, "threads": threads, "on": "uint8"}
    if name.startswith("onnx-"):
        return ort_path(size, threads, exclude_outside=name.endswith("-excl"))
    if name.startswith("openvino-"):
        algorithm = "RESIZE_LINEAR" if name == "openvino-ppp-linear" else "RESIZE_BILINEAR_PILLOW"
        return openvino_path(size, threads, algorithm, None if name.endswith("default-hint") else "f32")
    if name == "preprocess":
        from veca_deploy.preprocess import Preprocess

        pre = Preprocess(mean=MEAN, std=STD, antialias=True, resize_mode="stretch")
        return (lambda img: pre(img, (size, size))), {"preprocess": pre.to_dict()}
    raise ValueError(name)


def errors(y: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = np.abs(unnormalize(y) - ref)
    inner = d[:, 1:-1, 1:-1] if min(d.shape[1:]) > 2 else d
    return {"mean_abs_err": float(d.mean()), "max_abs_err": float(d.max()),
            "max_abs_err_interior": float(inner.max())}  # interior: without the outermost output pixel


# ------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    a = parse(argv)
    from veca_deploy.runtimes.timing import peak_rss_mb, percentile_of, rss_mb

    fp = cm.fingerprint(a.threads)
    isa = [f for f in ISA_FLAGS if f in ((fp.get("cpu") or {}).get("isa") or [])]
    result = cm.header(fp, benchmark=NAME, isa_flags=isa, batch=1, rounds=a.rounds, warmup=a.warmup,
                       threads=a.threads, mean=list(MEAN), std=list(STD), rss_mb_at_start=round(rss_mb() or 0, 1))
    cm.log(f"machine: {result['machine']}; ISA: {' '.join(isa) or '-'}")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    inputs_info = []
    ref_name = None
    for (w, h) in a.inputs:
        img, source = load_photo(w, h)
        inputs_info.append({"size": f"{w}x{h}", "shape_hwc": list(img.shape), "source": source})
        for size in a.outputs:
            ref, ref_name = reference(img, size, a.threads)
            fns: dict[str, Callable[[], np.ndarray]] = {}
            for name in a.paths:
                if name in skipped:
                    continue
                try:
                    fn, settings = build_path(name, size, a.threads)
                except ImportError as e:
                    skipped[name] = f"not installed: {e}"
                    cm.log(f"  skip {name}: {skipped[name]}")
                    continue
                y = np.array(fn(img))  # first call: checked and compared before any timing
                if y.shape != (1, 3, size, size) or y.dtype != np.float32 or not np.isfinite(y).all():
                    raise RuntimeError(f"{name}: got {y.dtype} {y.shape}, expected finite float32 "
                                       f"[1, 3, {size}, {size}]")
                rows.append({"input": f"{w}x{h}", "output": size, "path": name,
                             "downscale": round(min(h, w) / size, 2), **errors(y, ref), "settings": settings})
                fns[name] = (lambda f: (lambda: f(img)))(fn)
            samples = cm.interleaved(fns, rounds=a.rounds, warmup=a.warmup)
            for r in rows:
                if r["input"] == f"{w}x{h}" and r["output"] == size and r["path"] in samples:
                    s = samples[r["path"]]
                    r.update(median_ms=round(cm.med(s), 4), p90_ms=round(percentile_of(s, 90), 4),
                             timing=cm.summary(s))
            cm.log(f"{w}x{h} -> {size}: " + ", ".join(
                f"{k} {cm.med(v):.2f} ms" for k, v in samples.items()))
        inputs_info[-1]["peak_rss_mb_after"] = round(peak_rss_mb() or 0, 1)
    result.update(inputs=inputs_info, outputs=a.outputs, paths_requested=a.paths,
                  paths_available=[p for p in a.paths if p not in skipped], skipped=skipped, reference=ref_name,
                  rows=rows, peak_rss_mb=round(peak_rss_mb() or 0, 1), findings=findings(rows))
    cm.finish(result)
    md = markdown(result)
    fig = None if a.no_plot else plot(result)
    cm.publish(a.out, NAME, result, md, fig)
    return result


def _worst(rows: list[dict], path: str, key: str) -> float | None:
    vals = [r[key] for r in rows if r["path"] == path]
    return max(vals) if vals else None


def findings(rows: list[dict]) -> dict[str, str]:
    """What the errors say about ORT's antialias and OpenVINO's Pillow resize, in words."""
    out = {}
    aa, excl, bil = (_worst(rows, p, "max_abs_err") for p in
                     ("onnx-resize-in-graph", "onnx-resize-in-graph-excl", "numpy-bilinear"))
    if aa is not None:
        inner = _worst(rows, "onnx-resize-in-graph", "max_abs_err_interior")
        out["onnxruntime_antialias"] = (
            f"ORT's CPU Resize honours antialias=1: inside the border its output matches the reference to "
            f"{inner:.2g} px (max; plain bilinear is off by up to {bil:.3g} px here), but with the ONNX default "
            f"exclude_outside=0 the outermost output pixels differ by up to {aa:.3g} px"
            + (f"; with exclude_outside=1 the whole image matches (max {excl:.2g} px)." if excl is not None else "."))
    pil, lin, dflt = (_worst(rows, p, "max_abs_err") for p in
                      ("openvino-ppp-pillow", "openvino-ppp-linear", "openvino-ppp-pillow-default-hint"))
    if pil is not None or dflt is not None:
        txt = []
        if pil is not None:
            txt.append(f"RESIZE_BILINEAR_PILLOW after convert f32, INFERENCE_PRECISION_HINT f32: max {pil:.2g} px "
                       f"from the reference (it is the antialiased filter)")
        if lin is not None:
            txt.append(f"RESIZE_LINEAR: max {lin:.3g} px (no antialias: aliases like numpy-bilinear)")
        if dflt is not None:
            prec = next(r["settings"]["execution_precision"] for r in rows
                        if r["path"] == "openvino-ppp-pillow-default-hint")
            mean = _worst(rows, "openvino-ppp-pillow-default-hint", "mean_abs_err")
            txt.append(f"with the device-default precision hint ({prec} here) the same graph is off by up to "
                       f"{dflt:.2g} px (mean up to {mean:.2g})" + (" - bf16 keeps 8 significant bits, so pixels "
                                                                    "round to ~1 level" if "bf16" in prec else ""))
        out["openvino_pillow"] = "OpenVINO PPP: " + "; ".join(txt) + "."
    return out


def markdown(result: dict) -> str:
    rows = result["rows"]
    isa = " ".join(result["isa_flags"]) or "-"
    lines = [f"Machine: {result['machine']} (ISA: {isa}). Raw uint8 RGB photo -> float32 NCHW model input (resize, "
             f"/255, mean/std), batch 1; median and p90 of {result['rounds']} interleaved calls per path after "
             f"{result['warmup']} warm-up call(s) (+ the call checked for error); ORT / OpenVINO / OpenCV / "
             f"torch at {result['threads']} threads. "
             f"Error: |path - reference| in 0-255 pixel units before normalisation; reference = "
             f"{result['reference']}. Peak RSS of the process: {result['peak_rss_mb']} MiB.", ""]
    for inp in result["inputs"]:
        lines.append(f"- input {inp['size']}: {inp['source']}")
    lines.append("")
    lines.append(cm.md_table(
        ["input", "output", "path", "median ms", "p90 ms", "x preprocess", "mean err px", "max err px"],
        [[r["input"], r["output"], r["path"], r["median_ms"], r["p90_ms"],
          cm.ratio(r["median_ms"], next((q["median_ms"] for q in rows if q["path"] == "preprocess"
                                          and q["input"] == r["input"] and q["output"] == r["output"]), None)),
          r["mean_abs_err"], r["max_abs_err"]] for r in rows]))
    if result["skipped"]:
        lines.append("Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in result["skipped"].items()) + "\n")
    for v in result["findings"].values():
        lines.append(f"- {v}")
    lines.append("\n`preprocess` is `Preprocess(antialias=True, resize_mode=\"stretch\")`, what `Runtime.predict` "
                 "runs (Pillow when installed); `x preprocess` = median / preprocess's median. The uint8 paths "
                 "(Pillow, OpenCV) round the resized pixels to integers (<= 0.5 px).\n")
    return "\n".join(lines)


def plot(result: dict):
    try:
        plt = cm.plt()
    except ImportError:
        return None
    rows = result["rows"]
    inputs = [i["size"] for i in result["inputs"]]
    paths = [p for p in result["paths_available"] if any(r["path"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(inputs), figsize=(6 * len(inputs), 4.5), squeeze=False)
    width = 0.8 / max(len(paths), 1)
    for ax, inp in zip(axes[0], inputs):
        for j, p in enumerate(paths):
            vals = [next((r["median_ms"] for r in rows if r["input"] == inp and r["output"] == o and r["path"] == p),
                         0) for o in result["outputs"]]
            ax.bar([i + j * width for i in range(len(result["outputs"]))], vals, width, label=p,
                   color=plt.get_cmap("tab20")(j % 20))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(result["outputs"]))], [str(o) for o in result["outputs"]])
        ax.set_yscale("log")
        ax.set(xlabel="output size (square)", ylabel="ms per image (median)", title=f"input {inp}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(paths), 6), fontsize=7, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(f"Preprocessing cost - {result['machine']}", fontsize=9)
    return fig


if __name__ == "__main__":
    main()
