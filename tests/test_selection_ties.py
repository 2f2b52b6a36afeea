"""The selector respects what its evaluation resolves (ties go to the faster candidate) and
treats execution variants (OpenVINO bf16) as candidates that must pass the golden gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import veca_deploy
from veca_deploy.bundle.manifest import Artifact
from veca_deploy.bundle.reader import Bundle
from veca_deploy.runtimes import supported_variants
from veca_deploy.selector.candidates import Candidate
from veca_deploy.selector.profile import profile_path
from veca_deploy.selector.select import Measured, decide, resolution, select


def _m(aid: str, cores: int, acc: float | None, n: int | None, ms: float, variant: str | None = None,
       nbytes: int = 1000) -> Measured:
    a = Artifact(format="onnx", precision="fp32", cores=cores, height=28, width=28, path=f"onnx/{aid}.onnx",
                 sha256="0" * 64, bytes=nbytes, id=aid, tiers=[cores])
    return Measured(Candidate(a, cores, acc, variant, n), ms)


def _ranked(*ms: Measured) -> list[Measured]:
    from veca_deploy.selector.select import rank

    return rank(list(ms))


def test_a_difference_below_the_samples_resolution_is_a_tie_and_the_faster_wins():
    """The quickstart case: 88.65 % vs 88.55 % on 2,000 images each is noise (resolution ~2
    points), so the 1.9x faster candidate is chosen and the decision says why."""
    slow = _m("int8-el", 32, 0.8865, 2000, 1.71)
    fast = _m("fp32-el", 32, 0.8855, 2000, 0.90)
    chosen, why = decide(_ranked(slow, fast))
    assert chosen is fast
    assert set(why["tied"]) == {slow.cand.key, fast.cand.key} and why["leader"] == slow.cand.key
    assert 0.015 < resolution(slow.cand, fast.cand) < 0.025 and "tied" in why["reason"]
    assert why["samples"] == {slow.cand.key: 2000, fast.cand.key: 2000}


def test_a_resolved_difference_is_not_a_tie():
    better = _m("a", 32, 0.90, 100_000, 2.0)
    worse = _m("b", 24, 0.88, 100_000, 1.0)  # 2 points on 100k images: ~7 standard errors
    chosen, why = decide(_ranked(better, worse))
    assert chosen is better and why["tied"] == [better.cand.key]


def test_without_sample_sizes_only_a_tenth_of_a_point_ties():
    lead = _m("a", 32, 0.881, None, 2.0)
    assert decide(_ranked(lead, _m("b", 24, 0.8805, None, 1.0)))[0].cand.key == "b@c24"
    assert decide(_ranked(lead, _m("c", 24, 0.878, None, 1.0)))[0] is lead


def test_unknown_accuracy_claims_no_tie_but_a_variant_of_the_same_tier_does():
    lead = _m("a", 32, None, None, 2.0)
    other = _m("b", 24, None, None, 1.0, nbytes=10)  # fewer cores: ranked below, never tied
    variant = _m("a", 32, None, None, 1.5, variant="bf16")
    chosen, why = decide(_ranked(lead, other, variant))
    assert chosen is variant and other.cand.key not in why["tied"]
    # equal latency: the smaller artifact wins the tie
    x, y = _m("x", 8, 0.9, 1000, 1.0, nbytes=500), _m("y", 8, 0.9, 1000, 1.0, nbytes=100)
    assert decide(_ranked(x, y))[0] is y


# ---------------------------------------------------------------------------- bf16 on real OpenVINO
needs_bf16 = pytest.mark.skipif("bf16" not in supported_variants("openvino"),
                                reason="this CPU reports no native BF16 to OpenVINO (needs AVX512-BF16 or AMX)")


@pytest.fixture()
def copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b"))


@needs_bf16
def test_bf16_variant_is_gated_timed_and_served_in_bf16(copy):
    sel = select(Bundle.open(copy), 1e6, backend="openvino", tiers=[8], count=5, warmup=1)
    keys = {m.cand.key for m in sel.ranked}
    assert "openvino-fp32-c8-28x28@c8+bf16" in keys and "openvino-fp32-c8-28x28@c8" in keys
    entries = json.loads(profile_path(copy).read_text())["entries"]
    e = entries["openvino-fp32-c8-28x28@c8+bf16"]
    assert e["error"] is None and e["gate"]["passed"] and e["gate"]["precision"] == "bf16"
    assert e["runner"]["INFERENCE_PRECISION_HINT"] == "bf16" and e["execution_precision"] == "bf16"
    # f32 and bf16 of the same tier always tie; Runtime serves what select chose, in that precision
    pair = {m.cand.key for m in sel.ranked if m.cand.artifact.id == "openvino-fp32-c8-28x28"}
    if sel.chosen.cand.key in pair:
        assert pair <= set(sel.decision["tied"])
        assert sel.chosen.latency_ms == min(m.latency_ms for m in sel.ranked if m.cand.key in pair)
    with veca_deploy.Runtime.open(copy, budget_ms=1e6, backend="openvino", tiers=[8], measure=False) as rt:
        assert rt.tier == sel.chosen.cand.tier
        pred = rt.predict(np.zeros((2, 28, 28), np.uint8))
        hint = rt._runners[sel.chosen.cand.runner_key].describe().get("INFERENCE_PRECISION_HINT")
    assert hint == (sel.chosen.cand.variant or "f32") and np.isfinite(pred["global"]).all()


@needs_bf16
def test_a_variant_that_failed_its_gate_is_never_selected(copy):
    select(Bundle.open(copy), 1e6, backend="openvino", tiers=[8], count=5, warmup=1)
    p = profile_path(copy)
    d = json.loads(p.read_text())
    key = "openvino-fp32-c8-28x28@c8+bf16"
    d["entries"][key]["error"] = "wrong numbers vs the golden outputs here"
    # make the failed variant look fastest: it must still not be chosen
    d["entries"][key]["timing"]["percentiles_ms"] = {k: 1e-6 for k in d["entries"][key]["timing"]["percentiles_ms"]}
    p.write_text(json.dumps(d))
    sel = select(Bundle.open(copy), 1e6, backend="openvino", tiers=[8], measure=False)
    assert sel.chosen.cand.key != key and key not in {m.cand.key for m in sel.ranked}
    assert any(s.startswith(key) for s in sel.skipped)


def _paired(aid: str, cores: int, hits: np.ndarray, ms: float, sid: str = "s1") -> Measured:
    from veca_deploy.compare.records import pack_hits

    m = _m(aid, cores, float(hits.mean()), len(hits), ms)
    return Measured(Candidate(m.cand.artifact, cores, m.cand.accuracy, None, len(hits), (sid, pack_hits(hits))), ms)


def test_per_image_records_make_the_comparison_paired():
    """A is right on every image B gets right plus 30 more (of 2,000): 1.5 points. Unpaired, two
    binomial estimates cannot resolve that (~1.9 points) and the faster B would win; paired, the
    30 images only A gets right are ~5.5 standard errors, so A wins and the decision says paired.
    The same hits on different images (another sample id) fall back to the unpaired rule."""
    rng = np.random.default_rng(0)
    b_hits = rng.random(2000) < 0.885
    a_hits = b_hits.copy()
    a_hits[np.flatnonzero(~b_hits)[:30]] = True
    a, b = _paired("a", 32, a_hits, 2.0), _paired("b", 24, b_hits, 1.0)
    chosen, why = decide(_ranked(a, b))
    assert chosen is a and why["tied"] == [a.cand.key] and "paired" in why["rule"]
    assert resolution(a.cand, b.cand) < 0.008

    other = _paired("b", 24, b_hits, 1.0, sid="s2")
    chosen, why = decide(_ranked(a, other))
    assert chosen is other and why["comparison"] == {other.cand.key: "unpaired"}
    assert resolution(a.cand, other.cand) > 0.015


def test_paired_records_that_mostly_agree_are_a_tie():
    """88.65 % vs 88.55 % where the two disagree on 20 images: a tie, paired, the faster wins."""
    rng = np.random.default_rng(1)
    base = rng.random(2000) < 0.886
    a_hits, b_hits = base.copy(), base.copy()
    wrong = np.flatnonzero(~base)
    right = np.flatnonzero(base)
    a_hits[wrong[:11]] = True
    b_hits[wrong[11:20]] = True
    a, b = _paired("int8-el", 32, a_hits, 1.7), _paired("fp32-el", 32, b_hits, 0.9)
    assert a.cand.accuracy > b.cand.accuracy and len(right) > 0
    chosen, why = decide(_ranked(a, b))
    assert chosen is b and why["comparison"] == {b.cand.key: "paired"}


def test_a_corrupt_record_falls_back_to_unpaired():
    from veca_deploy.compare.records import unpack_hits

    assert unpack_hits("not base64!", 10) is None and unpack_hits("AAA=", 100) is None
    hits = np.ones(100, dtype=bool)
    a = _paired("a", 32, hits, 2.0)
    bad = Measured(Candidate(a.cand.artifact, 24, 0.99, None, 100, ("s1", "!!")), 1.0)
    assert resolution(a.cand, bad.cand) == resolution(_m("a", 32, 1.0, 100, 2).cand, _m("b", 24, 0.99, 100, 1).cand)


def test_which_variants_are_candidates_of_their_own():
    """A float artifact under a lower execution precision computes in it; an INT8 artifact keeps its
    integer products and runs its float ops in the variant's precision (judged by the INT8 gate)."""
    from veca_deploy.formats import execution_precision, variant_applies

    assert variant_applies("fp32", "bf16") and variant_applies("fp16", "bf16") and variant_applies("int8", "bf16")
    assert not variant_applies("fp32", "f32") and not variant_applies("int8", "f32")
    assert not variant_applies("fp32", None) and not variant_applies("fp16", "f16")
    assert execution_precision("int8", "bf16") == "int8" and execution_precision("fp32", "bf16") == "bf16"


@needs_bf16
def test_int8_with_float_ops_in_bf16_is_gated_as_int8_and_tail_runs_in_bf16(copy):
    """The fastest CPU path on AMX: OpenVINO INT8 with the rest in bf16 (graph tail included)."""
    from veca_deploy.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    veca_deploy.quantize(copy, ["int8"], "fashion-mnist", formats=["openvino"], tiers=[8], count=16,
                         allow_small=True, eval_data=None)
    sel = select(Bundle.open(copy), 1e6, backend="openvino", tiers=[8], precisions=["int8"], count=3, warmup=1)
    key = "openvino-int8-c8-28x28@c8+bf16"
    assert key in {m.cand.key for m in sel.ranked}
    e = json.loads(profile_path(copy).read_text())["entries"][key]
    assert e["error"] is None and e["gate"]["passed"] and e["gate"]["precision"] == "int8"
    assert e["runner"]["INFERENCE_PRECISION_HINT"] == "bf16" and e["runner"]["low_precision_tail"] == "True"
    assert e["execution"] == "bf16" and e["execution_precision"] == "int8"


@needs_bf16
def test_bf16_runs_the_graph_tail_in_bf16(tiny_bundle):
    """Under the bf16 hint OpenVINO keeps the graph's tail (here the residual stream up to the final
    LayerNorm) in f32 unless the runner marks it: count what the compiled model really runs in f32."""
    from veca_deploy.bundle.manifest import read_manifest
    from veca_deploy.runtimes import create_runner

    a = read_manifest(tiny_bundle).find("openvino", "fp32", 8, elastic=False)[0]

    def f32_norms(**opts) -> int:
        with create_runner("openvino", tiny_bundle / a.path, inference_precision="bf16", **opts) as r:
            ops = r.compiled.get_runtime_model().get_ordered_ops()
            return sum(1 for op in ops if op.get_rt_info()["layerType"].astype(str) == "MVN"
                       and op.get_rt_info()["runtimePrecision"].astype(str) == "f32")

    assert f32_norms(low_precision_tail=False) > 0 and f32_norms() == 0


def test_tail_marks_are_typed_so_parallel_streams_can_read_them(tiny_bundle):
    """OpenVINO converts a string mark on every read and caches the result inside the attribute,
    unlocked: two CPU streams building their graphs in parallel raced on it and aborted the process.
    The runner sets a bool (2024+); a bf16 runner with several streams compiles again and again."""
    import subprocess
    import sys

    from veca_deploy.bundle.manifest import read_manifest
    from veca_deploy.runtimes.openvino_rt import low_precision_tail, typed_marks

    a = read_manifest(tiny_bundle).find("openvino", "fp32", 8, elastic=False)[0]
    if not typed_marks():
        pytest.skip("this OpenVINO has no Node.set_rt_info: the runner marks the tail with one stream only")
    import openvino as ov

    model = ov.Core().read_model(str(tiny_bundle / a.path))
    assert low_precision_tail(model) > 0
    marks = [op.get_rt_info()["enforceBF16evenForGraphTail"].value for op in model.get_ops()
             if "enforceBF16evenForGraphTail" in op.get_rt_info()]
    assert marks and all(m is True for m in marks)
    if "bf16" not in supported_variants("openvino"):
        return  # no bf16 here: the plugin never reads the marks
    # the race itself, in a child process (it aborts): 6 of 6 runs of this loop died before the fix
    code = (f"from veca_deploy.runtimes import create_runner\n"
            f"from veca_deploy.runtimes.pool import create_pool\n"
            f"for _ in range(8):\n"
            f"    r = create_runner('openvino', {str(tiny_bundle / a.path)!r}, inference_precision='bf16', streams=2)\n"
            f"    create_pool(r, 2).close(); r.close()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_bench_records_a_refused_variant_and_still_succeeds(copy, monkeypatch, capsys):
    """A variant this device cannot compile or that fails its gate here is an option of the runtime,
    not a defect of the bundle: recorded, never selected, exit 0. A failing artifact is still exit 5.
    The bf16 variant is offered on any CPU here (on one without bf16 it fails to compile or its gate
    is failed below: refused either way)."""
    import importlib

    from veca_deploy.cli import main
    from veca_deploy.selector import profile as prof

    runtimes = importlib.import_module("veca_deploy.runtimes")
    monkeypatch.setattr(runtimes, "supported_variants",
                        lambda b, device="CPU", precision=None: ("bf16",) if b == "openvino" else ())

    real = prof.golden_gate

    def gate(runner, golden, c, fail_default=False):
        g = real(runner, golden, c)
        if c.variant or fail_default:
            g = {**g, "passed": False, "failures": ["injected: wrong numbers"]}
        return g

    monkeypatch.setattr(prof, "golden_gate", gate)
    code = main(["bench", str(copy), "--backend", "openvino", "--tiers", "8", "--count", "3", "--warmup", "1",
                 "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "refused here, never selected" in printed.out + printed.err and " in bf16" in printed.out
    entries = json.loads(profile_path(copy).read_text())["entries"]
    assert entries["openvino-fp32-c8-28x28@c8+bf16"]["error"] and not entries["openvino-fp32-c8-28x28@c8"]["error"]
    monkeypatch.setattr(prof, "golden_gate", lambda r, g, c: gate(r, g, c, fail_default=True))
    assert main(["bench", str(copy), "--backend", "openvino", "--tiers", "8", "--count", "3", "--quiet"]) == 5


# ---------------------------------------------------------------------------- variants' own accuracy
def _records(copy: Path, variant: dict) -> None:
    """Give the OpenVINO FP32 C=8 artifact an eval record (90 of 100 right) and a bf16 one."""
    from veca_deploy.bundle.io import write_manifest
    from veca_deploy.compare.records import pack_hits

    b = Bundle.open(copy)
    art = next(a for a in b.manifest.artifacts if a.id == "openvino-fp32-c8-28x28")
    hits = np.arange(100) % 10 != 0
    art.accuracy = {"dataset": "d", "samples": 100, "metric": "top1", "top1": 0.90, "sample_id": "s",
                    "correct": {"8": pack_hits(hits)}, "variants": {"bf16": variant}}
    write_manifest(copy, b.manifest)


def test_a_variant_is_ranked_by_its_own_eval_record_and_never_where_it_failed(copy):
    """``eval`` records a variant's own numbers beside its artifact's: the candidate takes them
    (accuracy, sample count, per-image record), so a consistent loss on the same images is resolved
    (paired) instead of the variant claiming its artifact's accuracy; a tier where its gate failed is
    no candidate at all."""
    from veca_deploy.compare.records import pack_hits
    from veca_deploy.selector.candidates import candidates

    hits = np.arange(100) % 10 != 0
    lost = hits.copy()
    lost[1:6] = False  # 5 images the bf16 run gets wrong that f32 gets right: 85 %
    own = {"dataset": "d", "samples": 100, "metric": "top1", "top1": 0.85, "sample_id": "s",
           "correct": {"8": pack_hits(lost)}, "execution": "bf16", "gate": "passed"}
    _records(copy, own)
    got = {c.key: c for c in candidates(Bundle.open(copy), ["openvino"], tiers=[8], variants=["bf16"])}
    base, var = got["openvino-fp32-c8-28x28@c8"], got["openvino-fp32-c8-28x28@c8+bf16"]
    assert base.accuracy == 0.90 and var.accuracy == 0.85 and var.samples == 100
    assert var.record == ("s", pack_hits(lost)) and base.record == ("s", pack_hits(hits))
    # the variant is 2x faster, but 5 of 5 disagreements go one way on the same images: not a tie
    chosen, why = decide(_ranked(Measured(base, 2.0), Measured(var, 1.0)))
    assert chosen.cand is base and why["tied"] == [base.key]
    from veca_deploy.selector.select import comparison

    assert comparison(base, var) == "paired" and resolution(base, var) < 0.05

    _records(copy, {**own, "gate": "failed: top-1 -5 points", "failed_tiers": ["8"]})
    assert "openvino-fp32-c8-28x28@c8+bf16" not in {
        c.key for c in candidates(Bundle.open(copy), ["openvino"], tiers=[8], variants=["bf16"])}
    _records(copy, {**own, "gate": "failed: at c=16 only", "failed_tiers": ["16"]})
    assert "openvino-fp32-c8-28x28@c8+bf16" in {
        c.key for c in candidates(Bundle.open(copy), ["openvino"], tiers=[8], variants=["bf16"])}


def test_variant_gate_fails_a_drop_beyond_the_limit_and_marks_the_tier():
    from veca_deploy.bundle.manifest import Manifest
    from veca_deploy.calibration.evaluate import gate, gate_variants

    a = Artifact(format="openvino", precision="fp32", cores=8, height=28, width=28, path="openvino/fp32/a.xml",
                 sha256="0" * 64, bytes=1, id="a", tiers=[8])
    m = Manifest(model={}, preprocess={}, artifacts=[a])

    def results(variant_top1: float) -> dict:
        return {"a": {"metric": "top1", "top1": 0.90, "samples": 1000,
                      "variants": {"bf16": {"metric": "top1", "top1": variant_top1, "samples": 1000}}}}

    r = results(0.895)
    assert gate_variants(m, r) == [] and r["a"]["variants"]["bf16"]["gate"] == "passed"
    r = results(0.87)
    fails = gate_variants(m, r)
    assert len(fails) == 1 and fails[0].startswith("a+bf16 c=8: top-1 87.00% vs FP32 90.00%")
    assert r["a"]["variants"]["bf16"]["gate"].startswith("failed") and r["a"]["variants"]["bf16"]["failed_tiers"] == ["8"]
    assert gate(m, r) == []  # the artifact itself (FP32) is not what failed
    assert gate_variants(m, results(0.87), allow_drop=5.0) == []


def test_int8_f16_is_offered_on_arm_only():
    """OpenVINO runs an INT8 IR under the f16 hint on x86 through reference kernels (293 s per
    image for veca_small at 512 px on the AMX Xeon): never a candidate there, whatever the CPU reports."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        pytest.skip("Arm: f16 is the plugin's native precision")
    assert "f16" not in supported_variants("openvino", precision="int8")
    assert set(supported_variants("openvino", precision="int8")) <= set(supported_variants("openvino"))


@needs_bf16
def test_eval_measures_each_variant_on_the_same_images_and_select_uses_it(reference_bundle, tmp_path):
    """``eval`` on the trained reference model: the bf16 variant of each OpenVINO artifact gets its
    own top-1 and per-image record on the same images, gated against FP32; the candidate carries it."""
    from veca_deploy.calibration.evaluate import evaluate
    from veca_deploy.data import fashion_mnist_available
    from veca_deploy.selector.candidates import candidates

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    b = Path(shutil.copytree(reference_bundle, tmp_path / "ref"))
    report = evaluate(b, limit=300, backends=["openvino"], variants=["bf16"])
    assert report["gate"]["variant_failures"] == []
    art = next(a for a in Bundle.open(b).manifest.artifacts if a.format == "openvino" and a.precision == "fp32"
               and not a.elastic and a.cores == 8)
    own = art.accuracy["variants"]["bf16"]
    assert own["samples"] == 300 and own["sample_id"] == art.accuracy["sample_id"] and own["gate"] == "passed"
    assert own["inference_precision"] == "bf16" and own["execution"] == "bf16" and set(own["correct"]) == {"8"}
    assert art.accuracy["inference_precision"] == "f32" and abs(own["top1"] - art.accuracy["top1"]) <= 0.01
    got = {c.key: c for c in candidates(Bundle.open(b), ["openvino"], tiers=[8], variants=["bf16"])}
    var = got[f"{art.id}@c8+bf16"]
    assert var.accuracy == own["top1"] and var.record == (own["sample_id"], own["correct"]["8"])
    # the CLI shows it as a row of its own, and --variants none measures none
    from veca_deploy.cli import main

    assert main(["eval", str(b), "--limit", "100", "--backend", "openvino", "--variants", "none", "--overwrite",
                 "-q", "--no-write", "--json", str(tmp_path / "r.json")]) == 0
    assert not any(r.get("variants") for r in json.loads((tmp_path / "r.json").read_text())["results"])


def test_int8_f16_is_never_offered_on_x86_whatever_the_plugin_reports(monkeypatch):
    """The rule itself, on a plugin that reports BF16 and FP16: x86 offers f16 for float IRs and
    not for INT8 ones; Arm offers both."""
    import platform

    import veca_deploy.runtimes as rt

    monkeypatch.setattr(rt, "_openvino_capabilities", lambda device: frozenset({"BF16", "FP16"}))
    monkeypatch.setattr(rt, "backend_available", lambda b: True)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert rt.supported_variants("openvino", precision="fp32") == ("bf16", "f16")
    assert rt.supported_variants("openvino", precision="int8") == ("bf16",)
    assert rt.artifact_variants("openvino", "int8", True) == ("bf16",)
    assert rt.slow_variant("openvino", "int8", "f16") and rt.slow_variant("openvino", "int8", "f16", "GPU") is None
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert rt.supported_variants("openvino", precision="int8") == ("bf16", "f16")


def test_a_variant_that_cannot_run_is_recorded_failed_and_eval_still_succeeds(reference_bundle, tmp_path, monkeypatch):
    """OpenVINO refusing a variant (here: an inference precision it does not know) is this device's
    failure: eval records it for every tier, reports it, exits 0, and select never offers it."""
    import veca_deploy.calibration.evaluate as ev
    from veca_deploy.cli import main
    from veca_deploy.data import fashion_mnist_available
    from veca_deploy.selector.candidates import candidates

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    b = Path(shutil.copytree(reference_bundle, tmp_path / "ref"))
    real = ev.variant_options
    monkeypatch.setattr(ev, "variant_options", lambda backend, v: {"inference_precision": "int3"} if v else real(backend, v))
    # any CPU: the plugin is taken to report bf16 (eval measures named variants only where native)
    monkeypatch.setattr(ev, "supported_variants",
                        lambda b, device="CPU", precision=None: ("bf16",) if b == "openvino" else ())
    assert main(["eval", str(b), "--limit", "50", "--backend", "openvino", "--variants", "bf16", "-q",
                 "--json", str(tmp_path / "r.json")]) == 0
    fails = json.loads((tmp_path / "r.json").read_text())["gate"]["variant_failures"]
    assert fails and all("could not run" in f for f in fails)
    art = next(a for a in Bundle.open(b).manifest.artifacts if a.format == "openvino" and not a.elastic)
    own = art.accuracy["variants"]["bf16"]
    assert own["error"] and own["gate"].startswith("failed") and "top1" in art.accuracy
    keys = {c.key for c in candidates(Bundle.open(b), ["openvino"], variants=["bf16"])}
    assert not any(k.endswith("+bf16") for k in keys) and f"{art.id}@c{art.cores}" in keys


@needs_bf16
def test_variant_records_follow_their_images(reference_bundle, tmp_path):
    """A later eval that does not run a variant keeps its record only when it rests on the same
    images; --overwrite or other images drop it, so paired comparisons never mix samples."""
    from veca_deploy.calibration.evaluate import evaluate
    from veca_deploy.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    b = Path(shutil.copytree(reference_bundle, tmp_path / "ref"))

    def bf16_record():
        art = next(a for a in Bundle.open(b).manifest.artifacts if a.format == "openvino" and not a.elastic)
        return (art.accuracy.get("variants") or {}).get("bf16")

    evaluate(b, limit=60, backends=["openvino"], variants=["bf16"])
    first = bf16_record()
    assert first and first["samples"] == 60
    evaluate(b, limit=60, backends=["openvino"], variants=False)  # same images, no variants run: kept
    assert bf16_record() == first
    evaluate(b, limit=60, backends=["openvino"], variants=False, overwrite=True)
    assert bf16_record() is None
    evaluate(b, limit=60, backends=["openvino"], variants=["bf16"])
    evaluate(b, limit=80, backends=["openvino"], variants=False)  # other images: dropped
    assert bf16_record() is None


def test_variant_records_speak_for_their_device_and_cpu_family(copy):
    """eval's variant records are the measuring machine's: an accuracy applies to CPUs of the same
    family (x86 keeps f32 accumulation on every bf16/f16 path; Arm runs other kernels), "could not
    run" only to the machine that tried; an offline selection asks for the profiled device."""
    from veca_deploy.compare.records import pack_hits
    from veca_deploy.selector.candidates import candidates, legacy_family, this_device

    here, fam = this_device()
    other = "arm" if fam != "arm" else "x86"
    key = "openvino-fp32-c8-28x28@c8+bf16"
    lost = np.arange(100) % 10 != 0
    lost[1:6] = False
    own = {"dataset": "d", "samples": 100, "metric": "top1", "top1": 0.85, "sample_id": "s",
           "correct": {"8": pack_hits(lost)}, "execution": "bf16", "gate": "passed"}

    def cand(rec: dict, device=None) -> Candidate | None:
        _records(copy, rec)
        got = candidates(Bundle.open(copy), ["openvino"], tiers=[8], variants=["bf16"], device=device)
        return next((c for c in got if c.key == key), None)

    assert cand({**own, "device": here, "family": fam}).accuracy == 0.85
    assert cand({**own, "device": "another-4c-host-1a2b3c", "family": fam}).accuracy == 0.85
    foreign = cand({**own, "device": "another-4c-host-1a2b3c", "family": other})
    assert foreign.accuracy == 0.90 and foreign.samples == 100  # the artifact's: not measured for this family
    failed = {"error": "OpenVINO cannot load it", "execution": "bf16", "gate": "failed: could not run",
              "device": "another-4c-host-1a2b3c", "family": fam}
    assert cand(failed) is not None  # another machine could not run it: this one's gate decides
    assert cand({**failed, "device": here}) is None
    assert cand(failed, device=("another-4c-host-1a2b3c", fam)) is None  # offline, for that machine
    assert cand({**own, "device": "another-4c-host-1a2b3c", "family": fam, "gate": "failed: -5 points",
                 "failed_tiers": ["8"]}) is None
    assert legacy_family("intel-xeon-2c-x86-64-3f2a1b") == "x86"
    assert legacy_family("nvidia-jetson-agx-orin-12c-orin-pm0-aarch64-00aa11") == "arm"
    assert legacy_family(None) is None and legacy_family("cpu") is None


@needs_bf16
def test_a_variant_without_golden_outputs_is_recorded_not_timed(copy):
    """An execution variant is served only behind its golden gate on the device: a bundle without
    golden outputs gets it recorded with the reason, and the default run is still served."""
    from veca_deploy.bundle.io import write_manifest

    b = Bundle.open(copy)
    b.manifest.golden = {}
    write_manifest(copy, b.manifest)
    sel = select(Bundle.open(copy), 1e6, backend="openvino", tiers=[8], count=3, warmup=1)
    key = "openvino-fp32-c8-28x28@c8+bf16"
    assert key not in {m.cand.key for m in sel.ranked} and sel.chosen.cand.variant is None
    e = json.loads(profile_path(copy).read_text())["entries"][key]
    assert e["timing"] is None and "no golden outputs" in e["error"]


def test_a_compile_in_another_precision_is_refused():
    """OpenVINO keeps f32 without a word on a CPU without native bf16: the runner refuses, so an
    f32 run is never measured, gated or served as bf16."""
    from veca_deploy.errors import UsageError
    from veca_deploy.runtimes.openvino_rt import check_execution_precision

    check_execution_precision("m.xml", "bf16", "bf16")
    check_execution_precision("m.xml", None, "f16")  # nothing asked: the plugin's default
    with pytest.raises(UsageError, match=r"^m.xml: this device does not run inference precision bf16 "
                                         r"\(OpenVINO compiled it in f32\)$"):
        check_execution_precision("m.xml", "bf16", "f32")


def test_onnx_runtime_bf16_is_offered_on_arm_with_bf16_only(monkeypatch):
    """ONNX Runtime's setting that changes the arithmetic, bf16 fast-math GEMMs: offered on AArch64
    with BF16 (Graviton 3 yes, Jetson Orin's A78AE no), for float and INT8 graphs, on the CPU provider."""
    import veca_deploy.runtimes as rt
    from veca_deploy.runtimes import fingerprint

    monkeypatch.setattr(rt, "backend_available", lambda b: True)
    rt.arm_bf16.cache_clear()
    monkeypatch.setattr(fingerprint, "cpu_family", lambda arch=None: "arm")
    monkeypatch.setattr(fingerprint, "cpu_info", lambda cpuinfo=None: {"isa": ["neon", "asimddp", "i8mm", "bf16"]})
    try:
        assert rt.supported_variants("onnxruntime", precision="fp32") == ("bf16",)
        assert rt.supported_variants("onnxruntime", precision="int8") == ("bf16",)
        assert rt.supported_variants("onnxruntime", precision="fp16") == ()
        assert rt.supported_variants("onnxruntime", "CUDA", precision="fp32") == ()
        rt.arm_bf16.cache_clear()
        monkeypatch.setattr(fingerprint, "cpu_info", lambda cpuinfo=None: {"isa": ["neon", "asimddp"]})
        assert rt.supported_variants("onnxruntime", precision="fp32") == ()
        rt.arm_bf16.cache_clear()
        monkeypatch.setattr(fingerprint, "cpu_family", lambda arch=None: "x86")
        monkeypatch.setattr(fingerprint, "cpu_info", lambda cpuinfo=None: {"isa": ["avx2", "avx512_bf16", "amx_bf16"]})
        assert rt.supported_variants("onnxruntime", precision="fp32") == ()  # no bf16 path on x86
    finally:
        rt.arm_bf16.cache_clear()


def test_onnx_runtime_bf16_is_refused_where_it_would_not_run(copy, monkeypatch):
    """Off AArch64-with-BF16 (or with a GPU provider) ONNX Runtime would ignore the setting and run
    f32 under the name bf16, so the runner refuses in one line; a bench told to try the variant
    records the refusal and serves the default run."""
    import veca_deploy.runtimes as rt
    from veca_deploy.cli import main
    from veca_deploy.errors import UsageError
    from veca_deploy.runtimes import create_runner

    path = next(copy.glob("onnx/*c8*.onnx"))
    with pytest.raises(UsageError, match=r"inference precision f16 .*offers no other inference precision"):
        create_runner("onnxruntime", path, inference_precision="f16").activate()
    with monkeypatch.context() as m:
        m.setattr(rt, "arm_bf16", lambda: True)
        with pytest.raises(UsageError, match=r"CPU-provider setting, and this runner uses CPUExecutionProvider, CUDAExecutionProvider"):
            create_runner("onnxruntime", path, inference_precision="bf16",
                          providers=["CUDAExecutionProvider", "CPUExecutionProvider"]).activate()
    if rt.arm_bf16():
        pytest.skip("an AArch64 CPU with BF16: the variant runs here")
    with pytest.raises(UsageError, match=r"bf16 only as bf16 fast-math GEMMs .*this CPU is not AArch64 with BF16"):
        create_runner("onnxruntime", path, inference_precision="bf16").activate()
    monkeypatch.setattr(rt, "supported_variants",
                        lambda b, device="CPU", precision=None: ("bf16",) if b == "onnxruntime" else ())
    assert main(["bench", str(copy), "--backend", "onnxruntime", "--tiers", "8", "--count", "3", "--warmup", "1",
                 "--quiet"]) == 0
    entries = json.loads(profile_path(copy).read_text())["entries"]
    bf16 = {k: e for k, e in entries.items() if k.endswith("@c8+bf16")}
    assert bf16 and all("fast-math" in e["error"] and e["timing"] is None for e in bf16.values())
    sel = select(Bundle.open(copy), 1e6, backend="onnxruntime", tiers=[8], measure=False)
    assert sel.chosen.cand.variant is None and not set(bf16) & {m.cand.key for m in sel.ranked}


def test_a_refusal_here_does_not_erase_another_machines_measurement():
    """One record per variant name: a fresh measurement replaces the old one, but "could not run"
    on this machine keeps another machine's measured accuracy (on the same images)."""
    from veca_deploy.calibration.evaluate import merge_variant_records
    from veca_deploy.selector.select import profile_device
    from veca_deploy.selector.profile import Profile

    measured = {"top1": 0.9, "sample_id": "s", "device": "xeon-2c-x86-64-aaaaaa", "family": "x86"}
    refused = {"error": "cannot compile", "sample_id": "s", "device": "zen3-2c-x86-64-bbbbbb", "family": "x86"}
    again = {"top1": 0.8, "sample_id": "s", "device": "zen4-2c-x86-64-cccccc", "family": "x86"}
    old = {"top1": 0.9, "sample_id": "s", "variants": {"bf16": measured}}
    assert merge_variant_records(old, {"top1": 0.9, "sample_id": "s", "variants": {"bf16": refused}})[
        "variants"]["bf16"] == measured
    assert merge_variant_records(old, {"top1": 0.9, "sample_id": "s", "variants": {"bf16": again}})[
        "variants"]["bf16"] == again
    assert merge_variant_records(old, {"top1": 0.9, "sample_id": "s", "variants": {"bf16": refused}},
                                 overwrite=True)["variants"]["bf16"] == refused
    # an offline selection for a profile that names no architecture: its id, else "unknown" (applies)
    assert profile_device(Profile(device="orin-12c-aarch64-00aa11", fingerprint={})) == ("orin-12c-aarch64-00aa11",
                                                                                        "arm")
    assert profile_device(Profile(device="handmade", fingerprint={}))[1] == "unknown"


def test_eval_names_the_named_variants_it_cannot_measure_here(monkeypatch):
    """A named variant no installed backend runs natively here is not measured, and eval says so."""
    import veca_deploy.calibration.evaluate as ev

    monkeypatch.setattr(ev, "supported_variants",
                        lambda b, device="CPU", precision=None: ("bf16",) if b == "openvino" else ())
    assert ev.unmeasured_variants(["bf16", "f16"]) == ["f16"]
    assert ev.unmeasured_variants(True) == [] and ev.unmeasured_variants(False) == []
