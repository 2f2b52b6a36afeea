"""NVIDIA device facts shared by the TensorRT builder and runner: lazy imports of TensorRT and
cuda-python, the device fingerprint an engine is tied to, and the Jetson power state.

A TensorRT plan only runs on the GPU model and TensorRT version that built it, so every engine
carries a fingerprint and the runner compares it before deserializing. The power state
(``nvpmodel`` mode, clocks) does not affect compatibility but can change latency several-fold
on Jetson, so measurements record it. Everything here degrades to ``None`` rather than raising
when a fact cannot be read (cuda-python without a driver raises ``RuntimeError`` from its first
call; that is caught too); only ``import_*``, ``cuda_check`` and ``require_gpu`` raise (typed).

A driver that is too old for the cuda-python in use (cuda-python 13 on a CUDA 12 driver,
``cudaErrorInsufficientDriver``) is reported as exactly that, with both versions, never as
"no GPU".
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
        except (ImportError, OSError, RuntimeError) as e:
            raise BackendUnavailable(f"cuda-python is not usable here ({first_line(e, 200)}); {CUDA_INSTALL_HINT}") from None
    except (OSError, RuntimeError) as e:
        raise BackendUnavailable(f"cuda-python is not usable here ({first_line(e, 200)}); {CUDA_INSTALL_HINT}") from None
    return cudart


def cuda_python_version() -> str | None:
    """The installed cuda-python package version (newer releases ship the bindings as ``cuda-bindings``)."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def major_of(version: Any) -> int | None:
    """``"10.3.0.30"`` -> 10, ``"12.6"`` -> 12; None when unreadable."""
    m = re.match(r"\s*(\d+)", str(version or ""))
    return int(m.group(1)) if m else None


def network_flags(trt: Any) -> tuple[int, str]:
    """``create_network`` flags for a strongly typed network, and how strong typing is obtained.

    TensorRT 10 needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; from TensorRT 11 on every
    network is strongly typed and the flag is deprecated (ignored), so it is not passed."""
    enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flag = getattr(enum, "STRONGLY_TYPED", None)
    major = major_of(getattr(trt, "__version__", None))
    if major is not None and major >= 11:
        return 0, f"default (TensorRT {major})"
    if flag is None:
        raise BackendUnavailable(f"TensorRT {getattr(trt, '__version__', '?')} has no strongly typed networks; "
                                 "veca-deploy needs TensorRT 10 or later (JetPack 6.1+)")
    return 1 << int(flag), "STRONGLY_TYPED flag"


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


def gpu_fingerprint(device: int = 0) -> dict[str, Any]:
    """What a TensorRT plan is tied to, read from this machine. Missing libraries, driver or GPU
    leave ``None`` values and never raise (cuda-python without a driver raises ``RuntimeError``
    from its first call: caught), so the CLI can report what is missing instead of crashing;
    ``cuda_error`` keeps the first CUDA failure for :func:`gpu_problem`."""
    fp: dict[str, Any] = {"gpu_name": None, "compute_capability": None, "integrated": None,
                          "gpu_memory_bytes": None, "tensorrt": None, "cuda_runtime": None,
                          "cuda_driver": None, "cuda_python": None, "cuda_error": None, "l4t": None, "jetpack": None}
    try:
        fp["tensorrt"] = import_tensorrt().__version__
    except (BackendUnavailable, AttributeError, RuntimeError):
        pass
    fp["cuda_python"] = cuda_python_version()
    try:
        cudart = import_cudart()
    except BackendUnavailable as e:
        fp["cuda_error"] = str(e)
        cudart = None
    if cudart is not None:
        steps = (("cuda_runtime", lambda: _runtime_version(cudart)), ("cuda_driver", lambda: _driver_version(cudart)),
                 ("device", lambda: _device_facts(cudart, device, fp)))
        for key, step in steps:
            try:
                value = step()
            except BackendUnavailable as e:  # a CUDA error code, e.g. cudaErrorInsufficientDriver
                fp["cuda_error"] = fp["cuda_error"] or str(e)
                continue
            except (RuntimeError, OSError) as e:  # no driver library: every later call fails alike
                fp["cuda_error"] = fp["cuda_error"] or f"{type(e).__name__}: {first_line(e, 200)}"
                break
            except (AttributeError, TypeError, ValueError) as e:  # unexpected binding shapes
                fp["cuda_error"] = fp["cuda_error"] or f"{type(e).__name__}: {first_line(e, 200)}"
                continue
            if key != "device":
                fp[key] = value
    rel = tegra_release()
    if rel:
        fp["l4t"], fp["jetpack"] = rel["l4t"], rel["jetpack"]
    return fp


def _runtime_version(cudart: Any) -> str:
    return _cuda_version(int(cuda_check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")))


def _driver_version(cudart: Any) -> str | None:
    v = int(cuda_check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion"))
    return _cuda_version(v) if v > 0 else None  # 0: no driver installed


def _device_facts(cudart: Any, device: int, fp: dict[str, Any]) -> None:
    prop = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    fp["gpu_name"] = (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()
    fp["compute_capability"] = f"{prop.major}.{prop.minor}"
    fp["integrated"] = bool(prop.integrated)
    fp["gpu_memory_bytes"] = int(prop.totalGlobalMem)


def gpu_problem(fp: dict[str, Any]) -> str | None:
    """Why no engine can be built or run here, in one line naming the versions involved; None
    when a GPU is usable. A driver older than cuda-python's CUDA is said as such, not as "no GPU"."""
    if fp.get("gpu_name"):
        return None
    err = str(fp.get("cuda_error") or "")
    runtime, driver, pkg = fp.get("cuda_runtime"), fp.get("cuda_driver"), fp.get("cuda_python")
    pkg_s = f"cuda-python {pkg}" if pkg else "cuda-python"
    built_for = f" (built for CUDA {runtime})" if runtime else ""
    too_old = "InsufficientDriver" in err or (
        major_of(runtime) is not None and major_of(driver) is not None and major_of(driver) < major_of(runtime))
    if too_old:
        wanted = f"cuda-python=={driver}.*" if driver else "the cuda-python release matching the driver's CUDA"
        return (f"the NVIDIA driver is too old for {pkg_s}{built_for}: the driver supports CUDA "
                f"{driver or 'unknown'} ({err.split(': ')[-1] if err else 'cudaErrorInsufficientDriver'}); "
                f"install {wanted} or update the driver")
    if err.startswith("cuda-python is not usable here"):
        return err
    if driver is None and ("RuntimeError" in err or "OSError" in err or "libcuda" in err or runtime is None):
        return (f"no NVIDIA driver is usable here ({pkg_s}{built_for}: {err or 'cudaDriverGetVersion reports none'}); "
                "build and run engines on the device, with its driver installed")
    return (f"no CUDA GPU is visible ({err or 'cudaGetDeviceProperties failed'}; driver CUDA {driver or 'unknown'}, "
            f"{pkg_s}{built_for}); build engines on the device")


def require_gpu(fp: dict[str, Any]) -> None:
    """:class:`BackendUnavailable` with :func:`gpu_problem`'s reason when no GPU is usable."""
    problem = gpu_problem(fp)
    if problem:
        raise BackendUnavailable(problem)


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

