"""ONNX graphs: INT8 QDQ via ``onnxruntime.quantization`` and FP16 via ORT's float16 converter.

Works from the bundle's FP32 ONNX only (no torch). INT8: ``quant_pre_process`` then
``quantize_static`` with per-channel symmetric weights; only the ops in the recipe (MatMul,
Gemm, Conv) are quantized, LayerNorm / Softmax / activations / residual Adds stay float.

Memory (profiled in onnxruntime 1.32's ``calibrate.py``, veca_small C=16 at 128 px, random
uint8 images, batches of 16): ``MinMaxCalibrater.collect_data`` appends every batch's outputs
to ``intermediate_outputs`` until the end, but after ReduceMin/ReduceMax those are scalars
(0.04 MB for 256 images; the model's own outputs are dropped), so MinMax memory does not grow
with the data (peak RSS 1.95 GB at 64 images, 1.99 GB at 256: the quantizer itself).
``HistogramCalibrater`` (percentile, entropy) keeps the *full* activation tensors of every
batch before building histograms: 1.17 GB held for 32 images, 4.66 GB for 128 (peak RSS 2.0
-> 5.8 GB), i.e. ~36 MB per image at 128 px, ~16x that at 512 px. ``CalibStridedMinMax`` (a
stride of 1 batch) makes ORT compute and merge ranges (or histograms) after every batch:
583 MB held and 1.41 GB peak RSS for both 32 and 128 images. ``CalibMaxIntermediateOutputs``
is not used: in 1.32 it clears the collected outputs without computing them first (only the
last chunk counts). Histogram methods also get batches sized from the resolution.

The calibration session's execution order (measured: onnxruntime 1.32, veca_small C=16 at
1024 px, batch 1, AMD EPYC Zen 3): the augmented graph hangs a ReduceMin/ReduceMax pair on each
of 359 activations, and ORT's default topological order runs many of those reductions late, so
the activations they read stay alive: 4.55 GB peak RSS and 8 s per image, against 0.37 GB and
4.9 s for the bare graph. ``ExecutionOrder.PRIORITY_BASED`` runs each reduction as soon as its
input exists: 0.83 GB and 4.4-5.8 s per image, the same ranges (``calibration_session_order``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..bundle.io import sha256_file
from ..convert.onnx_graph import read_metadata, set_metadata, update_metadata
from ..errors import first_line, QuantizationError
from ..runtimes.base import CORE_SELECT, IMAGES, core_select
from . import cache
from .data import CalibrationSet
from .keep_float import onnx_float_nodes
from .recipe import Fp16Recipe, OrtRecipe

#: Calibration batch; ORT computes ranges after every ``STRIDE_BATCHES`` batches
#: (``CalibStridedMinMax``), so what it holds is bounded by one batch, not by the data.
BATCH = 16
STRIDE_BATCHES = 1
#: Under ORT's default execution order the augmented calibration graph kept many calibrated
#: activations of a batch alive until their ReduceMin/ReduceMax ran (measured: veca_small C=16
#: at 1024 px, batch 16: 11 GB of ORT arena, then an out-of-memory failure); priority-based order
#: (``calibration_session_order``) removes most of that, and what is left still scales with the
#: batch, so MinMax batches are sized from the resolution too: at most this many pixels (16
#: images at 224 px, 3 at 512 px, 1 from 1024 px).
MINMAX_BATCH_PIXELS = BATCH * 224 * 224
#: Histogram methods (percentile, entropy) also keep the activations for their histograms: at
#: most this many pixels per batch (16 images at 128x128, 1 at 512x512).
HISTOGRAM_BATCH_PIXELS = BATCH * 128 * 128


def calibration_batch(method: str, size: tuple[int, int]) -> int:
    """Images per calibration batch, from the resolution (see MINMAX_BATCH_PIXELS); MinMax ranges
    do not depend on the batching (a min of mins), histogram ones slightly (keyed apart)."""
    pixels = MINMAX_BATCH_PIXELS if method == "minmax" else HISTOGRAM_BATCH_PIXELS
    return max(1, min(BATCH, pixels // max(1, size[0] * size[1])))


@contextlib.contextmanager
def calibration_session_order():
    """Run ORT's calibration session in priority-based order (see the module note): the library
    builds the augmented graph and computes the ranges, only its session's schedule changes.
    Releases without ``CalibraterBase.create_inference_session`` keep their own session."""
    import onnxruntime
    from onnxruntime.quantization import calibrate

    base = getattr(calibrate, "CalibraterBase", None)
    original = getattr(base, "create_inference_session", None)
    order = getattr(onnxruntime, "ExecutionOrder", None)
    if original is None or order is None:
        yield False
        return

    def create_inference_session(self):
        so = onnxruntime.SessionOptions()
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ORT does
        so.execution_order = order.PRIORITY_BASED
        self.infer_session = onnxruntime.InferenceSession(self.augmented_model_path, sess_options=so,
                                                          providers=self.execution_providers)

    base.create_inference_session = create_inference_session
    try:
        yield True
    finally:
        base.create_inference_session = original


def calibration_cache_supported() -> bool:
    """``quantize_static(calibration_cache_path=)`` exists from onnxruntime 1.27; older releases
    (the newest on Python 3.10 is 1.23) calibrate every time."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _onnx():
    try:
        import onnx
    except ImportError:
        raise QuantizationError("quantizing ONNX needs the onnx package: pip install onnx") from None
    return onnx


def ranges_file(src: Path, cal: CalibrationSet, recipe: OrtRecipe, tiers: list[int] | None = None,
                cache_dir: str | None = None) -> tuple[str, Path]:
    """The cache key and the JSON file of ORT's activation ranges for (data, graph, tiers, recipe)."""
    from onnxruntime import __version__ as ort_version

    batch = calibration_batch(recipe.method, cal.size)
    # strided MinMax ranges equal the one-shot ones (a min of mins), so MinMax keys are unchanged;
    # strided histograms differ slightly (bin edges set by the first batch): their own keys
    streamed = {} if recipe.method == "minmax" else {"calib_stride_batches": STRIDE_BATCHES, "calib_batch": batch}
    key = cache.entry_key(cal.digest, sha256_file(Path(src).resolve()), ",".join(map(str, tiers or [])) or "static",
                          {**recipe.to_dict(), "ort": ort_version, **streamed})
    return key, ranges_path(key, cache_dir)


def ranges_path(key: str, cache_dir: str | None = None) -> Path:
    """Where the ranges of cache ``key`` (a quantize record's ``cache_key``) are kept."""
    return cache.cache_root(cache_dir) / "calibration" / "onnxruntime" / f"{key}.json"


def quantize_onnx_int8(src: Path, dst: Path, cal: CalibrationSet, recipe: OrtRecipe, *,
                       tiers: list[int] | None = None, cache_dir: str | None = None,
                       ranges: Path | None = None, progress: Callable[[int, int], None] | None = None
                       ) -> dict[str, Any]:
    """Write an INT8 QDQ graph of ``src`` to ``dst``. ``tiers`` (elastic graphs) cycles the core
    selector over calibration batches so the ranges cover every tier. ``ranges``: use these
    activation ranges (ORT's calibration-cache JSON, e.g. of the same tier's graph at a lower
    resolution, whose tensor names match) instead of calibrating; ``cal`` then only names the
    data they came from. ``progress(done, total)`` after every calibration batch. Returns what happened."""
    onnx = _onnx()
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    # absolute before the chdir below: relative paths (e.g. `export --out bundles/x`) would
    # otherwise resolve inside the temporary working directory
    src, dst = Path(src).resolve(), Path(dst).resolve()
    meta = read_metadata(src)
    t0 = time.perf_counter()
    batch = calibration_batch(recipe.method, cal.size)
    cacheable = calibration_cache_supported()
    given = ranges is not None
    if given:
        if not cacheable:
            raise QuantizationError(f"reusing activation ranges needs onnxruntime >= 1.27 (calibration_cache_path); "
                                    f"this is {ort_version}")
        key, hit = f"ranges:{Path(ranges).stem}", True
    else:
        key, ranges = ranges_file(src, cal, recipe, tiers, cache_dir)
        hit = cacheable and ranges.is_file()
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[recipe.method]
    extra = {"ActivationSymmetric": recipe.symmetric, "WeightSymmetric": True,
             "QuantizeBias": not recipe.symmetric, "CalibPercentile": recipe.percentile,
             "CalibStridedMinMax": STRIDE_BATCHES}
    extras = [{CORE_SELECT: core_select(t)} for t in tiers] if tiers else None
    reader = cal.reader(batch_size=batch, extra=extras, input_name=IMAGES,  # preprocesses batch by batch
                        progress=progress)
    pre_note = "quant_pre_process"
    with tempfile.TemporaryDirectory(prefix="veca-q-") as tmp:
        if given:  # a private copy: ORT rewrites a cache file it rejects
            shutil.copyfile(ranges, Path(tmp) / "ranges.json")
            ranges = Path(tmp) / "ranges.json"
        cache_kw = {"calibration_cache_path": str(ranges)} if cacheable else {}
        pre = Path(tmp) / "pre.onnx"
        root_level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs warnings per tensor
        cwd = os.getcwd()
        try:
            os.chdir(tmp)  # quant_pre_process drops temp files into the working directory
            try:
                quant_pre_process(str(src), str(pre))
            except Exception as e:  # symbolic shape inference can fail on exotic graphs: skip it
                pre_note = f"quant_pre_process without symbolic shapes ({type(e).__name__})"
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            # found in the graph ORT quantizes: its pre-processing may fuse and rename nodes
            floats = []
            if recipe.float_rotations or recipe.float_input_layer or recipe.float_coordinates:  # reads it again
                floats = onnx_float_nodes(onnx.load(str(pre), load_external_data=False), recipe.float_rotations,
                                          recipe.float_input_layer, recipe.float_coordinates)
            with calibration_session_order() as reordered:
                quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(recipe.op_types), per_channel=recipe.per_channel,
                                activation_type=QuantType.QInt8 if recipe.symmetric else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, reduce_range=recipe.reduce_range,
                                nodes_to_exclude=list(recipe.nodes_to_exclude) + floats,
                                calibrate_method=method, extra_options=extra, **cache_kw)
        except QuantizationError:
            raise
        except Exception as e:
            msg = first_line(e)
            raise QuantizationError(f"{src.name}: ONNX Runtime quantization failed ({msg})") from None
        finally:
            os.chdir(cwd)
            logging.getLogger().setLevel(root_level)
    update_metadata(dst, {k: v for k, v in meta.items() if k.startswith("veca.")} | {
        "veca.precision": "int8", "veca.quantization": recipe.variant})
    m = onnx.load(str(dst))
    q = sum(n.op_type == "QuantizeLinear" for n in m.graph.node)
    state = "ranges given" if given else ("hit" if hit else "miss") if cacheable else \
        f"unsupported by onnxruntime {ort_version}"
    return {"calibration_cache": state, "cache_key": key, "seconds": round(time.perf_counter() - t0, 2),
            "preprocess": pre_note, "quantize_linear_nodes": q, "kept_float": len(floats),
            "calibration_order": "priority-based" if reordered else "onnxruntime default"}


def convert_onnx_fp16(src: Path, dst: Path, recipe: Fp16Recipe) -> dict[str, Any]:
    """FP16 weights and math with float32 ``images`` in and float32 outputs; ``recipe.keep_fp32`` ops stay FP32."""
    onnx = _onnx()
    try:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as e:
        raise QuantizationError(f"FP16 conversion needs onnxruntime.transformers ({e})") from None
    m = onnx.load(str(src))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(recipe.keep_fp32))
    try:
        m16 = convert_float_to_float16(m, keep_io_types=recipe.keep_io_types, op_block_list=block)
    except Exception as e:
        raise QuantizationError(f"{src.name}: FP16 conversion failed ({type(e).__name__}: {str(e)[:200]})") from None
    set_metadata(m16, {"veca.precision": "fp16"})
    onnx.save(m16, str(dst))
    kept = sorted({n.op_type for n in m16.graph.node if n.op_type in recipe.keep_fp32})
    return {"kept_fp32_ops_present": kept, "fp16_initializers":
            int(sum(i.data_type == onnx.TensorProto.FLOAT16 for i in m16.graph.initializer))}


def tensorrt_check(path: Path) -> dict[str, Any]:
    """Static TensorRT-readiness of a graph (signed INT8, zero point 0, float biases, ops)."""
    from ..convert.trt_check import check_onnx_for_tensorrt

    rep = check_onnx_for_tensorrt(path)
    return {"ok": rep.ok, "problems": rep.problems[:5], "target": rep.target}

