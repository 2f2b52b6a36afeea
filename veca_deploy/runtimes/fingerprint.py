"""What device a latency was measured on, and a stable short id to name its profile file.

A profile is only valid on the device (and power mode) that measured it: the same bundle can be
several times faster with AVX-512 VNNI than without, or in Jetson MAXN than in a 15 W mode. The
fingerprint records everything that explains a number (CPU model, ISA flags, runtime versions,
threads, GPU clocks and power mode); the id keeps only what makes it a different device
(CPU model, usable cores, architecture, GPU, power mode), so upgrading onnxruntime does not
orphan a profile but moving the bundle to another board does. Never raises: unknown facts are
``None``. No torch, no heavy imports (versions come from package metadata).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from importlib import metadata as _md
from typing import Any

from . import jetson

CPUINFO = "/proc/cpuinfo"
#: ISA features that change which kernels a runtime picks (x86 ``flags`` / Arm ``Features`` names)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vnni",
             "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
             "neon", "asimd", "asimdhp", "asimddp", "fphp", "bf16", "i8mm", "sve", "sve2",
             "avx512dq", "avx_vnni_int8", "amx_fp16", "svebf16", "svei8mm", "sme")
#: the names that decide which kernels run, as people write them (``cpu_info()["features"]``), from
#: the raw flags: x86 ``flags`` (Linux names) and Arm ``Features`` (``asimd`` is NEON, ``asimddp``
#: the int8 dot product, ``i8mm`` the int8 matrix multiply)
FEATURES = (("AVX2", ("avx2",)), ("AVX-512", ("avx512f",)), ("AVX512-VNNI", ("avx512_vnni", "avx512vnni")),
            ("AVX-VNNI", ("avx_vnni",)), ("AVX512-BF16", ("avx512_bf16",)), ("AVX512-FP16", ("avx512_fp16",)),
            ("AMX-BF16", ("amx_bf16",)), ("AMX-INT8", ("amx_int8",)), ("AMX-FP16", ("amx_fp16",)),
            ("NEON", ("neon", "asimd")), ("NEON-FP16", ("asimdhp", "fphp")), ("NEON-DOTPROD", ("asimddp",)),
            ("NEON-I8MM", ("i8mm",)), ("NEON-BF16", ("bf16",)), ("SVE", ("sve",)), ("SVE2", ("sve2",)))
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ORT_NUM_THREADS")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def isa_features(isa: Any) -> list[str]:
    """The :data:`FEATURES` names present in raw ISA flags (``cpu_info()["isa"]``), in table order."""
    have = set(isa or ())
    return [name for name, flags in FEATURES if have.intersection(flags)]


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model, core counts, the ISA flags we care about (from ``/proc/cpuinfo`` on Linux) and
    ``features``: the same as :data:`FEATURES` names (AVX2, AVX512-VNNI, AMX-INT8, NEON, SVE, ...)."""
    text = _read(CPUINFO) if cpuinfo is None else cpuinfo
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip().lower(), v.strip())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or None
    if not model:
        dt = _read("/proc/device-tree/model").strip("\x00 \n")  # Jetson / Raspberry Pi boards
        model = dt or platform.processor() or None
    raw = set((fields.get("flags") or fields.get("features") or "").split())
    isa = [f for f in ISA_FLAGS if f in raw]
    if ((cpuinfo is None and cpu_family() == "arm") or "asimd" in raw) and "neon" not in isa:
        isa.insert(0, "neon")  # NEON (asimd) is mandatory on AArch64 (this machine's, or text that says asimd)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"model": model, "vendor": fields.get("vendor_id") or fields.get("cpu implementer"),
            "arch": platform.machine(), "logical_cores": os.cpu_count(), "usable_cores": usable, "isa": isa,
            "features": isa_features(isa)}


def cpu_family(arch: str | None = None) -> str:
    """``x86``, ``arm`` or the machine name (default: this machine's): the CPUs whose lower-precision
    arithmetic is the same kind. OpenVINO's bf16/f16 execution keeps f32 accumulation on x86
    (AVX512-BF16, AMX, AVX512-FP16) but runs through other kernels on Arm, so an accuracy measured
    in bf16/f16 on one family says nothing about the other."""
    a = str(platform.machine() if arch is None else arch).lower()
    if a in ("x86_64", "amd64", "x86", "i386", "i686"):
        return "x86"
    if a in ("aarch64", "arm64") or a.startswith("armv"):
        return "arm"
    return a or "unknown"


#: the CPU classes the project's speed targets and INT8 choices name, from the most capable down
ISA_CLASSES = ("amx", "avx512-vnni", "avx512", "avx-vnni", "avx2", "arm", "other")


def isa_class(isa: Any, arch: str | None = None) -> str:
    """One name for what a CPU multiplies fast, used by ``--target`` and the benchmarks alike:
    ``amx`` (AMX-INT8/BF16 tiles), ``avx512-vnni`` (AVX-512 with VNNI or BF16, no AMX: Cascade/Ice
    Lake, AMD Zen 4/5), ``avx512`` (AVX-512, no VNNI: Skylake-SP), ``avx-vnni`` (AVX2 plus the
    256-bit VNNI of Intel client cores, no AVX-512), ``avx2``, ``arm`` or ``other``. ``isa``: raw
    flags (``cpu_info()["isa"]``); ``arch``: the machine (it decides the family when given;
    without it the flags alone decide)."""
    have = set(isa or ())
    family = cpu_family(arch) if arch else None
    if family == "arm" or (family is None and {"neon", "asimd"} & have and "avx2" not in have):
        return "arm"
    if family not in (None, "x86"):
        return "other"
    if {"amx_int8", "amx_bf16"} & have:
        return "amx"
    if {"avx512_vnni", "avx512vnni", "avx512_bf16"} & have:
        return "avx512-vnni"
    if "avx512f" in have:
        return "avx512"
    if "avx_vnni" in have:
        return "avx-vnni"
    if "avx2" in have:
        return "avx2"
    return "other"


def runtime_versions() -> dict[str, str | None]:
    """Installed runtime packages (metadata only: importing OpenVINO costs ~0.5 s)."""
    out: dict[str, str | None] = {}
    for name, dists in (("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")),
                        ("openvino", ("openvino",)), ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-lean")),
                        ("numpy", ("numpy",))):
        out[name] = None
        for d in dists:
            try:
                out[name] = _md.version(d)
                break
            except _md.PackageNotFoundError:
                continue
    return out


def has_nvidia_gpu() -> bool:
    """Cheap check before touching CUDA: a driver node or a Jetson release file."""
    return (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
            or os.path.exists(jetson.TEGRA_RELEASE))


def device_fingerprint(threads: int | None = None) -> dict[str, Any]:
    """Everything that explains a latency measured here. ``threads``: what the runner was told."""
    fp: dict[str, Any] = {
        "cpu": cpu_info(),
        "os": {"system": platform.system(), "release": platform.release(), "python": platform.python_version()},
        "runtimes": runtime_versions(),
        "threads": {"requested": threads, **{k.lower(): os.environ.get(k) for k in THREAD_ENV if os.environ.get(k)}},
        "gpu": None,
        "power": None,
    }
    if has_nvidia_gpu():
        try:
            fp["gpu"] = jetson.device_fingerprint()
        except Exception:  # a broken CUDA install must not break CPU benchmarking
            fp["gpu"] = None
        try:
            fp["power"] = jetson.jetson_power_state()
        except Exception:
            fp["power"] = None
    return fp


def slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"\(r\)|\(tm\)|cpu @ [\d.]+ghz|processor|\d+-core", " ", text.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s[:limit].strip("-") or "cpu"


def device_id(fp: dict[str, Any] | None = None) -> str:
    """``amd-epyc-9r14-2c-x86-64-1a2b3c``: file-name-safe, stable across runs and package upgrades,
    different for another CPU, core allowance, GPU or Jetson power mode."""
    fp = fp or device_fingerprint()
    cpu = fp.get("cpu") or {}
    gpu = fp.get("gpu") or {}
    power = (fp.get("power") or {}).get("nvpmodel") or {}
    stable = {"cpu": cpu.get("model"), "cores": cpu.get("usable_cores"), "arch": cpu.get("arch"),
              "gpu": gpu.get("gpu_name"), "cc": gpu.get("compute_capability"), "power": power.get("id")}
    digest = hashlib.sha256(repr(sorted(stable.items())).encode()).hexdigest()[:6]
    parts = [slug(str(cpu.get("model") or "cpu")), f"{cpu.get('usable_cores') or 0}c"]
    if gpu.get("gpu_name"):
        parts.append(jetson.gpu_slug(gpu))
    if power.get("id") is not None:
        parts.append(f"pm{power['id']}")
    parts += [slug(str(cpu.get("arch") or ""), 10), digest]
    return "-".join(p for p in parts if p)
