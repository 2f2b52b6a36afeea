"""OpenVINO INT8: NNCF post-training quantization of the bundle's FP32 IR (no torch).

SmoothQuant (what ``model_type=TRANSFORMER`` switches on) is off by default: measured on this
model it hurt OpenVINO's INT8 accuracy (docs/quantization.md). The quantized IR of a given
(data, IR, recipe) is cached, since NNCF's statistics collection dominates the time.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle.io import sha256_file
from ..errors import first_line, QuantizationError
from . import cache
from .data import CalibrationSet
from .keep_float import REVISION as KEEP_FLOAT_REVISION, openvino_float_ops
from .recipe import NncfRecipe


def quantize_openvino_int8(src_xml: Path, dst_xml: Path, cal: CalibrationSet, recipe: NncfRecipe, *,
                           cache_dir: str | None = None, progress: Callable[[int, int], None] | None = None
                           ) -> dict[str, Any]:
    """Write an INT8 IR (``dst_xml`` + ``.bin``) of ``src_xml``; returns what happened.
    ``progress(done, total)`` after every batch NNCF reads (once per statistics pass)."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise QuantizationError("OpenVINO INT8 needs openvino and nncf: pip install 'veca-deploy[openvino]'") from None
    t0 = time.perf_counter()
    src_bin = src_xml.with_suffix(".bin")
    key = cache.entry_key(cal.digest, sha256_file(src_xml) + sha256_file(src_bin), "static",
                          {**recipe.to_dict(), "nncf": nncf.__version__, "openvino": ov.get_version(),
                           "keep_float": KEEP_FLOAT_REVISION})
    entry = cache.entry_dir("openvino", key, cache_dir)
    hit = (entry / "model.xml").is_file() and (entry / "model.bin").is_file()
    if not hit:
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                           AdvancedSmoothQuantParameters)

        core = ov.Core()
        model = core.read_model(str(src_xml))
        # one image per item: NNCF's statistics treat axis 0 as the sample axis. Lazy and
        # re-iterable: NNCF iterates the data source once per statistics pass (min/max, bias
        # correction); each pass preprocesses one resolution-sized batch at a time.
        data = nncf.Dataset(cal.samples(progress), np.ascontiguousarray)
        adv = AdvancedQuantizationParameters()
        if not recipe.smooth_quant:
            adv = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1,
                                                                                                convolution=-1))
        kwargs: dict[str, Any] = {}
        floats = openvino_float_ops(model, recipe.float_rotations, recipe.float_input_layer,
                                    recipe.float_coordinates)
        if recipe.ignored_types or floats:
            # validate=False: a graph without one of these op types (a task model with no attention) is fine
            kwargs["ignored_scope"] = nncf.IgnoredScope(types=list(recipe.ignored_types), names=floats,
                                                        validate=False)
        try:
            qmodel = nncf.quantize(model, data, subset_size=cal.count,
                                   model_type=nncf.ModelType.TRANSFORMER if recipe.model_type == "transformer" else None,
                                   preset=nncf.QuantizationPreset(recipe.preset),
                                   fast_bias_correction=recipe.fast_bias_correction,
                                   advanced_parameters=adv, **kwargs)
        except Exception as e:
            msg = first_line(e)
            raise QuantizationError(f"{src_xml.name}: NNCF quantization failed ({msg})") from None
        tmp = cache.new_tmp("openvino", cache_dir)
        ov.save_model(qmodel, str(tmp / "model.xml"), compress_to_fp16=False)
        cache.publish(tmp, entry)
    dst_xml.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry / "model.xml", dst_xml)
    shutil.copyfile(entry / "model.bin", dst_xml.with_suffix(".bin"))
    return {"calibration_cache": "hit" if hit else "miss", "cache_key": key,
            "seconds": round(time.perf_counter() - t0, 2)}
