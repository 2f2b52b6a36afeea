"""OpenVINO runner (CPU by default): LATENCY hint, thread count, model cache, explicit precision.

On CPUs with bf16 units OpenVINO silently runs f32 models in bf16; we make the choice explicit
(``inference_precision``: "f32" for parity checks, "bf16"/"f16" for speed) and record it.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import numpy as np

from ..errors import first_line, BackendUnavailable, BundleError, UsageError
from .base import IMAGES, Runner, TensorSpec


def _import_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailable("OpenVINO is not installed: pip install 'veca-deploy[openvino]'") from e
    return ov


#: OpenVINO's CPU plugin keeps the "tail" of a graph in f32 under a bf16 precision hint: every op
#: between the outputs and the last matrix product. In a transformer the residual adds chain the
#: tail up through every layer, so the whole residual stream ran in f32 with an f32<->bf16 reorder
#: around each add (what that cost: docs/performance.md). This
#: per-op runtime attribute (read by the plugin's Node constructor) opts an op into the hint.
_LOW_PRECISION_TAIL = "enforceBF16evenForGraphTail"


def typed_marks() -> bool:
    """Whether this OpenVINO sets a bool in an op's runtime info (``Node.set_rt_info``, 2024+).

    Without it the mark is the string "YES", and the plugin converts it on every read:
    ``ov::Any::as<bool>`` of a string writes a cache inside the Any, unlocked. Several CPU streams
    build their graphs in parallel from one model, so that write raced and aborted the process
    ("pure virtual method called", 2026.4 with two streams). A string mark is used with one stream only."""
    ov = _import_openvino()
    node = getattr(ov, "Node", None) or getattr(getattr(ov, "runtime", None), "Node", None)
    return node is not None and hasattr(node, "set_rt_info")


def low_precision_tail(model) -> int:
    """Mark every computing op of ``model`` to run in the bf16 hint, graph tail included; returns
    how many. The outputs stay f32 (the plugin converts at the Result)."""
    typed = typed_marks()
    n = 0
    for op in model.get_ops():
        if op.get_type_name() not in ("Parameter", "Result", "Constant"):
            if typed:  # a bool: read without conversion, safe for streams compiled in parallel
                op.set_rt_info(True, _LOW_PRECISION_TAIL)
            else:  # read as a bool by the plugin; "YES" is the spelling every release parses (2023.3 refuses "1"/"true")
                op.get_rt_info()[_LOW_PRECISION_TAIL] = "YES"
            n += 1
    return n


def check_execution_precision(name: str, requested: str | None, compiled: str) -> None:
    """Refuse a compile that does not run in the precision asked for: OpenVINO's CPU plugin keeps
    f32 without a word when the CPU lacks native bf16 (or f16), so an execution variant measured,
    gated or served there would be the default run under another name (UsageError, exit 2)."""
    if requested and str(requested).lower() != str(compiled).lower():
        raise UsageError(f"{name}: this device does not run inference precision {requested} "
                         f"(OpenVINO compiled it in {compiled})")


class OpenVINORunner(Runner):
    """Options: ``device`` ("CPU"), ``hint`` ("LATENCY" | "THROUGHPUT"), ``threads``,
    ``cache_dir``, ``inference_precision`` ("f32" default, "bf16", "f16"), ``streams`` (K > 1:
    ``NUM_STREAMS`` K and the THROUGHPUT hint, for K requests in flight; see ``runtimes/pool.py``),
    ``perf_count`` (OpenVINO's per-op counters, :meth:`profiling_info`),
    ``low_precision_tail`` (default True: under "bf16" the graph's tail runs in bf16 too, see
    :func:`low_precision_tail`; the gates judge the result at bf16 tolerances), ``static_batch``
    (default True: an ``images`` input with a dynamic batch is compiled for batch 1, what a
    latency-bound caller sends; other batch sizes get the dynamic model, compiled on first use).

    Why batch 1 static: the CPU plugin picks its kernels and fusions for the shapes it knows at
    compile time (veca_small C=16 at 512 px, AMX: docs/performance.md). ``served_batch`` is 1 then,
    so every check runs the compile that serves.
    """

    backend = "openvino"

    def _activate(self) -> None:
        ov = _import_openvino()
        core = ov.Core()
        device = self.options.get("device", "CPU")
        streams = int(self.options.get("streams") or 1)
        cfg: dict[str, Any] = {"PERFORMANCE_HINT": self.options.get("hint", "THROUGHPUT" if streams > 1 else "LATENCY")}
        if streams > 1:  # K requests in flight (runtimes/pool.py): K CPU streams share the threads
            cfg["NUM_STREAMS"] = streams
        if self.options.get("threads"):
            cfg["INFERENCE_NUM_THREADS"] = int(self.options["threads"])
        prec = self.options.get("inference_precision", "f32")
        if prec:
            cfg["INFERENCE_PRECISION_HINT"] = prec
        if self.options.get("cache_dir"):
            cfg["CACHE_DIR"] = os.fspath(self.options["cache_dir"])
        if self.options.get("perf_count"):  # per-op timings of the served configuration (profile_ops)
            cfg["PERF_COUNT"] = True
        xml = os.fspath(self.path)
        bin_path = os.path.splitext(xml)[0] + ".bin"
        if xml.endswith(".xml") and not os.path.isfile(bin_path):
            raise BundleError(f"{self.path.name}: missing weights file {os.path.basename(bin_path)}")
        tail = prec == "bf16" and bool(self.options.get("low_precision_tail", True))
        tail_off = None
        if tail and streams > 1 and not typed_marks():
            tail, tail_off = False, "off: several streams need OpenVINO 2024 or newer (typed marks)"
        self._core, self._device, self._cfg, self._tail = core, device, cfg, tail
        static: str | None = None
        try:
            model = self._read()
            if self.options.get("static_batch", True) and _dynamic_batch(model):
                try:  # batch 1 fixed; a graph that cannot take it is served dynamic, and says why
                    self.compiled = core.compile_model(_batch_one(model), device, cfg)
                    static = "1"
                except Exception as e:  # noqa: BLE001 - OpenVINO raises its own types
                    static = f"off: {first_line(e)}"
            if static != "1":
                self.compiled = core.compile_model(model, device, cfg)
        except Exception as e:
            msg = first_line(e)
            raise BundleError(f"{self.path.name}: OpenVINO cannot load it ({msg})") from None
        try:
            ran = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        except Exception:  # noqa: BLE001 - a device without the property (NPU): nothing to check against
            ran = None
        if ran is not None and prec not in (None, "", "f32"):  # an execution variant must run as asked
            try:
                check_execution_precision(self.path.name, prec, getattr(ran, "get_type_name", lambda: str(ran))())
            except UsageError:
                self.compiled = None
                raise
        # the dynamic-batch model is read and compiled the first time another batch size comes (Lane)
        self.served_batch = 1 if static == "1" else None
        self._dynamic_compiled = None
        self._compile_lock = threading.Lock()
        self._lanes: weakref.WeakSet[Lane] = weakref.WeakSet()
        self.request = Lane(self)
        self._inputs = []
        for p in model.inputs:  # what callers may send: the graph's own shapes, not the batch-1 compile
            shape = tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape())
            self._inputs.append(TensorSpec(p.get_any_name(), np.dtype(p.get_element_type().to_dtype()).name, shape))
        # the graph's own output names: after compilation a fused Cast (an argmax mask's int32)
        # leaves its port with several names and get_any_name may return the internal one
        declared = [set(p.get_names()) for p in model.outputs]
        self._outputs = [_output_name(p, declared[i] if i < len(declared) else set())
                         for i, p in enumerate(self.compiled.outputs)]
        self.settings = {"device": device, **{k: str(v) for k, v in cfg.items()},
                         "execution_precision": str(ran) if ran is not None else "unknown"}
        if tail or tail_off:
            self.settings["low_precision_tail"] = "True" if tail else tail_off
        if static is not None:
            self.settings["static_batch"] = static

    def input_specs(self) -> list[TensorSpec]:
        self.activate()
        return self._inputs

    def output_names(self) -> list[str]:
        self.activate()
        return self._outputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs: the request reads our (already contiguous, checked) arrays without a copy;
        # share_outputs + one explicit copy: callers own their arrays and the request's buffers are
        # reused by the next call. The default (copying OVDict, then indexing it by port) cost
        # ~200 us per call on the reference model (benchmarks/runtime_overhead.py).
        outs = self.request.infer(feed, share_inputs=True, share_outputs=True).to_tuple()
        return {name: np.array(t, copy=True) for name, t in zip(self._outputs, outs)}

    def profiling_info(self) -> list:
        """OpenVINO's per-op counters of the last batch-1 call on the sync path (``perf_count=True``)."""
        return self.request.one.get_profiling_info()

    def new_lane(self) -> "Lane":
        """An infer request of its own (the sync path has one; ``runtimes/pool.py`` makes one per
        stream) that runs batch 1 on the batch-1 model and other batches on the dynamic one."""
        self.activate()
        return Lane(self)

    def _read(self):
        """The IR as the runner compiles it (the bf16 graph tail marked when asked)."""
        model = self._core.read_model(os.fspath(self.path))
        if self._tail:
            low_precision_tail(model)
        return model

    def dynamic_model(self):
        """The compiled dynamic-batch model: read and compiled once, on the first batch other than
        1 (seconds at high resolution: an application that sends several batch sizes pays it once)."""
        with self._compile_lock:
            if self._core is None:
                raise BundleError(f"{self.path.name}: the runner is closed")
            if self._dynamic_compiled is None:
                try:
                    self._dynamic_compiled = self._core.compile_model(self._read(), self._device, self._cfg)
                except Exception as e:
                    raise BundleError(f"{self.path.name}: OpenVINO cannot load it for batch > 1 "
                                      f"({first_line(e)})") from None
            return self._dynamic_compiled

    def _close(self) -> None:
        # every request goes here, in the closing thread, before its compiled model and the Core:
        # left to the garbage collector they were freed from whichever thread ran it, at times
        # during another runner's compile_model ("pure virtual method called", an abort)
        with self._compile_lock:
            for lane in list(self._lanes):
                lane.release()
            self._lanes = weakref.WeakSet()
            self.request = None
            self.compiled = None
            self._dynamic_compiled = self._core = None

    def describe(self) -> dict[str, Any]:
        ov = _import_openvino()
        d = {"backend": self.backend, "version": ov.get_version()}
        d.update(getattr(self, "settings", {}))
        return d


class Lane:
    """One caller's infer requests on a runner: the batch-1 compile for one image, the dynamic
    compile for any other batch (its request made on first need). Not shared between threads.

    It holds its runner weakly (the runner holds its own lane: no reference cycle, so nothing is
    left for the garbage collector to free at a random time) and the runner's close releases it."""

    def __init__(self, runner: OpenVINORunner) -> None:
        self._runner = weakref.ref(runner)
        self._name = runner.path.name
        self._batch = runner.served_batch
        self.one = runner.compiled.create_infer_request()
        self.any = None
        runner._lanes.add(self)

    def release(self) -> None:
        """Free the infer requests now (the runner's close calls it)."""
        self.one = self.any = None

    def infer(self, feed: dict[str, np.ndarray], **kwargs: Any):
        one = self.one
        if one is None:
            raise BundleError(f"{self._name}: the runner is closed")
        images = feed.get(IMAGES)
        if self._batch is None or images is None or images.shape[0] == self._batch:
            return one.infer(feed, **kwargs)
        if self.any is None:
            runner = self._runner()
            if runner is None:
                raise BundleError(f"{self._name}: the runner is closed")
            self.any = runner.dynamic_model().create_infer_request()
        return self.any.infer(feed, **kwargs)


def _images_port(model):
    return next((p for p in model.inputs if IMAGES in p.get_names()), None)


def _dynamic_batch(model) -> bool:
    """Whether ``model`` has an ``images`` input whose batch is left open."""
    port = _images_port(model)
    return port is not None and port.get_partial_shape()[0].is_dynamic


def _batch_one(model):
    """A copy of ``model`` with the batch of its ``images`` input fixed at 1."""
    port = _images_port(model)
    shape = port.get_partial_shape()
    shape[0] = 1
    static = model.clone()
    static.reshape({port.get_any_name(): shape})
    return static


def _output_name(port, declared: set[str]) -> str:
    """One stable name per output port: the read model's name when it has exactly one, else the
    name that is not an internal tensor path (``/module/Op_output_0``), else ``get_any_name``."""
    names = set(port.get_names())
    if len(declared) == 1 and declared <= names:
        return next(iter(declared))
    plain = sorted(n for n in names if not n.startswith("/"))
    return plain[0] if len(plain) == 1 else port.get_any_name()
