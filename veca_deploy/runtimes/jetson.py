"""NVIDIA device facts shared by the TensorRT builder and runner: lazy imports of TensorRT and
cuda-python, the device fingerprint an engine is tied to, and the Jetson power state.

A TensorRT plan only runs on the GPU model and TensorRT version that built it, so every engine
carries a fingerprint and the runner compares it before deserializing. The power state
(``nvpmodel`` mode, clocks) does not affect compatibility but can change latency several-fold
on Jetson, so measurements record it. Everything here degrades to ``None`` rather than raising
when a fact cannot be read; only ``import_*`` and ``cuda_check`` raise (typed).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from typing import Any

from ..errors import first_line, BackendUnavailable

TRT_INSTALL_HINT = "pip install 'veca-deploy[tensorrt]' or use the TensorRT that JetPack ships"
CUDA_INSTALL_HINT = "pip install cuda-python (the major version must match the device's CUDA)"
TEGRA_RELEASE = "/etc/nv_tegra_release"

#: L4T release -> JetPack release, for the releases we know; unknown ones are recorded as L4T only.
L4T_TO_JETPACK = {
    "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
}

#: Fingerprint keys that must be equal for a plan to deserialize and run correctly.
MATCH_KEYS = ("gpu_name", "compute_capability", "tensorrt")


# ---------------------------------------------------------------------------- lazy imports
def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`BackendUnavailable` with how to get it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the bindings wheel without libnvinfer
        raise BackendUnavailable(f"TensorRT is not usable here ({first_line(e, 200)}); {TRT_INSTALL_HINT}") from None
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` since 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except (ImportError, OSError) as e:
            raise BackendUnavailable(f"cuda-python is not usable here ({first_line(e, 200)}); {CUDA_INSTALL_HINT}") from None
    return cudart


def cuda_check(result: Any, what: str = "CUDA call") -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple; raise a typed error when ``err`` is set."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        raise BackendUnavailable(f"{what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# ---------------------------------------------------------------------------- fingerprint
def tegra_release(path: str = TEGRA_RELEASE) -> dict[str, str | None] | None:
    """L4T release (``# R36 (release), REVISION: 4.3, ...`` -> 36.4.3) and its JetPack, if known."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.readline()
    except OSError:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", head)
    if not m:
        return {"l4t": None, "jetpack": None, "raw": head.strip()[:200]}
    rev = m.group(2).split(".")
    l4t = ".".join([m.group(1), *rev, *(["0"] if len(rev) == 1 else [])])
    return {"l4t": l4t, "jetpack": L4T_TO_JETPACK.get(l4t), "raw": head.strip()[:200]}


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def device_fingerprint(device: int = 0) -> dict[str, Any]:
    """What a TensorRT plan is tied to, read from this machine. Missing libraries or GPU leave
    ``None`` values (never raises), so the CLI can report what is missing instead of crashing."""
    fp: dict[str, Any] = {"gpu_name": None, "compute_capability": None, "integrated": None,
                          "gpu_memory_bytes": None, "tensorrt": None, "cuda_runtime": None,
                          "cuda_driver": None, "l4t": None, "jetpack": None}
    try:
        fp["tensorrt"] = import_tensorrt().__version__
    except BackendUnavailable:
        pass
    try:
        cudart = import_cudart()
        fp["cuda_runtime"] = _cuda_version(int(cuda_check(cudart.cudaRuntimeGetVersion())))
        fp["cuda_driver"] = _cuda_version(int(cuda_check(cudart.cudaDriverGetVersion())))
        prop = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = prop.name
        fp["gpu_name"] = (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()
        fp["compute_capability"] = f"{prop.major}.{prop.minor}"
        fp["integrated"] = bool(prop.integrated)
        fp["gpu_memory_bytes"] = int(prop.totalGlobalMem)
    except (BackendUnavailable, AttributeError, TypeError, ValueError):
        pass
    rel = tegra_release()
    if rel:
        fp["l4t"], fp["jetpack"] = rel["l4t"], rel["jetpack"]
    return fp


def fingerprint_matches(sidecar: dict[str, Any], current: dict[str, Any]) -> tuple[bool, str]:
    """Whether a plan built where ``sidecar`` was recorded runs here. ``sidecar`` may be the
    whole sidecar JSON (with a ``fingerprint`` key) or just the fingerprint."""
    if not isinstance(sidecar, dict) or not isinstance(current, dict):
        return False, "fingerprint is not an object"
    built = sidecar.get("fingerprint", sidecar)
    if not isinstance(built, dict):
        return False, "sidecar 'fingerprint' is not an object"
    labels = {"gpu_name": "GPU", "compute_capability": "compute capability", "tensorrt": "TensorRT version"}
    for key in MATCH_KEYS:
        want, have = built.get(key), current.get(key)
        if want in (None, ""):
            return False, f"the engine's fingerprint lacks {labels[key]}"
        if have in (None, ""):
            return False, f"cannot read this machine's {labels[key]}"
        if str(want) != str(have):
            return False, f"{labels[key]} differs: engine built for {want}, this machine has {have}"
    return True, "match"


def gpu_slug(fp: dict[str, Any]) -> str:
    """``Orin`` + 8.7 -> ``orin-sm87``: a file-name-safe key for per-device caches."""
    name = re.sub(r"[^a-z0-9]+", "-", str(fp.get("gpu_name") or "gpu").lower()).strip("-") or "gpu"
    cc = str(fp.get("compute_capability") or "").replace(".", "")
    return f"{name}-sm{cc}" if cc else name


# ---------------------------------------------------------------------------- power state
def jetson_power_state(timeout: float = 5.0) -> dict[str, Any] | None:
    """nvpmodel mode and current/min/max clocks on a Jetson; ``None`` elsewhere.

    Reads ``nvpmodel -q`` (no root needed) and ``/sys`` devfreq/cpufreq files; fields that
    cannot be read are ``None``. Record this next to every latency: the same engine can run
    several times slower in a 15 W mode than in MAXN, and ``jetson_clocks`` pins clocks at their maximum.
    """
    on_jetson = os.path.exists(TEGRA_RELEASE) or shutil.which("nvpmodel") is not None
    if not on_jetson:
        return None
    state: dict[str, Any] = {"nvpmodel": _nvpmodel(timeout), "gpu_clock": _gpu_clock(), "cpu_clock": _cpu_clock(),
                             "emc_clock_hz": _read_int("/sys/kernel/debug/bpmp/debug/clk/emc/rate")}
    rel = tegra_release()
    if rel:
        state["l4t"], state["jetpack"] = rel["l4t"], rel["jetpack"]
    return state


def _nvpmodel(timeout: float) -> dict[str, Any] | None:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=timeout, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"NV Power Mode:\s*(.+)", out)
    ids = [ln.strip() for ln in out.splitlines() if ln.strip().isdigit()]
    if not m and not ids:
        return None
    return {"name": m.group(1).strip() if m else None, "id": int(ids[-1]) if ids else None}


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _gpu_clock() -> dict[str, Any] | None:
    """The GPU's devfreq node (``17000000.ga10b`` on Orin, ``17000000.gv11b`` on Xavier, ...)."""
    for node in sorted(glob.glob("/sys/class/devfreq/*")):
        base = os.path.basename(node)
        if any(k in base for k in ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")):
            return {"node": base, "cur_hz": _read_int(f"{node}/cur_freq"), "min_hz": _read_int(f"{node}/min_freq"),
                    "max_hz": _read_int(f"{node}/max_freq")}
    return None


def _cpu_clock() -> dict[str, Any] | None:
    cpus = sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq"))
    if not cpus:
        return None
    cur = [_read_int(f"{c}/scaling_cur_freq") for c in cpus]
    online = [c for c in cur if c is not None]
    return {"cores": len(cpus), "cur_khz_max": max(online) if online else None,
            "cur_khz_min": min(online) if online else None, "max_khz": _read_int(f"{cpus[0]}/cpuinfo_max_freq")}

