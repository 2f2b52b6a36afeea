"""TensorRT runner: deserializes a plan built by ``veca-deploy build-trt`` and runs it with
cuda-python (no torch, no pycuda on the runtime path).

A plan only runs on the GPU model and TensorRT version that built it, and a mismatched plan
either fails to deserialize with an opaque message or, worse, runs with wrong tactics; so the
sidecar fingerprint is compared first and a mismatch is refused with what to do. Device
buffers are allocated once for the largest shape any profile allows, so ``infer`` never
allocates. Elastic engines carry one optimization profile per core tier; the request's
``core_select`` length picks the profile. GPU compute and the host<->device copies are timed
separately with CUDA events (``last_timings``): on Jetson the copies are a visible share of
a small model's latency, and benchmarks should say which number they report.
"""

from __future__ import annotations

import ctypes
import json
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, BundleError, InputError, first_line
from .base import CORE_SELECT, IMAGES, Runner, TensorSpec
from .jetson import (cuda_check, gpu_fingerprint, fingerprint_matches, import_cudart, import_tensorrt,
                     jetson_power_state, require_gpu)

REBUILD_HINT = "rebuild with veca-deploy build-trt on this device"
_LOGGER: Any = None


def trt_logger(trt: Any) -> Any:
    """The process-wide TensorRT logger (TensorRT keeps the first one it sees). It keeps the
    last errors so failures become one-line typed errors instead of log spam."""
    global _LOGGER
    if _LOGGER is None:
        severity = trt.ILogger.Severity

        class _CollectingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []

            def log(self, sev: Any, msg: str) -> None:
                if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors = self.errors[-50:] + [msg]
                elif sev == severity.WARNING:
                    self.warnings = self.warnings[-50:] + [msg]

            def reset(self) -> None:
                self.errors, self.warnings = [], []

            def last_error(self) -> str:
                return " ".join(self.errors[-1].split())[:300] if self.errors else "TensorRT logged no error"

        _LOGGER = _CollectingLogger()
    return _LOGGER


def start_trt(trt: Any, what: str, logger: Any, fp: dict[str, Any]) -> Any:
    """``trt.Builder(logger)`` / ``trt.Runtime(logger)``. Both fail (pybind: TypeError on the
    null object; None in some releases) when TensorRT cannot initialize CUDA, typically a
    TensorRT built for a newer CUDA than the driver: one line with both versions."""
    try:
        obj = getattr(trt, what)(logger)
    except (TypeError, RuntimeError) as e:
        obj, why = None, first_line(e, 160)
    else:
        why = ""
    if obj is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__} cannot start on this device ({logger.last_error()}"
                                 f"{'; ' + why if why else ''}); the driver supports CUDA {fp.get('cuda_driver') or 'unknown'}: "
                                 "install the TensorRT build for that CUDA (on Jetson: JetPack's)")
    return obj


def read_sidecar(plan_path: Any) -> dict[str, Any]:
    """The ``<engine>.json`` written next to a plan by the builder."""
    from pathlib import Path

    side = Path(plan_path).with_suffix(".json")
    if not side.is_file():
        raise BundleError(f"{Path(plan_path).name}: no fingerprint sidecar {side.name}; {REBUILD_HINT}")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{side.name}: unreadable sidecar ({type(e).__name__}); {REBUILD_HINT}") from None
    if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), dict):
        raise BundleError(f"{side.name}: sidecar lacks a fingerprint; {REBUILD_HINT}")
    return data


@dataclass
class _Binding:
    name: str
    is_input: bool
    dtype: np.dtype
    nbytes: int  # capacity: the largest shape any profile allows
    device: int = 0
    host: np.ndarray | None = None  # pinned staging buffer (flat), if pinned
    host_ptr: int = 0


class _Lane:
    """One request in flight: an engine, its execution context, a CUDA stream, events, device and
    pinned buffers, the selected profile and captured graphs. TensorRT lets one optimization
    profile serve only one execution context at a time, so every lane deserializes its own
    engine (what ``trtexec --streams=N`` does): K lanes cost K x the engine's device memory."""

    def __init__(self, runner: "TensorRTRunner") -> None:
        self.r = runner
        self.engine = self.context = self.stream = None
        self.events: list[Any] = []
        self.bindings: dict[str, _Binding] = {}
        self.graphs: dict[tuple, Any] = {}
        self.profile = -1

    def open(self, plan: bytes, logger: Any) -> None:
        r, cudart = self.r, self.r._cudart
        self.engine = r._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            built = r.sidecar.get("fingerprint", {}).get("tensorrt") or "an unrecorded version"
            raise BundleError(f"{r.path.name}: TensorRT {r._trt.__version__} cannot deserialize it (built with "
                              f"TensorRT {built}; {logger.last_error()}); {REBUILD_HINT}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailable(f"{r.path.name}: cannot create an execution context ({logger.last_error()})")
        self.stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.events = [cuda_check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(4)]

    def allocate(self, cap: dict[str, int], dtypes: dict[str, np.dtype], pinned: bool) -> None:
        cudart = self.r._cudart
        for n, c in cap.items():
            nbytes = max(1, c * dtypes[n].itemsize)
            b = _Binding(n, n in self.r._inputs, dtypes[n], nbytes)
            b.device = int(cuda_check(cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes}) for {n!r}"))
            if pinned:
                b.host_ptr = int(cuda_check(cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
                raw = (ctypes.c_ubyte * nbytes).from_address(b.host_ptr)
                b.host = np.frombuffer(raw, dtype=np.uint8)
            self.bindings[n] = b

    def release(self) -> None:
        """Free in reverse order of creation; tolerate a half-finished lane."""
        cudart = self.r._cudart
        for g in self.graphs.values():
            cudart.cudaGraphExecDestroy(g)
        self.graphs = {}
        for b in self.bindings.values():
            b.host = None
            if b.device:
                cudart.cudaFree(b.device)
            if b.host_ptr:
                cudart.cudaFreeHost(b.host_ptr)
        self.bindings = {}
        for e in self.events:
            cudart.cudaEventDestroy(e)
        self.events = []
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None

    def select_profile(self, p: int, force: bool = False) -> None:
        r = self.r
        if p == self.profile and not force:
            return
        # the bindings raise RuntimeError on failure (and return True); older docs say False: take both
        try:
            ok = self.context.set_optimization_profile_async(p, int(self.stream))
        except RuntimeError as e:
            ok, why = False, first_line(e, 200)
        else:
            why = trt_logger(r._trt).last_error()
        if not ok:
            raise BackendUnavailable(f"{r.path.name}: cannot select optimization profile {p} ({why})")
        cuda_check(r._cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        for n, b in self.bindings.items():  # addresses are fixed; re-set after a profile switch
            self.context.set_tensor_address(n, b.device)
        self.profile = p

    def infer(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        r = self.r
        cudart, ctx, stream = r._cudart, self.context, self.stream
        feed = {n: np.ascontiguousarray(feed[n], dtype=self.bindings[n].dtype) for n in r._inputs}
        self.select_profile(r._profile_for(feed))
        for n in r._inputs:
            if not ctx.set_input_shape(n, feed[n].shape):
                raise InputError(f"TensorRT rejected shape {list(feed[n].shape)} for input {n!r}")
        key = (self.profile, *(feed[n].shape for n in r._inputs))
        use_graph = bool(r.options.get("cuda_graph", False)) and r._graph_error is None
        if use_graph and key not in self.graphs:
            self.capture(key)
            use_graph = key in self.graphs
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        e0, e1, e2, e3 = self.events
        cuda_check(cudart.cudaEventRecord(e0, stream), "cudaEventRecord")
        for n in r._inputs:
            b, x = self.bindings[n], feed[n]
            src = x.ctypes.data
            if b.host is not None:
                b.host[:x.nbytes] = x.reshape(-1).view(np.uint8)
                src = b.host_ptr
            cuda_check(cudart.cudaMemcpyAsync(b.device, src, x.nbytes, h2d, stream), f"copy {n!r} to the GPU")
        cuda_check(cudart.cudaEventRecord(e1, stream), "cudaEventRecord")
        if use_graph:
            cuda_check(cudart.cudaGraphLaunch(self.graphs[key], stream), "cudaGraphLaunch")
        elif not ctx.execute_async_v3(int(stream)):
            raise BackendUnavailable(f"{r.path.name}: TensorRT execution failed ({trt_logger(r._trt).last_error()})")
        cuda_check(cudart.cudaEventRecord(e2, stream), "cudaEventRecord")
        outs: dict[str, np.ndarray] = {}
        for n in r._outputs:
            b = self.bindings[n]
            out = np.empty(tuple(ctx.get_tensor_shape(n)), dtype=b.dtype)
            dst = b.host_ptr if b.host is not None else out.ctypes.data
            cuda_check(cudart.cudaMemcpyAsync(dst, b.device, out.nbytes, d2h, stream), f"copy {n!r} from the GPU")
            outs[n] = out
        cuda_check(cudart.cudaEventRecord(e3, stream), "cudaEventRecord")
        cuda_check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        for n, out in outs.items():
            b = self.bindings[n]
            if b.host is not None:
                out.reshape(-1).view(np.uint8)[:] = b.host[:out.nbytes]
        ms = [float(cuda_check(cudart.cudaEventElapsedTime(a, z), "cudaEventElapsedTime"))
              for a, z in ((e0, e1), (e1, e2), (e2, e3))]
        return outs, {"h2d_ms": ms[0], "compute_ms": ms[1], "d2h_ms": ms[2], "copy_ms": ms[0] + ms[2],
                      "total_ms": sum(ms), "cuda_graph": float(use_graph)}

    def capture(self, key: tuple) -> None:
        """Capture one ``execute_async_v3`` for the current profile and shapes. TensorRT must have
        run once with these shapes before capture; engines whose kernels cannot be captured fall
        back to plain execution, with the reason in ``describe()``."""
        r = self.r
        cudart, ctx, stream = r._cudart, self.context, self.stream
        if not ctx.execute_async_v3(int(stream)):
            raise BackendUnavailable(f"{r.path.name}: TensorRT execution failed ({trt_logger(r._trt).last_error()})")
        cuda_check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        ok = False
        try:
            ok = bool(ctx.execute_async_v3(int(stream)))
        finally:
            res = cudart.cudaStreamEndCapture(stream)
        graph = res[1] if int(res[0]) == 0 else None
        if not ok or graph is None:
            r._graph_error = f"capture failed ({trt_logger(r._trt).last_error() if not ok else res[0]})"
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
            return
        try:
            try:
                exe = cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            except TypeError:  # older cuda-python: (graph, log buffer, size)
                exe = cuda_check(cudart.cudaGraphInstantiate(graph, b"", 0), "cudaGraphInstantiate")
            self.graphs[key] = exe[0] if isinstance(exe, tuple) else exe
        except BackendUnavailable as e:
            r._graph_error = str(e)
        finally:
            cudart.cudaGraphDestroy(graph)


class TensorRTRunner(Runner):
    """Options: ``cuda_graph`` (False: capture ``execute_async_v3`` per profile/shape and replay),
    ``pinned`` (True: page-locked staging buffers for truly async copies), ``device`` (0),
    ``verify_fingerprint`` (True; False only for debugging a mismatch), ``streams`` (1: requests
    served at once, one :class:`_Lane` each: engine + execution context + CUDA stream + buffers).

    Thread-safe: ``infer`` takes a free lane (waiting for one when all are busy), so K threads
    (``runtimes/pool.py``) keep K requests on the GPU at once."""

    backend = "tensorrt"

    # -------------------------------------------------------------- lifecycle
    def _activate(self) -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        self.sidecar = read_sidecar(self.path)
        device = int(self.options.get("device", 0))
        current = gpu_fingerprint(device)
        current["tensorrt"] = trt.__version__
        require_gpu(current)  # a too-old driver is said as such (with versions), not as a foreign plan
        self._current = current
        if self.options.get("verify_fingerprint", True):
            ok, reason = fingerprint_matches(self.sidecar, current)
            if not ok:
                raise BundleError(f"{self.path.name} does not fit this machine: {reason}; {REBUILD_HINT}")
        self.last_timings: dict[str, float] = {}
        self._lanes: list[_Lane] = []
        self._free: queue.Queue = queue.Queue()
        self._graph_error: str | None = None
        self._timing_lock = threading.Lock()
        try:
            self._setup(trt, cudart, device)
        except BaseException:
            self._release()
            raise
        self._desc = {"backend": self.backend, "version": trt.__version__, "gpu": current.get("gpu_name"),
                      "compute_capability": current.get("compute_capability"),
                      "cuda_runtime": current.get("cuda_runtime"), "jetpack": current.get("jetpack"),
                      "precision": self.sidecar.get("build", {}).get("precision"),
                      "profiles": len(self._ranges), "tiers": sorted(self._tier_profile) or None,
                      "cuda_graph": bool(self.options.get("cuda_graph", False)),
                      "pinned": bool(self.options.get("pinned", True)), "power": jetson_power_state(),
                      "streams": len(self._lanes)}

    def _setup(self, trt: Any, cudart: Any, device: int) -> None:
        cuda_check(cudart.cudaSetDevice(device), "cudaSetDevice")
        logger = trt_logger(trt)
        logger.reset()
        self._runtime = start_trt(trt, "Runtime", logger, self._current)
        try:
            plan = self.path.read_bytes()
        except OSError as e:
            raise BundleError(f"{self.path.name}: cannot read plan ({e.strerror})") from None
        streams = int(self.options.get("streams") or 1)
        if streams < 1:
            raise BundleError(f"{self.path.name}: streams must be >= 1, got {streams}")
        first = _Lane(self)
        self._lanes.append(first)
        first.open(plan, logger)
        engine, context = first.engine, first.context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        dtypes = {}
        for n in names:
            try:
                dtypes[n] = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            except TypeError:
                raise BundleError(f"{self.path.name}: tensor {n!r} has dtype {engine.get_tensor_dtype(n)}, "
                                  "which numpy cannot hold") from None
        # per-profile [min, max] of every input; elastic profiles pin core_select's length
        self._ranges: list[dict[str, tuple[tuple[int, ...], tuple[int, ...]]]] = []
        self._tier_profile: dict[int, int] = {}
        for p in range(engine.num_optimization_profiles):
            rng = {}
            for n in self._inputs:
                static = tuple(engine.get_tensor_shape(n))
                if all(d >= 0 for d in static):
                    rng[n] = (static, static)
                else:
                    lo, _opt, hi = engine.get_tensor_profile_shape(n, p)
                    rng[n] = (tuple(lo), tuple(hi))
            self._ranges.append(rng)
            if CORE_SELECT in rng and rng[CORE_SELECT][0] == rng[CORE_SELECT][1]:
                self._tier_profile[rng[CORE_SELECT][0][0]] = p
        self._specs = [TensorSpec(n, dtypes[n].name, tuple(d if d >= 0 else None for d in engine.get_tensor_shape(n)))
                       for n in self._inputs]
        # capacity: max over profiles of each input's max shape and of the outputs it implies
        cap = {n: 0 for n in names}
        for p, rng in enumerate(self._ranges):
            first.select_profile(p, force=True)
            for n in self._inputs:
                hi = rng[n][1]
                if not context.set_input_shape(n, hi):
                    raise BundleError(f"{self.path.name}: profile {p} rejects its own max shape for {n!r}")
                cap[n] = max(cap[n], int(np.prod(hi, dtype=np.int64)))
            for n in self._outputs:
                shape = tuple(context.get_tensor_shape(n))
                if any(d < 0 for d in shape):
                    raise BundleError(f"{self.path.name}: output {n!r} has a data-dependent shape {shape}, unsupported")
                cap[n] = max(cap[n], int(np.prod(shape, dtype=np.int64)))
        pinned = bool(self.options.get("pinned", True))
        first.allocate(cap, dtypes, pinned)
        first.select_profile(0, force=True)
        for _ in range(streams - 1):
            lane = _Lane(self)
            self._lanes.append(lane)
            lane.open(plan, logger)
            lane.allocate(cap, dtypes, pinned)
            lane.select_profile(0, force=True)
        for lane in self._lanes:
            self._free.put(lane)

    def _close(self) -> None:
        self._release()

    def _release(self) -> None:
        """Free every lane, then the runtime; tolerate a half-finished activation."""
        if getattr(self, "_cudart", None) is None:
            return
        for lane in reversed(getattr(self, "_lanes", [])):
            lane.release()
        self._lanes = []
        self._free = queue.Queue()
        self._runtime = None

    # -------------------------------------------------------------- metadata
    def input_specs(self) -> list[TensorSpec]:
        self.activate()
        return self._specs

    def output_names(self) -> list[str]:
        self.activate()
        return list(self._outputs)

    @property
    def max_batch(self) -> int | None:
        """Largest ``images`` batch any profile accepts (None without an ``images`` input)."""
        self.activate()
        his = [int(rng[IMAGES][1][0]) for rng in self._ranges if IMAGES in rng]
        return max(his) if his else None

    def describe(self) -> dict[str, Any]:
        desc = dict(getattr(self, "_desc", {"backend": self.backend}))
        if getattr(self, "_graph_error", None):
            desc["cuda_graph_error"] = self._graph_error
        return desc

    # -------------------------------------------------------------- inference
    def _profile_for(self, feed: dict[str, np.ndarray]) -> int:
        for p, rng in enumerate(self._ranges):
            if all(_within(feed[n].shape, *rng[n]) for n in self._inputs):
                return p
        if CORE_SELECT in feed and self._tier_profile and feed[CORE_SELECT].shape[0] not in self._tier_profile:
            raise InputError(f"core_select length {feed[CORE_SELECT].shape[0]} is not a tier of this engine "
                             f"(built for {sorted(self._tier_profile)})")
        ranges = "; ".join(f"{n}: {list(lo)}..{list(hi)}" for n, (lo, hi) in self._ranges[0].items())
        shapes = ", ".join(f"{n} {list(feed[n].shape)}" for n in self._inputs)
        raise InputError(f"input shapes {shapes} are outside every optimization profile ({ranges}); "
                         "rebuild with a larger --max-batch for bigger batches")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lane = self._free.get()  # one request per lane; the others wait here
        try:
            outs, timings = lane.infer(feed)
        finally:
            self._free.put(lane)
        with self._timing_lock:
            self.last_timings = timings
        return outs


def _within(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> bool:
    return len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))
