"""``--target``: which INT8 scheme(s) to build for the device that will run the bundle.

The export machine is rarely the device. A target is an ISA / device name (``avx2``,
``avx512-vnni``, ``amx``, ``arm-neon``, ``tensorrt`` / ``jetson``, ...), ``host`` (this machine's
fingerprint) or a device profile JSON as ``veca-deploy bench`` writes it (its ``fingerprint``
says what the device has). :func:`int8_choice` turns it into the ONNX INT8 scheme that is fast
there, with the reason (measurements in ``docs/quantization.md``, "INT8 scheme per target"), and
the NNCF preset of the OpenVINO INT8 path (symmetric activations where the CPU multiplies signed
INT8 natively: AMX). An explicit ``--int8-scheme`` / ``--nncf-preset`` wins over the
target and is recorded as such. Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..runtimes.fingerprint import cpu_family, device_fingerprint, isa_class, isa_features

_X86 = ("sse4_2", "avx", "avx2", "fma", "f16c")
_AVX512 = _X86 + ("avx512f", "avx512bw", "avx512vl", "avx512dq")
#: named targets: (kind, raw ISA flags it guarantees, what it stands for)
TARGETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "avx2": ("x86", _X86, "x86-64 with AVX2/FMA, no AVX-512 (e.g. AMD Zen 2/3, Intel client cores)"),
    "avx512": ("x86", _AVX512, "x86-64 with AVX-512, no VNNI (e.g. Intel Skylake-SP)"),
    "avx512-vnni": ("x86", _AVX512 + ("avx512_vnni",), "x86-64 with AVX-512 VNNI, no AMX (e.g. Intel Cascade Lake, "
                    "Ice Lake; AMD Zen 4/5 also have AVX512-BF16)"),
    "amx": ("x86", _AVX512 + ("avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                              "amx_bf16"), "Intel Xeon with AMX-BF16/INT8 (Sapphire Rapids and later)"),
    "arm-neon": ("arm", ("neon", "asimd", "asimdhp", "asimddp"), "AArch64 with NEON and the int8 dot product "
                 "(e.g. Cortex-A76/A78AE, Jetson Orin's CPU, Raspberry Pi 5)"),
    "arm-sve": ("arm", ("neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2"),
                "AArch64 with SVE/SVE2 and I8MM (e.g. Neoverse V1/V2, Graviton 3/4)"),
    "tensorrt": ("tensorrt", (), "an NVIDIA GPU running TensorRT engines built by build-trt"),
}
#: other spellings of the names above
ALIASES = {"jetson": "tensorrt", "trt": "tensorrt", "vnni": "avx512-vnni", "avx512vnni": "avx512-vnni",
           "amx-int8": "amx", "neon": "arm-neon", "aarch64": "arm-neon", "arm64": "arm-neon", "sve": "arm-sve"}
HOST = "host"


@dataclass(frozen=True)
class Target:
    """A device INT8 artifacts are built for: its kind (``x86``, ``arm``, ``tensorrt``) and ISA."""

    name: str
    kind: str
    isa: tuple[str, ...]
    origin: str  # "name", "host" or "profile <path>"
    device: str | None = None  # CPU model / profile device id, when known

    @property
    def features(self) -> list[str]:
        return isa_features(self.isa)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "features": self.features, "origin": self.origin,
                **({"device": self.device} if self.device else {})}


def runs_tensorrt(fp: dict[str, Any]) -> bool:
    """Whether the device behind fingerprint ``fp`` runs INT8 as TensorRT engines: a Jetson (its
    power mode is recorded), or an NVIDIA GPU with TensorRT installed. A workstation or cloud host
    with a GPU but no TensorRT serves the CPU backends, so its INT8 is built for its CPU."""
    gpu = fp.get("gpu")
    if not gpu:
        return False
    jetson = isinstance(gpu, dict) and (gpu.get("l4t") or gpu.get("jetpack") or gpu.get("integrated"))
    trt = (isinstance(gpu, dict) and gpu.get("tensorrt")) or (fp.get("runtimes") or {}).get("tensorrt")
    return bool(fp.get("power") or jetson or trt)


def _from_fingerprint(name: str, fp: dict[str, Any], origin: str, device: str | None) -> Target:
    if runs_tensorrt(fp):
        return Target(name, "tensorrt", tuple((fp.get("cpu") or {}).get("isa") or ()), origin, device)
    cpu = fp.get("cpu") or {}
    isa = tuple(cpu.get("isa") or ())
    arch = str(cpu.get("arch") or "").lower()
    family = cpu_family(arch) if arch else None
    if family == "arm" or (family is None and ("neon" in isa or "asimd" in isa)):
        kind = "arm"
    elif family == "x86" or (family is None and ("avx2" in isa or "sse4_2" in isa)):
        kind = "x86"
    else:
        raise UsageError(f"--target {name}: cannot tell the CPU kind from the fingerprint (arch {arch or 'unknown'}, "
                         f"no ISA flags); name it instead: {', '.join(TARGETS)}")
    return Target(name, kind, isa, origin, device or cpu.get("model"))


def _from_profile(spec: str) -> Target:
    from ..errors import BundleError
    from ..selector.profile import read_profile

    try:
        prof = read_profile(spec)
    except BundleError as e:
        raise UsageError(f"--target {spec}: {str(e).split(': ', 1)[-1]} (want a device profile JSON that "
                         "veca-deploy bench writes, or a name: " + ", ".join(TARGETS) + ", host)") from None
    if not isinstance(prof.fingerprint, dict) or not (prof.fingerprint.get("cpu") or prof.fingerprint.get("gpu")):
        raise UsageError(f"--target {spec}: the profile has no device fingerprint (re-run veca-deploy bench there)")
    return _from_fingerprint(Path(spec).name, prof.fingerprint, f"profile {spec}", prof.device)


def resolve_target(spec: str | os.PathLike | None) -> Target:
    """``spec``: a :data:`TARGETS` name or alias, ``host`` (or None: this machine), or a profile
    file. Anything else is a one-line :class:`UsageError`."""
    if spec is None or str(spec).strip().lower() == HOST:
        return _from_fingerprint(HOST, device_fingerprint(), HOST, None)
    text = str(spec).strip()
    key = ALIASES.get(text.lower(), text.lower())
    if key in TARGETS:
        kind, isa, what = TARGETS[key]
        return Target(key, kind, isa, "name", what)
    if text.endswith(".json") or os.sep in text or Path(text).is_file():
        return _from_profile(text)
    raise UsageError(f"unknown --target {text!r}; choose from {', '.join(TARGETS)}, {', '.join(sorted(ALIASES))}, "
                     "host, or a device profile JSON (veca-deploy bench writes DIR/profiles/<device>.json)")


#: measured ONNX Runtime 1.32 latency, veca_small C=16 at 512 px, batch 1, ms (docs/quantization.md)
MEASURED = {
    "amx": "Intel Xeon with AMX, 2 cores, 2026-12-03: U8S8 102.9 ms, S8S8 240.5 ms, FP32 160.3 ms "
           "(S8S8 is slower than FP32)",
    "avx512-vnni": "AMD Zen 4 with AVX-512 VNNI (toolchain-facts): signed activations ran ~1.4x slower than unsigned",
    "avx2": "AMD Zen 3 AVX2, 2026-11-27: U8S8 405 ms (1.10x FP32), S8S8 635 ms (0.71x)",
}


def _evidence(klass: str) -> str:
    """What the ONNX scheme choice for x86 class ``klass`` rests on: a measurement, or the nearest
    one and why it carries over."""
    if klass in MEASURED:
        return f"measured {MEASURED[klass]}"
    if klass == "avx-vnni":
        return ("not measured on AVX-VNNI; its vpdpbusd multiplies unsigned x signed like AVX-512 VNNI, "
                f"where: {MEASURED['avx512-vnni']}")
    if klass == "avx512":
        return ("not measured on AVX-512 without VNNI; its INT8 products are vpmaddubsw (unsigned x signed) "
                f"as on AVX2, where: {MEASURED['avx2']}")
    return f"assumed for this CPU (no AVX2 flag seen); on AVX2: {MEASURED['avx2']}"


#: measured NNCF presets (OpenVINO 2026.4, veca_small C=16 at 512 px, float ops in bf16; the
#: reference model's top-1 on all 10,000 test images), docs/quantization.md "NNCF preset per target"
NNCF_MEASURED = ("Intel Xeon with AMX, 2 cores, 2026-12-07: performance 49.6 ms vs mixed 60.2 ms (the FCs run "
                 "brgemm_avx512_amx_i8 instead of the zero-point-compensated _I8 kernel); reference model top-1 "
                 "88.12-88.21 % on 10,000 images (FP32 88.06-88.23 %)")


def nncf_preset_for(target: Target) -> tuple[str, str]:
    """(NNCF preset, why) for ``target``: ``performance`` (symmetric INT8 activations) where the CPU
    multiplies signed x signed INT8 natively (AMX-INT8's tile products), else NNCF's ``mixed``
    (asymmetric activations). VNNI's ``vpdpbusd`` multiplies unsigned x signed, so signed
    activations need a compensation there (they ran ~1.4x slower on a Zen 4, toolchain-facts):
    ``mixed`` stays until it is measured otherwise."""
    if target.kind == "x86" and isa_class(target.isa) == "amx":
        return "performance", ("x86 amx: AMX multiplies signed INT8 activations natively, with no zero-point "
                               f"compensation; measured {NNCF_MEASURED}")
    if target.kind == "tensorrt":
        return "mixed", "NNCF's default (OpenVINO artifacts do not run on a TensorRT target)"
    return "mixed", ("NNCF's default (asymmetric activations: unsigned x signed, what VNNI's vpdpbusd and AVX2's "
                     "vpmaddubsw multiply); symmetric ones are measured faster only with AMX")


def int8_choice(target: Target, explicit_scheme: str | None = None,
                explicit_preset: str | None = None) -> dict[str, Any]:
    """What to build for ``target``: ``{"target", "onnx_scheme", "onnx_why", "openvino", "openvino_preset",
    "openvino_why", "chosen_by", "openvino_chosen_by"}`` (recorded in the manifest as
    ``calibration.target`` and each INT8 artifact's ``details.target``). ``explicit_scheme``
    (``--int8-scheme``) and ``explicit_preset`` (``--nncf-preset``) win over the target."""
    if target.kind == "tensorrt":
        scheme, why = "s8s8", ("TensorRT builds only signed INT8 Q/DQ with zero point 0 (U8S8's zero points are "
                               "refused: check-trt)")
    elif target.kind == "x86":
        klass = isa_class(target.isa)
        scheme = "u8s8"
        why = (f"x86 {klass}: ONNX Runtime fuses U8S8 Q/DQ pairs into its integer QLinearMatMul kernels "
               f"and leaves S8S8 MatMuls as DequantizeLinear + float MatMul; {_evidence(klass)}")
    else:
        scheme, why = "s8s8", ("Arm: ONNX Runtime's Arm kernels take signed x signed INT8 natively (NEON sdot, "
                               "I8MM), so U8S8's 7-bit weights buy nothing; not measured in this project, "
                               "measure on the device (veca-deploy bench)")
    preset, preset_why = nncf_preset_for(target)
    out = {"target": target.to_dict(), "onnx_scheme": scheme, "onnx_why": why, "chosen_by": "--target",
           "openvino": "nncf", "openvino_preset": preset, "openvino_chosen_by": "--target",
           "openvino_why": (f"NNCF INT8, preset {preset}: {preset_why}. OpenVINO picks its INT8 kernels on the device "
                            "(on AVX2 0.8-1.0x f32, where bench/select keep f32)")}
    if explicit_preset and explicit_preset != preset:
        out.update(openvino_preset=explicit_preset, openvino_chosen_by="--nncf-preset",
                   openvino_why=f"--nncf-preset {explicit_preset} given (the target alone would use {preset}: "
                                f"{preset_why})")
    elif explicit_preset:
        out["openvino_chosen_by"] = "--nncf-preset (same as --target)"
    if explicit_scheme and explicit_scheme != scheme:
        out.update(onnx_scheme=explicit_scheme, chosen_by="--int8-scheme",
                   onnx_why=f"--int8-scheme {explicit_scheme} given (the target alone would build {scheme}: {why})"
                   + ("; TensorRT cannot build U8S8 graphs" if target.kind == "tensorrt"
                      and explicit_scheme == "u8s8" else ""))
    elif explicit_scheme:
        out["chosen_by"] = "--int8-scheme (same as --target)"
    return out


def describe_choice(choice: dict[str, Any]) -> str:
    """One line for the CLI: what was built for which target and why."""
    t = choice.get("target") or {}
    feats = ", ".join(t.get("features") or []) or "no ISA flags"
    where = t.get("device") or t.get("origin") or ""
    return (f"INT8 for target {t.get('name')} ({t.get('kind')}{': ' + where if where else ''}; {feats}): "
            f"ONNX {choice.get('onnx_scheme', '?').upper()} [{choice.get('chosen_by')}] - {choice.get('onnx_why')}; "
            f"OpenVINO NNCF {choice.get('openvino_preset', 'mixed')} [{choice.get('openvino_chosen_by', '--target')}] - "
            f"{choice.get('openvino_why')}")


__all__ = ["ALIASES", "HOST", "TARGETS", "Target", "describe_choice", "int8_choice", "nncf_preset_for",
           "resolve_target", "runs_tensorrt"]
