"""Fleet (issue 17): real profiles measured here for two devices that really differ (the same CPU
pinned to one core vs two: their device ids differ, see runtimes/fingerprint.py), a fleet view,
offline selection, signed slices that validate and serve through Runtime on "their" device, and
the bad inputs: a profile of another bundle, a truncated profile, an impossible budget, an empty
fleet, a tampered / unsigned / foreign-signed bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from veca_deploy.bundle.io import write_manifest
from veca_deploy.bundle.manifest import read_manifest
from veca_deploy.bundle.signing import SIGNATURE_NAME, generate_keypair, sign_bundle
from veca_deploy.cli import main

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 usable cores to measure two device classes")
pytest.importorskip("cryptography", reason="signing needs the cryptography package (extra 'sign')")

BUDGET = "1000"  # every candidate fits: the decision is the tie rule's, on each device's own numbers


def _pinned(cpus):
    def pin():
        os.sched_setaffinity(0, set(cpus))
    return pin


def cli(*args, cpus=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "veca_deploy.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=_pinned(cpus) if cpus else None, env={**os.environ, **(env or {})})


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    o, e = capsys.readouterr()
    return code, o, e


@dataclass
class Fleet:
    bundle: Path
    root: Path
    one: Path  # profile pinned to one core
    two: Path  # profile on two cores
    key: Path
    pub: Path


@pytest.fixture(scope="module")
def fleet(reference_bundle, tmp_path_factory) -> Fleet:
    root = tmp_path_factory.mktemp("fleet")
    paths = {}
    for name, cpus in (("one", CPUS[:1]), ("two", CPUS[:2])):
        paths[name] = root / f"{name}.json"
        r = cli("bench", reference_bundle, "--backend", "onnxruntime", "--count", "15", "--warmup", "2", "--quiet",
                "--out", paths[name], cpus=cpus)
        assert r.returncode == 0, r.stderr
    key, pub = generate_keypair(root / "keys")
    return Fleet(reference_bundle, root, paths["one"], paths["two"], key, pub)


def _fleet_json(capsys, f: Fleet, *extra) -> dict:
    code, o, e = run(capsys, "fleet", f.bundle, f.one, f.two, "--json", *extra)
    assert code == 0, e
    return json.loads(o)


def test_two_devices_make_two_classes_with_fronts_and_choices(fleet, capsys):
    view = _fleet_json(capsys, fleet, "--budget-ms", BUDGET)
    classes = view["classes"]
    assert len(classes) == 2 and classes[0]["device"] != classes[1]["device"]
    assert sorted(c["usable_cores"] for c in classes) == [1, 2]
    for c in classes:
        keys = {m["key"] for m in c["candidates"]}
        assert c["pareto"] and set(c["pareto"]) <= keys
        assert c["selection"]["chosen"]["artifact"] in {m["artifact"] for m in c["candidates"]}
        lat = {m["key"]: m["latency_ms"] for m in c["candidates"]}
        front = sorted(c["pareto"], key=lat.get)
        accs = [next(m["accuracy"] for m in c["candidates"] if m["key"] == k) for k in front]
        assert accs == sorted(accs), "a Pareto front ordered by latency gains accuracy"
    # the same profile twice is one class, not two
    code, o, e = run(capsys, "fleet", fleet.bundle, fleet.two, fleet.two, "--json")
    assert code == 0 and len(json.loads(o)["classes"]) == 1


def test_offline_select_matches_the_fleet_and_runs_nothing(fleet, capsys):
    view = {c["usable_cores"]: c for c in _fleet_json(capsys, fleet, "--budget-ms", BUDGET)["classes"]}
    before = sorted(p.name for p in (fleet.bundle / "profiles").glob("*")) if (fleet.bundle / "profiles").exists() else []
    for cores, prof in ((1, fleet.one), (2, fleet.two)):
        code, o, e = run(capsys, "select", fleet.bundle, "--profile", prof, "--budget-ms", BUDGET, "--json")
        assert code == 0, e
        d = json.loads(o)
        assert d["profiled"] is False and d["device"] == view[cores]["device"]
        assert d["chosen"] == view[cores]["selection"]["chosen"]
    after = sorted(p.name for p in (fleet.bundle / "profiles").glob("*")) if (fleet.bundle / "profiles").exists() else []
    assert after == before


@pytest.mark.parametrize("which", ["one", "two"])
def test_signed_slice_validates_and_serves_the_same_choice_on_its_device(fleet, capsys, which):
    prof = getattr(fleet, which)
    out = fleet.root / f"pack-{which}"
    code, o, e = run(capsys, "pack", fleet.bundle, "--profile", prof, "--budget-ms", BUDGET, "--out", out,
                     "--sign-key", fleet.key, "--json")
    assert code == 0, e
    r = json.loads(o)
    assert r["bytes_after"] < r["bytes_before"] and r["artifacts"] and r["dropped"]
    assert set(r["artifacts"]) < {a.id for a in read_manifest(fleet.bundle).artifacts}
    m = read_manifest(out)
    assert {a.id for a in m.artifacts} == set(r["artifacts"]) and m.sliced["chosen"] == r["chosen"]
    assert (out / SIGNATURE_NAME).is_file() and not list(out.parent.glob(f".{out.name}.*"))
    v = cli("validate", out, "--public-key", fleet.pub)
    assert v.returncode == 0 and "signed by trusted key" in v.stdout, v.stderr
    cpus = CPUS[:1] if which == "one" else CPUS[:2]
    code = ("import sys, numpy as np\nfrom veca_deploy import Runtime\n"
            f"rt = Runtime.open(sys.argv[1], budget_ms={BUDGET}, adaptive=True, measure=False)\n"
            "p = rt.predict(np.zeros((28, 28), np.uint8))\n"
            "print(rt.selection.chosen.cand.key, rt.selection.profiled, int(p.labels[0]))\n")
    s = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120,
                       preexec_fn=_pinned(cpus), env={**os.environ, "VECA_PUBLIC_KEY": str(fleet.pub)})
    assert s.returncode == 0, s.stderr
    key, profiled, _ = s.stdout.split()
    assert key == r["chosen"] and profiled == "False"  # the slice's profile is found, the decision reproduced


def test_tampered_unsigned_and_foreign_signed_bundles_are_refused(fleet, capsys, tmp_path):
    out = tmp_path / "pack"
    code, _, e = run(capsys, "pack", fleet.bundle, "--profile", fleet.two, "--budget-ms", BUDGET, "--out", out,
                     "--sign-key", fleet.key)
    assert code == 0, e
    env = {"VECA_PUBLIC_KEY": str(fleet.pub)}
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    d = json.loads((tampered / "manifest.json").read_text())
    d["notes"] = [*d.get("notes", []), "changed after signing"]
    (tampered / "manifest.json").write_text(json.dumps(d))
    unsigned = tmp_path / "unsigned"
    shutil.copytree(out, unsigned)
    (unsigned / SIGNATURE_NAME).unlink()
    other_key, _ = generate_keypair(tmp_path / "other")
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    sign_bundle(foreign, other_key)
    for folder, words in ((tampered, "bad signature: signature does not match"), (unsigned, "unsigned bundle"),
                          (foreign, "not a trusted one")):
        r = cli("validate", folder, env=env)
        assert r.returncode == 5 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        s = subprocess.run([sys.executable, "-c", "import sys\nfrom veca_deploy import Runtime\n"
                            "Runtime.open(sys.argv[1], budget_ms=None)", str(folder)],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
        assert s.returncode != 0 and words in s.stderr
    assert cli("validate", out, env=env).returncode == 0  # the untouched slice still passes
    # the Python API takes the key directly too (no environment variable)
    from veca_deploy import Runtime
    from veca_deploy.errors import BundleError

    for folder, words in ((unsigned, "unsigned bundle"), (foreign, "not a trusted one")):
        with pytest.raises(BundleError, match=words):
            Runtime.open(folder, budget_ms=None, public_key=fleet.pub)
    with Runtime.open(out, budget_ms=None, public_key=fleet.pub) as rt:
        assert rt.bundle.signed_by


def test_bad_fleet_inputs_are_one_line_errors(fleet, capsys, tmp_path):
    foreign = tmp_path / "foreign.json"
    d = json.loads(fleet.two.read_text())
    for e in d["entries"].values():
        e["sha256"] = "0" * 64
    foreign.write_text(json.dumps(d))
    truncated = tmp_path / "truncated.json"
    truncated.write_text(fleet.two.read_text()[: len(fleet.two.read_text()) // 2])
    out = tmp_path / "never"
    cases = [
        (("fleet", fleet.bundle, foreign), 2, "made for another bundle"),
        (("select", fleet.bundle, "--profile", foreign, "--budget-ms", "5"), 2, "made for another bundle"),
        (("fleet", fleet.bundle, truncated), 5, "unreadable profile"),
        (("fleet", fleet.bundle, tmp_path / "missing.json"), 5, "no such profile"),
        (("fleet", fleet.bundle), 2, "empty fleet"),
        (("select", fleet.bundle, "--profile", fleet.two, "--budget-ms", "0.0001"), 8, "no tier fits"),
        (("pack", fleet.bundle, "--profile", fleet.two, "--budget-ms", "0.0001", "--out", out), 8, "no tier fits"),
        (("pack", fleet.bundle, "--profile", fleet.two, "--budget-ms", "5", "--out", out, "--keep", "x"), 2, "--keep"),
        (("pack", fleet.bundle, "--profile", fleet.two, "--budget-ms", "5", "--out", out, "--sign-key", foreign),
         2, "not an unencrypted PEM private key"),
        (("pack", fleet.bundle, "--profile", fleet.two, "--budget-ms", "5", "--out", fleet.bundle), 2,
         "cannot replace the bundle"),
    ]
    for args, exit_code, words in cases:
        code, _, e = run(capsys, *args)
        assert code == exit_code and words in e and len(e.strip().splitlines()) == 1, (args, code, e)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_rewriting_a_manifest_drops_its_signature(fleet, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(fleet.bundle, b, ignore=shutil.ignore_patterns("profiles"))
    sign_bundle(b, fleet.key)
    assert (b / SIGNATURE_NAME).is_file()
    write_manifest(b, read_manifest(b))  # what eval / quantize / build-trt do
    assert not (b / SIGNATURE_NAME).exists()
