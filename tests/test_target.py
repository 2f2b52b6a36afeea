"""``--target``: the device INT8 artifacts are built for, from a name, this host or a device
profile; the ISA names the fingerprint reports; the scheme each target gets, recorded and
explained; an explicit ``--int8-scheme`` wins; bad targets are one-line usage errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from veca_deploy.calibration.target import TARGETS, describe_choice, int8_choice, resolve_target
from veca_deploy.errors import UsageError
from veca_deploy.runtimes.fingerprint import cpu_info, isa_features

ZEN3 = ("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 sha_ni\n")
ZEN4 = ("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n"
        "flags\t\t: sse4_2 avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni\n")
SPR = ("vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
       "flags\t\t: sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx_vnni avx512_vnni avx512_bf16 "
       "avx512_fp16 amx_bf16 amx_tile amx_int8\n")
GRAVITON3 = ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
             "fphp asimdhp cpuid asimdrdm lrcpc dcpop sha3 asimddp sha512 sve asimdfhm svei8mm svebf16 i8mm bf16\n"
             "CPU implementer\t: 0x41\n")


@pytest.mark.parametrize("text, want, absent", [
    (ZEN3, ["AVX2"], ["AVX-512", "AVX512-VNNI", "AMX-INT8"]),
    (ZEN4, ["AVX2", "AVX-512", "AVX512-VNNI", "AVX512-BF16"], ["AMX-INT8", "AVX512-FP16"]),
    (SPR, ["AVX2", "AVX-512", "AVX512-VNNI", "AVX-VNNI", "AVX512-BF16", "AVX512-FP16", "AMX-BF16", "AMX-INT8"], []),
    (GRAVITON3, ["NEON", "NEON-FP16", "NEON-DOTPROD", "NEON-I8MM", "NEON-BF16", "SVE"], ["AVX2", "SVE2"]),
])
def test_fingerprint_names_the_isa_that_picks_kernels(text, want, absent):
    info = cpu_info(text)
    assert all(f in info["features"] for f in want), info["features"]
    assert not set(absent) & set(info["features"]), info["features"]
    assert info["features"] == isa_features(info["isa"])


ALDER = ("vendor_id\t: GenuineIntel\nmodel name\t: 12th Gen Intel(R) Core(TM) i7-12700\n"
         "flags\t\t: sse4_2 avx avx2 fma f16c avx_vnni\n")
SKYLAKE_SP = ("vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6148\n"
              "flags\t\t: sse4_2 avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl\n")


@pytest.mark.parametrize("text, arch, klass", [
    (ZEN3, "x86_64", "avx2"), (ZEN4, "x86_64", "avx512-vnni"), (SPR, "x86_64", "amx"),
    (ALDER, "x86_64", "avx-vnni"), (SKYLAKE_SP, "x86_64", "avx512"), (GRAVITON3, "aarch64", "arm"),
    ("flags\t\t: sse4_2\n", "x86_64", "other"), ("Features\t: fp asimd\n", None, "arm"),
])
def test_one_isa_class_for_targets_and_benchmarks(text, arch, klass):
    """One classifier (``fingerprint.isa_class``) names the CPU class for ``--target``'s evidence
    and for deploy_speedup's target row; each x86 class says what its scheme choice rests on."""
    from veca_deploy.calibration.target import Target
    from veca_deploy.runtimes.fingerprint import cpu_family, isa_class

    info = cpu_info(text)  # parsed text: the same flags on any host
    assert isa_class(info["isa"], arch) == klass
    if arch is None:
        return
    assert cpu_family(arch) == ("arm" if arch == "aarch64" else "x86")
    assert isa_class(info["isa"] + ["neon"], "x86_64") != "arm" and isa_class(["avx2"], "aarch64") == "arm"
    if klass != "arm":
        why = int8_choice(Target("t", "x86", tuple(info["isa"]), "name"))["onnx_why"]
        assert why.startswith(f"x86 {klass}:")
        assert ("not measured" in why or "assumed" in why) == (klass in ("avx-vnni", "avx512", "other"))


def test_each_named_target_gets_the_scheme_that_is_fast_there():
    schemes = {name: int8_choice(resolve_target(name))["onnx_scheme"] for name in TARGETS}
    assert schemes == {"avx2": "u8s8", "avx512": "u8s8", "avx512-vnni": "u8s8", "amx": "u8s8",
                       "arm-neon": "s8s8", "arm-sve": "s8s8", "tensorrt": "s8s8"}
    for alias, name in (("jetson", "tensorrt"), ("VNNI", "avx512-vnni"), ("aarch64", "arm-neon")):
        assert resolve_target(alias).name == name
    c = int8_choice(resolve_target("amx"))
    assert c["chosen_by"] == "--target" and "QLinearMatMul" in c["onnx_why"] and "AMX-INT8" in c["target"]["features"]
    assert "TensorRT" in int8_choice(resolve_target("jetson"))["onnx_why"]


def test_host_target_reads_this_machine():
    t = resolve_target(None)
    assert t.origin == "host" and t.kind in ("x86", "arm", "tensorrt")
    assert t.isa == tuple(cpu_info()["isa"])


def test_explicit_scheme_wins_and_says_what_the_target_wanted():
    c = int8_choice(resolve_target("tensorrt"), "u8s8")
    assert c["onnx_scheme"] == "u8s8" and c["chosen_by"] == "--int8-scheme"
    assert "would build s8s8" in c["onnx_why"] and "TensorRT cannot build U8S8" in c["onnx_why"]
    same = int8_choice(resolve_target("avx2"), "u8s8")
    assert same["onnx_scheme"] == "u8s8" and same["chosen_by"].startswith("--int8-scheme (same")
    assert "U8S8" in describe_choice(c) and "tensorrt" in describe_choice(c)


def test_nncf_preset_follows_the_target_and_an_explicit_one_wins():
    """Symmetric INT8 activations (NNCF "performance") where the CPU multiplies signed x signed INT8
    natively (AMX); NNCF's mixed default elsewhere (VNNI multiplies unsigned x signed); --nncf-preset
    wins and says what the target wanted."""
    presets = {name: int8_choice(resolve_target(name))["openvino_preset"] for name in TARGETS}
    assert presets == {"avx2": "mixed", "avx512": "mixed", "avx512-vnni": "mixed", "amx": "performance",
                       "arm-neon": "mixed", "arm-sve": "mixed", "tensorrt": "mixed"}
    amx = int8_choice(resolve_target("amx"))
    assert amx["openvino_chosen_by"] == "--target" and "brgemm_avx512_amx_i8" in amx["openvino_why"]
    assert "vpdpbusd" in int8_choice(resolve_target("avx512-vnni"))["openvino_why"]
    c = int8_choice(resolve_target("amx"), None, "mixed")
    assert c["openvino_preset"] == "mixed" and c["openvino_chosen_by"] == "--nncf-preset"
    assert "would use performance" in c["openvino_why"] and "NNCF mixed [--nncf-preset]" in describe_choice(c)
    assert int8_choice(resolve_target("avx2"), None, "mixed")["openvino_chosen_by"].startswith("--nncf-preset (same")


def test_quantize_plan_takes_the_preset_from_the_target():
    from veca_deploy.calibration.quantize import QuantizePlan
    from veca_deploy.calibration.recipe import NncfRecipe

    plan = lambda **kw: QuantizePlan.from_options(precisions=["int8"], calib="fashion-mnist", **kw)  # noqa: E731
    assert plan(target="amx").nncf_recipe.preset == "performance"
    assert plan(target="avx2").nncf_recipe.preset == "mixed"
    assert plan(target="amx", nncf_preset="mixed").nncf_recipe.preset == "mixed"
    assert plan().nncf_recipe == NncfRecipe()  # the Python API without a target: NNCF's default, as before
    given = plan(target="avx2", nncf_recipe=NncfRecipe(preset="performance"))
    assert given.nncf_recipe.preset == "performance" and given.target["openvino_chosen_by"] == "nncf_recipe"
    with pytest.raises(UsageError, match="unknown NNCF preset 'fast'"):
        plan(target="amx", nncf_preset="fast")
    with pytest.raises(UsageError, match="contradicts NncfRecipe"):  # never silently one of the two
        plan(target="amx", nncf_preset="mixed", nncf_recipe=NncfRecipe(preset="performance"))
    assert plan(nncf_preset="mixed", nncf_recipe=NncfRecipe(preset="mixed")).nncf_recipe.preset == "mixed"


def _profile(path: Path, fingerprint: dict) -> Path:
    from veca_deploy.selector.profile import Profile, write_profile

    return write_profile(path, Profile(device=path.stem, fingerprint=fingerprint))


def test_a_device_profile_is_a_target(tmp_path):
    arm = _profile(tmp_path / "graviton.json", {"cpu": cpu_info(GRAVITON3) | {"arch": "aarch64"}, "gpu": None})
    t = resolve_target(str(arm))
    assert (t.kind, t.origin) == ("arm", f"profile {arm}") and int8_choice(t)["onnx_scheme"] == "s8s8"
    x86 = _profile(tmp_path / "zen4.json", {"cpu": cpu_info(ZEN4) | {"arch": "x86_64"}, "gpu": None})
    assert int8_choice(resolve_target(str(x86)))["onnx_scheme"] == "u8s8"
    orin = _profile(tmp_path / "orin.json", {"cpu": cpu_info(GRAVITON3), "gpu": {"gpu_name": "Orin", "integrated": True,
                                                                                 "l4t": "36.4", "tensorrt": "10.3"}})
    assert resolve_target(str(orin)).kind == "tensorrt"
    # a cloud host with an NVIDIA GPU but no TensorRT serves the CPU backends: INT8 for its CPU
    gpu_host = _profile(tmp_path / "h100.json", {"cpu": cpu_info(ZEN4) | {"arch": "x86_64"},
                                                 "gpu": {"gpu_name": "NVIDIA H100", "integrated": False,
                                                         "tensorrt": None}, "runtimes": {"tensorrt": None}})
    t = resolve_target(str(gpu_host))
    assert t.kind == "x86" and int8_choice(t)["onnx_scheme"] == "u8s8"
    with_trt = _profile(tmp_path / "h100-trt.json", {"cpu": cpu_info(ZEN4) | {"arch": "x86_64"},
                                                     "gpu": {"gpu_name": "NVIDIA H100", "tensorrt": "10.9"}})
    assert resolve_target(str(with_trt)).kind == "tensorrt"


def test_bad_targets_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown --target 'pentium'.*tensorrt"):
        resolve_target("pentium")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(UsageError, match="unreadable profile"):
        resolve_target(str(tmp_path / "junk.json"))
    with pytest.raises(UsageError, match="no such profile"):
        resolve_target(str(tmp_path / "missing.json"))
    empty = _profile(tmp_path / "empty.json", {})
    with pytest.raises(UsageError, match="no device fingerprint"):
        resolve_target(str(empty))


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
@pytest.mark.slow
def test_quantize_cli_builds_records_and_explains_the_target(tiny_bundle, tmp_path, capsys):
    """Through the CLI: --target tensorrt builds S8S8 that passes check-trt; --target avx2 builds
    U8S8 that ONNX Runtime fuses into integer kernels and check-trt refuses with the fix; both
    record the target in the manifest and print why."""
    import onnx

    from veca_deploy.bundle.manifest import read_manifest
    from veca_deploy.cli import main
    from veca_deploy.convert.trt_check import check_onnx_for_tensorrt
    from veca_deploy.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    got = {}
    for target in ("tensorrt", "avx2"):
        b = tmp_path / target
        shutil.copytree(tiny_bundle, b)
        code = main(["quantize", str(b), "--precision", "int8", "--calib", "fashion-mnist", "--calib-size", "300",
                     "--format", "onnx", "--tiers", "8", "--eval-limit", "200", "--target", target, "-q"])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        assert f"INT8 for target {target}" in printed.out + printed.err
        m = read_manifest(b)
        assert m.calibration["target"]["target"]["name"] == target
        art = next(a for a in m.artifacts if a.id == "onnx-int8-c8-28x28")
        got[target] = (b, art)
        assert art.details["target"]["name"] == target
    b, art = got["tensorrt"]
    assert art.details["recipe"]["variant"] == "S8S8-symmetric" and check_onnx_for_tensorrt(b / art.path).ok
    b, art = got["avx2"]
    assert art.details["recipe"]["variant"] == "U8S8-reduce-range"
    zps = {i.name: i.data_type for i in onnx.load(str(b / art.path)).graph.initializer}
    assert any(t == onnx.TensorProto.UINT8 for t in zps.values())
    code = main(["check-trt", str(b)])
    err = capsys.readouterr().err
    assert code != 0 and "--target tensorrt" in err and len(err.strip().splitlines()) == 1
    # a bad target is refused before any work, the bundle unchanged
    before = json.loads((b / "manifest.json").read_text())
    code = main(["quantize", str(b), "--calib", "fashion-mnist", "--target", "z80", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown --target 'z80'" in err
    assert json.loads((b / "manifest.json").read_text()) == before
