"""ONNX Runtime runner (CPU; CUDA / TensorRT execution providers when installed)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import first_line, BackendUnavailable, BundleError, UsageError
from .base import Runner, TensorSpec, tiers_from_metadata

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
           "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


#: ONNX Runtime's session setting for bf16 GEMMs on AArch64 (MLAS, BF16 MMLA kernels)
FASTMATH_BF16 = "mlas.enable_gemm_fastmath_arm64_bfloat16"


class OnnxRuntimeRunner(Runner):
    """Options: ``providers`` (default CPU), ``threads`` (intra-op, default all cores),
    ``graph_optimization`` ("all"), ``profile`` (ORT per-operator profiling file prefix),
    ``allow_spinning`` (False: intra-op workers block instead of spinning after each run, so
    they do not take the cores from other runtimes in the same process; default: ORT's, spinning),
    ``streams`` (K > 1: K runs in parallel on this session, each with ``max(1, threads // K)``
    intra-op threads, ``threads`` defaulting to the usable cores; see ``runtimes/pool.py``),
    ``inference_precision`` (``bf16``: MLAS's bf16 fast-math GEMMs, on AArch64 with BF16 only;
    refused elsewhere, where ONNX Runtime would ignore the setting and run f32 under its name)."""

    backend = "onnxruntime"

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - base dependency
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from e
        so = ort.SessionOptions()
        threads = self.options.get("threads")
        if int(self.options.get("streams") or 1) > 1:  # K parallel runs on this session: K x threads <= cores
            from .pool import stream_threads

            threads = stream_threads(int(self.options["streams"]), threads)
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.options.get("allow_spinning") is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options["allow_spinning"] else "0")
        prec = self.options.get("inference_precision")
        providers = self.options.get("providers") or ["CPUExecutionProvider"]
        if prec not in (None, "", "f32"):
            from . import arm_bf16

            names = {p if isinstance(p, str) else p[0] for p in providers}
            why = ""
            if prec != "bf16":
                why = "ONNX Runtime offers no other inference precision"
            elif not arm_bf16():
                why = "this CPU is not AArch64 with BF16"
            elif names != {"CPUExecutionProvider"}:
                why = "it is a CPU-provider setting, and this runner uses " + ", ".join(sorted(names))
            if why:
                raise UsageError(f"{self.path.name}: ONNX Runtime runs inference precision {prec} only as bf16 "
                                 f"fast-math GEMMs on AArch64 CPUs with BF16 ({why})")
            so.add_session_config_entry(FASTMATH_BF16, "1")
        if self.options.get("profile"):
            so.enable_profiling = True
            so.profile_file_prefix = str(self.options["profile"])
        available = ort.get_available_providers()
        missing = [p if isinstance(p, str) else p[0] for p in providers]
        missing = [p for p in missing if p not in available]
        if missing:
            raise BackendUnavailable(f"ONNX Runtime provider(s) {', '.join(missing)} not available here "
                                     f"(have {', '.join(available)})")
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises its own exception types for corrupt graphs
            msg = first_line(e)
            raise BundleError(f"{self.path.name}: ONNX Runtime cannot load it ({msg})") from None
        self._inputs = [TensorSpec(i.name, _DTYPES.get(i.type, i.type),
                                   tuple(d if isinstance(d, int) else None for d in i.shape))
                        for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._core_tiers = tiers_from_metadata(dict(self.session.get_modelmeta().custom_metadata_map or {}))

    def input_specs(self) -> list[TensorSpec]:
        self.activate()
        return self._inputs

    def output_names(self) -> list[str]:
        self.activate()
        return self._outputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self._outputs, feed)
        return dict(zip(self._outputs, outs))

    def _close(self) -> None:
        if self.options.get("profile") and hasattr(self, "session"):
            self.profile_file = self.session.end_profiling()
        self.session = None

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"backend": self.backend, "version": ort.__version__,
                "providers": self.options.get("providers") or ["CPUExecutionProvider"],
                "threads": self.options.get("threads") or "default",
                **({"streams": int(self.options["streams"])} if int(self.options.get("streams") or 1) > 1 else {}),
                **({"allow_spinning": bool(self.options["allow_spinning"])}
                   if self.options.get("allow_spinning") is not None else {}),
                **({"inference_precision": "bf16", FASTMATH_BF16: "1"}
                   if self.options.get("inference_precision") == "bf16" else {})}
