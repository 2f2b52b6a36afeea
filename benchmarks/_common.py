"""Shared plumbing for the benchmarks in this folder (issue 7).

Every benchmark: one command, interleaved variants (A B C, C B A, ... so drift and position
effects hit every variant alike), medians, the device fingerprint, and three outputs in
``benchmarks/results/``: ``NAME.json``, ``NAME.md`` (a markdown table) and ``NAME.png``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from veca_deploy.runtimes.timing import interleaved  # noqa: F401  (re-exported for the benchmarks)

RESULTS = Path(__file__).resolve().parent / "results"
#: the ``veca-deploy`` a user runs: the console script beside this interpreter, else the module
CLI = ([str(Path(sys.executable).parent / "veca-deploy")] if (Path(sys.executable).parent / "veca-deploy").is_file()
       else [sys.executable, "-m", "veca_deploy.cli"])


def run_cli(argv: list[str], timeout_s: float = 3600, env: dict[str, str] | None = None,
            sample_s: float = 0.05) -> dict[str, Any]:
    """One fresh ``veca-deploy`` process, as a user runs it: exit code, wall time, peak RSS (sampled
    from outside, and the kernel's ``ru_maxrss`` of children when this is the largest child so
    far), stdout/stderr (through files: a full pipe would stall the child), and the RSS samples
    ``(time, bytes)`` for callers that attribute memory to steps."""
    import psutil

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(CLI + argv, stdout=fo, stderr=fe, env=env, text=True)
        ps = psutil.Process(proc.pid)
        samples: list[tuple[float, int]] = []
        while proc.poll() is None:
            try:
                samples.append((time.time(), ps.memory_info().rss))
            except psutil.Error:
                break
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                break
            time.sleep(sample_s)
        proc.wait()
        wall = time.perf_counter() - t0
        fo.seek(0), fe.seek(0)
        out, err = fo.read(), fe.read()
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    sampled = max((r for _, r in samples), default=0)
    peak = max(peak_child, sampled) if peak_child > before * 1024 else sampled
    return {"argv": ["veca-deploy", *argv], "rc": proc.returncode, "wall_s": round(wall, 1),
            "peak_rss_gb": round(peak / 2**30, 3), "stdout": out, "stderr": err, "samples": samples,
            "error": (err.strip().splitlines() or ["killed"])[-1][:300] if proc.returncode else None}


# ------------------------------------------------------------------------------ device
def fingerprint(threads: int | None = None) -> dict[str, Any]:
    """The shared device fingerprint when available, else platform + /proc/cpuinfo."""
    try:
        from veca_deploy.runtimes.fingerprint import device_fingerprint, device_id

        fp = device_fingerprint(threads)
        fp["id"] = device_id(fp)
    except Exception:  # the shared module is missing or broken: fall back to the basics
        model = None
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        fp = {"cpu": {"model": model or platform.processor(), "arch": platform.machine(),
                      "logical_cores": os.cpu_count()},
              "os": {"system": platform.system(), "release": platform.release(),
                     "python": platform.python_version()}, "threads": {"requested": threads}}
    try:
        fp["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return fp


def machine_name(fp: dict[str, Any]) -> str:
    cpu = fp.get("cpu") or {}
    isa = cpu.get("isa") or []
    # what decides kernel choice: widest SIMD, then the int8/bf16 dot-product extensions
    simd = [next((f for f in ("avx512f", "avx2", "neon") if f in isa), None)]
    simd += [f for f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16") if f in isa]
    simd = [f for f in simd if f]
    cores = cpu.get("usable_cores") or cpu.get("logical_cores")
    return f"{cpu.get('model') or 'unknown CPU'}, {cores} cores" + (f", {'/'.join(simd)}" if simd else "")


def numpy_peak_gflops(n: int = 2048, reps: int = 5) -> dict[str, Any]:
    """Practical FP32 peak: median GFLOP/s of an n^3 single-precision numpy matmul (BLAS, all cores)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    a @ b  # warm-up (thread pool, page faults)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        rates.append(2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return {"n": n, "reps": reps, "median_gflops": round(statistics.median(rates), 1),
            "max_gflops": round(max(rates), 1), "samples": [round(r, 1) for r in rates]}


# ------------------------------------------------------------------------------ timing
# interleaved A/B timing lives in the one harness: veca_deploy.runtimes.timing.interleaved
def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def summary(xs: list[float]) -> dict[str, Any]:
    return {"median_ms": round(med(xs), 4), "min_ms": round(min(xs), 4), "max_ms": round(max(xs), 4),
            "n": len(xs), "samples_ms": [round(x, 4) for x in xs]}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


# ------------------------------------------------------------------------------ output
def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def f(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(f(v) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def write_results(out: str | os.PathLike, name: str, result: dict[str, Any], markdown: str, fig=None) -> dict[str, Path]:
    """Write NAME.json, NAME.md and (when given) NAME.png; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    fp = result.get("fingerprint") or {}
    head = (f"<!-- generated by benchmarks/{name}.py; machine: {result.get('machine', machine_name(fp))}; "
            f"{result.get('finished', '')} -->\n")
    paths["json"].write_text(json.dumps(result, indent=1, default=str) + "\n")
    paths["md"].write_text(head + markdown)
    if fig is not None:
        paths["png"] = out / f"{name}.png"
        fig.savefig(paths["png"], dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
    return paths


def publish(out: str | os.PathLike, name: str, result: dict[str, Any], markdown: str, fig=None) -> dict[str, Path]:
    """write_results, then show the table and where it went (every benchmark ends this way)."""
    paths = write_results(out, name, result, markdown, fig)
    print(markdown)
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return paths


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as _plt

    return _plt


def header(fp: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"machine": machine_name(fp), "fingerprint": fp, "argv": sys.argv,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}


def finish(result: dict[str, Any]) -> dict[str, Any]:
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return result


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------ reference bundle
def reference_bundle(bundle: str | None, out_dir: Path, smoke: bool, log_fn=log) -> tuple[Path, float | None]:
    """Reuse ``bundle`` when given, else export the built-in reference model (all 4 tiers, ONNX +
    OpenVINO, FP32/FP16/INT8 calibrated on Fashion-MNIST TRAIN, plus the elastic ONNX) into
    ``out_dir``. Smoke: tiers 8 and 16, ONNX FP32 only. Returns (path, export seconds or None)."""
    if bundle:
        return Path(bundle), None
    import veca_deploy

    t0 = time.perf_counter()
    if smoke:
        veca_deploy.export(None, out=out_dir, cores=[8, 16], formats=["onnx"], precisions=["fp32"], elastic=True,
                           force=True)
    else:
        log_fn("exporting the reference bundle (4 tiers, ONNX + OpenVINO, fp32/fp16/int8, elastic) ...")
        veca_deploy.export(None, out=out_dir, formats=["onnx", "openvino"], precisions=["fp32", "fp16", "int8"],
                           calib="fashion-mnist", elastic=True, force=True)
    return out_dir, time.perf_counter() - t0
