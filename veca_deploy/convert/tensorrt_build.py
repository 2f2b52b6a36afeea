"""Build TensorRT engines from a bundle's ONNX artifacts, on the device that will run them.

Plans are tied to the GPU model and the exact TensorRT version, so this runs on the Jetson (or
GPU server) itself and writes ``tensorrt/<id>.plan`` plus a ``<id>.json`` sidecar with the
device fingerprint the runner checks. Networks are strongly typed (TensorRT 10: the
``STRONGLY_TYPED`` flag; TensorRT 11: the only mode): the ONNX graph's own types decide
precision (an FP16 ONNX gives an FP16 engine, a Q/DQ ONNX an INT8 one), so the engine computes
what the exported, parity-checked graph computes rather than what the autotuner prefers. INT8
engines are built from the bundle's S8S8 graph with its float parts in FP16 (``qdq-fp16``, see
:mod:`.trt_int8`) unless ``int8_source="qdq-fp32"``.

Every engine is gated like every other artifact before the bundle changes: it runs on the
bundle's golden inputs at each of its tiers (each profile of an elastic engine) and is compared
with the golden PyTorch FP32 outputs by the gate of its precision
(:mod:`veca_deploy.compare.gates`). A bundle without golden outputs is refused rather than
checked against ONNX Runtime on the device's CPU. Each engine's batch-1 latency per tier is
recorded, and an INT8 engine says how it compares with the FP16 engine of the same tier.

The bundle is updated atomically (staged copy, then swap): a failed build or gate leaves it as
it was. Dynamic batch gets one profile range (1..``max_batch``, recorded as the artifact's
``max_batch``); an elastic graph gets one profile per core tier with a fixed ``core_select``
length, so each tier is tuned for its own token count.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..bundle.io import file_entry, sha256_file, staged_update, write_manifest
from ..bundle.manifest import Artifact, Manifest, artifact_id, read_manifest
from ..bundle.reader import Bundle
from ..compare.checks import BundleReferences, failures_of, parity_record
from ..compare.comparator import Comparator
from ..errors import BackendUnavailable, BundleError, ExportError, UsageError
from ..formats import PRECISIONS
from ..runtimes.base import CORE_SELECT, IMAGES, core_select
from ..runtimes.jetson import (cuda_check, gpu_fingerprint, fingerprint_matches, gpu_slug, import_cudart,
                               import_tensorrt, jetson_power_state, network_flags, require_gpu)
from .trt_int8 import DEFAULT_INT8_SOURCE, INT8_SOURCES, check_int8_source

__all__ = ["build_engines", "build_environment", "gpu_fingerprint", "fingerprint_matches", "int8_vs_fp16",
           "jetson_power_state", "plan_paths", "select_sources", "timing_cache_path", "DEFAULT_INT8_SOURCE",
           "INT8_SOURCES", "SIDECAR_FORMAT"]

ENGINE_DIR = "tensorrt"
SIDECAR_FORMAT = "veca-deploy/tensorrt-plan"
SIDECAR_VERSION = 1
DEFAULT_MAX_BATCH = 8
#: Share of free GPU memory a build may use as workspace. Jetson's GPU shares DRAM with the
#: CPU (and the OS), so take at most half of what is free there; a discrete GPU gets 90%.
WORKSPACE_SHARE_INTEGRATED = 0.5
WORKSPACE_SHARE_DISCRETE = 0.9
#: batch-1 latency recorded per engine tier: timed runs after warm-up (p50 of wall time, copies included)
LATENCY_COUNT, LATENCY_WARMUP = 50, 10

Progress = Callable[..., None]


@dataclass
class BuildSource:
    """One engine to build: the source ONNX artifact and the tiers its profiles cover."""

    artifact: Artifact
    tiers: list[int] = field(default_factory=list)

    @property
    def engine_id(self) -> str:
        a = self.artifact
        cores = max(self.tiers) if a.elastic else a.cores
        return artifact_id("tensorrt", a.precision, cores, a.height, a.width, a.elastic)


def plan_paths(engine_id: str) -> tuple[str, str]:
    """Bundle-relative (plan, sidecar) paths of an engine."""
    return f"{ENGINE_DIR}/{engine_id}.plan", f"{ENGINE_DIR}/{engine_id}.json"


def timing_cache_path(fp: dict[str, Any]) -> str:
    """Per-GPU, per-TensorRT timing cache (tactic timings are only valid on the same pair)."""
    return f"{ENGINE_DIR}/timing-{gpu_slug(fp)}-trt{fp.get('tensorrt') or 'unknown'}.cache"


def select_sources(manifest: Manifest, tiers: Sequence[int] | None = None,
                   precisions: Sequence[str] = ("fp16",), elastic: bool = True) -> list[BuildSource]:
    """The ONNX artifacts to build, in manifest order. ``tiers`` limits fixed graphs to those
    cores and elastic graphs to those profiles; ``elastic=False`` skips elastic graphs."""
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UsageError(f"unknown precision {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
    if tiers is not None and any(int(t) <= 0 for t in tiers):
        raise UsageError("tiers must be positive core counts")
    onnx_arts = [a for a in manifest.artifacts if a.format == "onnx"]
    if not onnx_arts:
        raise UsageError("the bundle has no ONNX artifacts to build engines from")
    out: list[BuildSource] = []
    for a in onnx_arts:
        if a.precision not in precisions or (a.elastic and not elastic):
            continue
        if a.elastic:
            chosen = sorted(set(a.tiers) & set(tiers)) if tiers is not None else sorted(a.tiers)
            if chosen:
                out.append(BuildSource(a, chosen))
        elif tiers is None or a.cores in tiers:
            out.append(BuildSource(a, [a.cores]))
    if not out:
        have = sorted({(a.precision, "elastic" if a.elastic else f"c{a.cores}") for a in onnx_arts})
        listing = ", ".join(f"{p} {c}" for p, c in have)
        raise UsageError(f"no ONNX artifact matches precision {','.join(precisions)}"
                         f"{' and tiers ' + ','.join(map(str, tiers)) if tiers else ''}"
                         f"{' (elastic skipped)' if not elastic else ''}; the bundle has: {listing}. "
                         "Engines keep the ONNX precision (strongly typed): export or quantize that precision first")
    return out


def workspace_bytes(workspace_mb: int | None, fp: dict[str, Any], cudart: Any | None = None) -> int:
    """``--workspace`` if given, else a share of the GPU memory free right now."""
    if workspace_mb is not None:
        if int(workspace_mb) <= 0:
            raise UsageError(f"--workspace must be a positive number of MiB, got {workspace_mb}")
        return int(workspace_mb) << 20
    cudart = cudart or import_cudart()
    free, _total = cuda_check(cudart.cudaMemGetInfo(), "cudaMemGetInfo")
    share = WORKSPACE_SHARE_INTEGRATED if fp.get("integrated") else WORKSPACE_SHARE_DISCRETE
    return max(64 << 20, int(free * share))


def build_environment() -> tuple[Any, Any, dict[str, Any]]:
    """TensorRT, cuda-python and this device's fingerprint, or one typed error saying what is
    missing (:class:`BackendUnavailable`: no TensorRT, no cuda-python, a driver too old for
    them, no GPU). Cheap: the CLI calls it before showing any progress."""
    trt = import_tensorrt()
    cudart = import_cudart()
    fp = gpu_fingerprint()
    fp["tensorrt"] = trt.__version__
    require_gpu(fp)
    return trt, cudart, fp


def build_engines(bundle_dir: str | os.PathLike, tiers: Sequence[int] | None = None,
                  precisions: Sequence[str] = ("fp16",), workspace_mb: int | None = None, elastic: bool = True,
                  timing_cache: bool = True, progress: Progress | None = None, *,
                  max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = 1,
                  optimization_level: int | None = None, int8_source: str = DEFAULT_INT8_SOURCE,
                  measure_latency: bool = True) -> list[Artifact]:
    """Build one engine per selected ONNX artifact, gate each on the bundle's golden data, and
    add them to the bundle atomically.

    Returns the new ``tensorrt`` artifacts (``parity`` per tier, ``max_batch``, and in
    ``details`` the INT8 source, the batch-1 latency per tier and, for INT8, the comparison with
    FP16). Raises :class:`BackendUnavailable` without TensorRT, cuda-python, a fitting driver or
    a GPU, :class:`UsageError` for options that select nothing, :class:`BundleError` for a
    bundle without golden outputs, and :class:`ExportError` when a graph fails the static check,
    the parser, the builder or an engine fails its parity gate (the bundle is then unchanged).
    """
    int8_source = check_int8_source(int8_source)
    if int(max_batch) < 1 or not (1 <= int(opt_batch) <= int(max_batch)):
        raise UsageError(f"need 1 <= opt batch ({opt_batch}) <= max batch ({max_batch})")
    manifest = read_manifest(bundle_dir)
    sources = select_sources(manifest, tiers, precisions, elastic)
    _require_golden(bundle_dir, manifest, sources)
    trt, cudart, fp = build_environment()
    flags, typing_how = network_flags(trt)
    workspace = workspace_bytes(workspace_mb, fp, cudart)
    power = jetson_power_state()
    report = progress or (lambda *a, **k: None)
    report("building TensorRT engines", advance=0, total=len(sources))
    built: list[Artifact] = []
    failures: list[str] = []
    with staged_update(bundle_dir) as stage, Comparator() as comp, \
            tempfile.TemporaryDirectory(prefix="veca-trt-") as tmp:
        bundle = Bundle.open(stage)  # read sources from the copy that is swapped in (hash-verified)
        refs = BundleReferences(stage, bundle.manifest, comp)
        cache_rel = timing_cache_path(fp)
        cache_file = stage / cache_rel
        cache_bytes = cache_file.read_bytes() if timing_cache and cache_file.is_file() else b""
        builder = _Builder(trt, fp, flags, workspace, cache_bytes if timing_cache else None, optimization_level)
        for src in sources:
            onnx_path = bundle.path_of(src.artifact)
            graph, graph_info = _source_graph(onnx_path, src, int8_source, Path(tmp), report)
            report(f"{src.engine_id}: parsing and building (minutes on a Jetson)", advance=0)
            _static_check(graph, src.artifact.id, fp["tensorrt"])
            t0 = time.perf_counter()
            plan, info = builder.build(graph, src, max_batch, opt_batch)
            info.update(strong_typing=typing_how, network_flags=flags, int8_source=graph_info.get("int8_source"),
                        source_graph=graph_info)
            art = _write_engine(stage, src, plan, info, fp, power, workspace, time.perf_counter() - t0,
                                cache_rel if timing_cache else None, max_batch, opt_batch)
            report(f"{src.engine_id}: parity on the golden inputs, {len(src.tiers)} tier(s)", advance=0)
            reports = refs.check(art, backend="tensorrt")  # at most max_batch per call
            art.parity = parity_record(reports, art.elastic)
            failures += failures_of(reports)
            if measure_latency and not failures:
                report(f"{src.engine_id}: batch-1 latency per tier", advance=0)
                art.details["latency_ms"] = _latencies(stage / art.path, art, refs)
            built.append(art)
            report(f"{src.engine_id}: built", advance=1)
        if failures:
            raise ExportError(f"TensorRT engine parity gate failed, bundle unchanged: {'; '.join(failures[:4])}"
                              + (f" (+{len(failures) - 4} more)" if len(failures) > 4 else ""))
        for art in built:
            if art.precision == "int8":
                art.details["int8_vs_fp16"] = int8_vs_fp16(art, built + bundle.manifest.artifacts)
            bundle.manifest.add(art)
        if timing_cache and builder.cache is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(memoryview(builder.cache.serialize())))
        write_manifest(stage, bundle.manifest)
    return built


def int8_vs_fp16(art: Artifact, candidates: Sequence[Artifact]) -> dict[str, Any] | None:
    """Batch-1 latency of an INT8 engine against the FP16 engine of the same tiers, built on the
    same GPU and TensorRT (from this build, or already in the bundle): per tier
    ``{"int8_ms", "fp16_ms", "speedup"}`` (speedup = FP16 ms / INT8 ms); None without one."""
    mine = art.details.get("latency_ms") or {}
    key = (art.details.get("gpu"), art.details.get("tensorrt"))
    out: dict[str, Any] = {}
    candidates = sorted(candidates, key=lambda c: c.elastic != art.elastic)  # like for like first
    for tier, ms in mine.items():
        for c in candidates:
            if (c.format != "tensorrt" or c.precision != "fp16" or c.size != art.size
                    or (c.details.get("gpu"), c.details.get("tensorrt")) != key):
                continue
            theirs = (c.details.get("latency_ms") or {}).get(tier)
            if theirs and ms:
                out[tier] = {"int8_ms": ms, "fp16_ms": theirs, "speedup": round(theirs / ms, 3), "fp16_engine": c.id}
                break
    return out or None


# ---------------------------------------------------------------------------- internals
def _require_golden(bundle_dir: str | os.PathLike, manifest: Manifest, sources: list[BuildSource]) -> None:
    """Engines are gated against the golden outputs only: never by running the ONNX graph in
    ONNX Runtime on the device's CPU (slow, and not what the export gated)."""
    from ..compare.golden import output_key, size_key

    sec = manifest.golden or {}
    missing = [f"C={c} {s.artifact.height}x{s.artifact.width}" for s in sources for c in s.tiers
               if size_key(s.artifact.height, s.artifact.width) not in sec.get("inputs", {})
               or output_key(c, s.artifact.height, s.artifact.width) not in sec.get("outputs", {})]
    if missing:
        raise BundleError(f"{bundle_dir}: no golden outputs for {', '.join(dict.fromkeys(missing))}; engines are "
                          "gated against the bundle's golden PyTorch outputs: re-export the bundle with this "
                          "veca-deploy (export writes golden/)")


def _source_graph(onnx_path: Path, src: BuildSource, int8_source: str, tmp: Path,
                  report: Progress) -> tuple[Path, dict[str, Any]]:
    """The ONNX file the engine is built from and what it is (INT8: the qdq-fp16 form of the
    bundle's S8S8 graph, written outside the bundle; it is reproducible from that graph)."""
    a = src.artifact
    if a.precision != "int8":
        return onnx_path, {"int8_source": None, "path": a.path, "sha256": a.sha256}
    if int8_source == "qdq-fp32":
        return onnx_path, {"int8_source": "qdq-fp32", "path": a.path, "sha256": a.sha256}
    from .trt_int8 import write_qdq_fp16

    report(f"{src.engine_id}: FP16 form of the S8S8 Q/DQ graph", advance=0)
    dst = tmp / f"{src.engine_id}.qdq-fp16.onnx"
    info = write_qdq_fp16(onnx_path, dst)
    return dst, {**info, "from": a.path, "from_sha256": a.sha256}


def _latencies(plan: Path, art: Artifact, refs: BundleReferences) -> dict[str, float]:
    """p50 batch-1 latency (ms, wall time with copies) of each tier, on a golden input."""
    from ..runtimes.timing import measure
    from ..runtimes.trt import TensorRTRunner

    x = refs.inputs(art.height, art.width)[:1]
    out: dict[str, float] = {}
    with TensorRTRunner(plan) as runner:
        for c in art.tiers:
            feed = {IMAGES: x, **({CORE_SELECT: core_select(c)} if art.elastic else {})}
            t = measure(runner, feed, count=LATENCY_COUNT, warmup=LATENCY_WARMUP)
            out[str(c)] = round(t.p50, 4)
    return out


def _static_check(onnx_path: Path, art_id: str, trt_version: str) -> None:
    """Fail early with the reason when the graph cannot build; skipped without ``onnx``
    (a runtime-only Jetson install), where the parser's own error is reported instead."""
    try:
        from .trt_check import check_onnx_for_tensorrt

        rep = check_onnx_for_tensorrt(onnx_path, trt_version=trt_version)
    except BackendUnavailable:
        return
    if not rep.ok:
        raise ExportError(f"{art_id} cannot be built with TensorRT: {rep.summary()} (details: veca-deploy check-trt)")


class _Builder:
    """One TensorRT builder and timing cache shared by every engine of a run."""

    def __init__(self, trt: Any, fp: dict[str, Any], flags: int, workspace: int, cache_bytes: bytes | None,
                 optimization_level: int | None) -> None:
        from ..runtimes.trt import start_trt, trt_logger

        self.trt, self.flags, self.workspace, self.level = trt, flags, workspace, optimization_level
        self.logger = trt_logger(trt)
        self.builder = start_trt(trt, "Builder", self.logger, fp)
        self.cache_bytes = cache_bytes
        self.cache = None

    def build(self, onnx_path: Path, src: BuildSource, max_batch: int, opt_batch: int) -> tuple[bytes, dict[str, Any]]:
        trt = self.trt
        self.logger.reset()
        network = self.builder.create_network(self.flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(os.fspath(onnx_path)):
            errs = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ExportError(f"{src.artifact.id}: TensorRT's ONNX parser failed: "
                              f"{errs[0] if errs else self.logger.last_error()}"
                              f"{f' (+{len(errs) - 1} more)' if len(errs) > 1 else ''}")
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if self.level is not None:
            config.builder_optimization_level = int(self.level)
        if self.cache_bytes is not None:
            if self.cache is None:
                self.cache = config.create_timing_cache(self.cache_bytes)
                if self.cache is None:  # a cache from another TensorRT build: start afresh
                    self.cache = config.create_timing_cache(b"")
            if not config.set_timing_cache(self.cache, False):
                self.cache = config.create_timing_cache(b"")
                config.set_timing_cache(self.cache, False)
        profiles = _profiles(network, src, max_batch, opt_batch)
        for shapes in profiles:
            prof = self.builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                prof.set_shape(name, lo, opt, hi)
            if config.add_optimization_profile(prof) < 0:
                raise ExportError(f"{src.artifact.id}: TensorRT rejected optimization profile {shapes}")
        plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"{src.artifact.id}: TensorRT build failed: {self.logger.last_error()}")
        io = [{"name": network.get_input(i).name, "dtype": str(network.get_input(i).dtype).split(".")[-1],
               "shape": list(network.get_input(i).shape)} for i in range(network.num_inputs)]
        io += [{"name": network.get_output(i).name, "dtype": str(network.get_output(i).dtype).split(".")[-1],
                "shape": list(network.get_output(i).shape), "output": True} for i in range(network.num_outputs)]
        info = {"profiles": [{k: [list(v) for v in s] for k, s in p.items()} for p in profiles], "io": io,
                "builder_optimization_level": int(config.builder_optimization_level),
                "warnings": self.logger.warnings[-5:]}
        return bytes(memoryview(plan)), info


def _profiles(network: Any, src: BuildSource, max_batch: int, opt_batch: int) -> list[dict[str, tuple]]:
    """min/opt/max shapes per profile: batch 1..max for ``images``; for elastic graphs one
    profile per tier with ``core_select`` fixed at that length."""
    base: dict[str, tuple] = {}
    core_input = None
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if t.name == CORE_SELECT and src.artifact.elastic:
            core_input = t.name
            continue
        dyn = [ax for ax, d in enumerate(shape) if d < 0]
        if not dyn:
            continue
        if dyn != [0]:
            raise ExportError(f"{src.artifact.id}: input {t.name!r} has dynamic dims {dyn}; only the batch dim "
                              "(and core_select's length) may be dynamic")
        lo, opt, hi = ([n] + shape[1:] for n in (1, opt_batch, max_batch))
        base[t.name] = (tuple(lo), tuple(opt), tuple(hi))
    if src.artifact.elastic:
        if core_input is None:
            raise ExportError(f"{src.artifact.id}: elastic artifact without a {CORE_SELECT!r} input")
        return [{**base, core_input: ((t,), (t,), (t,))} for t in src.tiers]
    return [base] if base else []


def _write_engine(stage: Path, src: BuildSource, plan: bytes, info: dict[str, Any], fp: dict[str, Any],
                  power: dict[str, Any] | None, workspace: int, seconds: float, cache_rel: str | None,
                  max_batch: int, opt_batch: int) -> Artifact:
    a = src.artifact
    plan_rel, side_rel = plan_paths(src.engine_id)
    (stage / plan_rel).parent.mkdir(parents=True, exist_ok=True)
    (stage / plan_rel).write_bytes(plan)
    plan_sha = sha256_file(stage / plan_rel)
    engine_max = a.batch if isinstance(a.batch, int) else int(max_batch)
    build = {"strongly_typed": True, "precision": a.precision, "workspace_bytes": workspace,
             "max_batch": engine_max, "opt_batch": opt_batch, "tiers": src.tiers, "elastic": a.elastic,
             "timing_cache": cache_rel, "seconds": round(seconds, 1), **info}
    sidecar = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "engine": src.engine_id,
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "fingerprint": fp, "power": power, "build": build,
               "source": {"artifact": a.id, "path": a.path, "sha256": a.sha256},
               "plan": {"path": plan_rel, "sha256": plan_sha, "bytes": len(plan)}}
    (stage / side_rel).write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    graph = info.get("source_graph") or {}
    return Artifact(format="tensorrt", precision=a.precision, cores=max(src.tiers) if a.elastic else a.cores,
                    height=a.height, width=a.width, path=plan_rel, sha256=plan_sha, bytes=len(plan),
                    batch=a.batch, max_batch=engine_max, elastic=a.elastic, tiers=list(src.tiers),
                    files=[file_entry(stage, side_rel)], inputs=dict(a.inputs), outputs=list(a.outputs),
                    flops=a.flops, params=a.params,
                    details={"source": a.id, "source_sha256": a.sha256, "int8_source": info.get("int8_source"),
                             "source_graph_sha256": graph.get("sha256"), "strong_typing": info.get("strong_typing"),
                             "gpu": fp.get("gpu_name"), "compute_capability": fp.get("compute_capability"),
                             "tensorrt": fp.get("tensorrt"), "cuda_driver": fp.get("cuda_driver"),
                             "jetpack": fp.get("jetpack"), "profiles": len(info.get("profiles") or []),
                             "build_seconds": round(seconds, 1)})


def _parser_error(err: Any) -> str:
    """One line from an IParserError (desc + node + operator where the bindings expose them)."""
    desc = str(err.desc()) if hasattr(err, "desc") else str(err)
    parts = []
    for attr in ("node_name", "node_operator"):
        fn = getattr(err, attr, None)
        try:
            value = fn() if callable(fn) else None
        except Exception:
            value = None
        if value:
            parts.append(str(value))
    where = f" [{' '.join(parts)}]" if parts else ""
    return " ".join((desc + where).split())[:300]
