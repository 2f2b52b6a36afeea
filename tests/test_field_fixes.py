"""Field-reliability fixes (issue 16, item 6): one test (or a few) per reported bug, through the
real CLI where a user met it. Errors are one line on stderr with the class's exit code, no
traceback, and nothing half-written is left behind (no ``.partial-*`` / ``.old-*``).

Tests that change a bundle work on a copy of the session's ``tiny_bundle``, never on it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from veca_deploy.errors import BundleError, CheckpointError, OutputExistsError, UsageError

from .test_cli_errors import assert_one_line_error, run_main, snapshot

ROOT = Path(__file__).resolve().parents[1]
FAST_EXPORT = ["--cores", "8", "--formats", "onnx", "--precision", "fp32", "-q"]


def _copy(tiny: Path, dst: Path) -> Path:
    shutil.copytree(tiny, dst, symlinks=True)
    return dst


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# ------------------------------------------------------------------ 1. eval --limit keeps larger records
def test_eval_with_fewer_images_keeps_the_larger_record(tiny_bundle, tmp_path, capsys):
    from veca_deploy.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (scripts/setup.sh)")
    b = _copy(tiny_bundle, tmp_path / "b")
    code, _, err = run_main(["eval", str(b), "--data", "fashion-mnist", "--limit", "32", "-q"], capsys)
    assert code == 0, err
    ov = [a for a in _manifest(b)["artifacts"] if a["format"] == "openvino"]
    assert ov and all(a["accuracy"]["samples"] == 32 for a in ov)
    before = _manifest(b)

    # one backend on a subset: the 32-image records stay, the user is told
    code, out, err = run_main(["eval", str(b), "--data", "fashion-mnist", "--limit", "8", "--backend", "openvino",
                               "-q"], capsys)
    assert code == 0, err
    assert "kept" in err and "32" in err and "--overwrite" in err
    assert "(n=8)" in out  # the table shows this run's numbers and their sample size
    after = _manifest(b)
    assert [a.get("accuracy") for a in after["artifacts"]] == [a.get("accuracy") for a in before["artifacts"]]
    assert _leftovers(tmp_path) == []

    # --overwrite records the smaller run on purpose; --help documents the rule
    code, _, err = run_main(["eval", str(b), "--data", "fashion-mnist", "--limit", "8", "--backend", "openvino",
                             "--overwrite", "-q"], capsys)
    assert code == 0, err
    assert all(a["accuracy"]["samples"] == 8 for a in _manifest(b)["artifacts"] if a["format"] == "openvino")
    code, out, _ = run_main(["eval", "--help"], capsys)
    assert code == 0 and "--overwrite" in out and "kept" in " ".join(out.split())


# ------------------------------------------------------------------ 2. check-trt --trt-version
@pytest.mark.parametrize("version", ["banana", "10", "10.x", "ten.3", "10.3-rc1", "9.0", "12.1", ""])
def test_check_trt_refuses_malformed_or_unknown_versions(tmp_path, capsys, version):
    # refused before the bundle is even read: a missing bundle still gives the usage error
    code, _, err = run_main(["check-trt", str(tmp_path / "nope"), "--trt-version", version], capsys)
    assert_one_line_error(code, err, UsageError, "--trt-version")


@pytest.mark.parametrize("version", ["10.3", "10.14.1", "10.3.0.30", "11.0"])
def test_check_trt_accepts_real_versions(tiny_bundle, capsys, version):
    pytest.importorskip("onnx")
    code, out, err = run_main(["check-trt", str(tiny_bundle), "--trt-version", version], capsys)
    assert code == 0, err
    assert f"TensorRT {version}" in " ".join(out.split())


# ------------------------------------------------------------------ 3. export --image-size bounds
@pytest.mark.parametrize("size", ["99995", "28x99995", "4109"])  # multiples of the patch (7), too large
def test_export_refuses_huge_image_sizes_before_any_work(tmp_path, capsys, monkeypatch, size):
    import veca_deploy.export.pipeline as pipeline

    def never(*a, **k):
        raise AssertionError("the model was loaded for an impossible image size")

    monkeypatch.setattr(pipeline, "resolve_source", never)
    before = snapshot(tmp_path)
    code, _, err = run_main(["export", "veca_tiny", "--random-weights", "--image-size", size, *FAST_EXPORT,
                             "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, UsageError, "4096")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ 4. symlinks
def test_symlink_loop_as_bundle_is_named(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    for cmd in (["inspect", str(loop)], ["validate", str(loop)], ["bench", str(loop), "--quiet"]):
        code, _, err = run_main(cmd, capsys)
        line = assert_one_line_error(code, err, BundleError, "symlink loop")
        assert "no such" not in line
    (tmp_path / "dangling").symlink_to("missing-folder")
    code, _, err = run_main(["inspect", str(tmp_path / "dangling")], capsys)
    assert_one_line_error(code, err, BundleError, "missing-folder", "does not exist")


@pytest.mark.parametrize("kind", ["to-bundle", "dangling", "loop"])
def test_export_out_onto_a_symlink_is_refused_up_front(tiny_bundle, tmp_path, capsys, monkeypatch, kind):
    import veca_deploy.export.pipeline as pipeline

    def never(*a, **k):
        raise AssertionError("export started before refusing the symlink")

    monkeypatch.setattr(pipeline, "resolve_source", never)
    link = tmp_path / "current"
    if kind == "to-bundle":
        _copy(tiny_bundle, tmp_path / "v1")
        link.symlink_to("v1")
    else:
        link.symlink_to("nothing" if kind == "dangling" else "current")
    before = snapshot(tmp_path)
    code, _, err = run_main(["export", "veca_tiny", "--random-weights", *FAST_EXPORT, "--out", str(link), "--force"],
                            capsys)
    assert_one_line_error(code, err, OutputExistsError, "symbolic link")
    assert snapshot(tmp_path) == before  # link, target and parent as they were: no .old-* / .partial-*


def test_staged_update_through_a_symlink_updates_its_target_and_leaves_nothing(tiny_bundle, tmp_path):
    from veca_deploy.bundle.io import staged_update

    _copy(tiny_bundle, tmp_path / "v1")
    link = tmp_path / "current"
    link.symlink_to("v1")
    with staged_update(link) as stage:
        (stage / "added.txt").write_text("x")
    assert link.is_symlink() and os.readlink(link) == "v1"
    assert (tmp_path / "v1" / "added.txt").read_text() == "x"
    assert _leftovers(tmp_path) == []


def test_swap_in_over_a_symlink_leaves_no_old_link(tmp_path):
    from veca_deploy.bundle.io import swap_in

    (tmp_path / "target").mkdir()
    (tmp_path / "out").symlink_to("target")
    stage = tmp_path / ".out.partial-x"
    stage.mkdir()
    swap_in(stage, tmp_path / "out")
    assert (tmp_path / "out").is_dir() and not (tmp_path / "out").is_symlink()
    assert _leftovers(tmp_path) == [] and (tmp_path / "target").is_dir()


# ------------------------------------------------------------------ 5. select verifies the chosen file
def test_select_refuses_a_chosen_artifact_truncated_after_profiling(tiny_bundle, tmp_path, capsys):
    b = _copy(tiny_bundle, tmp_path / "b")
    args = ["select", str(b), "--budget-ms", "1000", "--backend", "onnxruntime", "--tiers", "8", "--count", "3"]
    code, out, err = run_main([*args, "--json"], capsys)
    assert code == 0, err
    chosen = json.loads(out)["chosen"]["artifact"]
    art = next(a for a in _manifest(b)["artifacts"] if a["id"] == chosen)
    path = b / art["path"]
    path.write_bytes(path.read_bytes()[: art["bytes"] // 2])  # the profile is now stale
    code, _, err = run_main([*args, "--no-measure"], capsys)
    assert_one_line_error(code, err, BundleError, chosen, "truncated")

    # same size, other bytes: the sha256 catches it
    path.write_bytes(b"\0" * art["bytes"])
    code, _, err = run_main([*args, "--no-measure"], capsys)
    assert_one_line_error(code, err, BundleError, chosen, "sha256")


# ------------------------------------------------------------------ 6. a text file as checkpoint
@pytest.mark.parametrize("name", ["notes.txt", "notes.pt", "empty.pt"])
def test_text_file_as_checkpoint_is_one_line_checkpoint_error(tmp_path, capsys, name):
    p = tmp_path / name
    p.write_text("" if name.startswith("empty") else "hello world\nthese are not weights\n")
    before = snapshot(tmp_path)
    code, _, err = run_main(["export", str(p), *FAST_EXPORT, "--out", str(tmp_path / "out")], capsys)
    line = assert_one_line_error(code, err, CheckpointError, name, "not a checkpoint", "safetensors",
                                 "weights_only=True")
    assert "KeyError" not in line
    assert snapshot(tmp_path) == before


def test_pickled_checkpoints_are_only_loaded_with_weights_only(golden_dir, monkeypatch):
    import torch

    import veca_deploy

    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    veca_deploy.load_checkpoint(golden_dir / "checkpoint.pt")
    assert calls and all(w is True for w in calls)


# ------------------------------------------------------------------ 7. export --config for a bare state_dict
@pytest.fixture(scope="module")
def bare_state_dict(tmp_path_factory) -> Path:
    import torch

    from veca_deploy.model.registry import create_model

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("ckpt") / "weights.pt"
    torch.save(create_model("veca_tiny").state_dict(), p)
    return p


def test_bare_state_dict_without_config_says_pass_config(bare_state_dict, tmp_path, capsys):
    code, _, err = run_main(["export", str(bare_state_dict), *FAST_EXPORT, "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, CheckpointError, "weights.pt", "no model config", "--config")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_bare_state_dict_exports_with_a_registry_config_or_a_json_file(bare_state_dict, tmp_path, capsys):
    from veca_deploy.model.registry import model_config

    code, _, err = run_main(["export", str(bare_state_dict), "--config", "veca_tiny", *FAST_EXPORT,
                             "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    m = _manifest(tmp_path / "a")
    assert m["model"]["config"]["hidden_dim"] == 96 and m["model"]["config_from"] == "given"

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(model_config("veca_tiny").to_dict()))
    code, _, err = run_main(["export", str(bare_state_dict), "--config", str(cfg), *FAST_EXPORT,
                             "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert _manifest(tmp_path / "b")["model"]["source_sha256"] == m["model"]["source_sha256"]


def test_safetensors_file_without_config_json_uses_config(bare_state_dict, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    w = tmp_path / "w" / "tiny.safetensors"
    w.parent.mkdir()
    save_file({k: v.contiguous() for k, v in torch.load(bare_state_dict, weights_only=True).items()}, str(w))
    code, _, err = run_main(["export", str(w), *FAST_EXPORT, "--out", str(tmp_path / "x")], capsys)
    assert_one_line_error(code, err, CheckpointError, "config.json", "--config")
    code, _, err = run_main(["export", str(w), "--config", "veca_tiny", *FAST_EXPORT, "--out", str(tmp_path / "x")],
                            capsys)
    assert code == 0, err


@pytest.mark.parametrize("case", ["unknown-name", "bad-json", "unknown-field", "with-registry-source"])
def test_bad_config_is_one_line_usage_error(bare_state_dict, tmp_path, capsys, case):
    src, cfg = str(bare_state_dict), "veca_nonexistent"
    if case == "bad-json":
        (tmp_path / "c.json").write_text("{not json")
        cfg = str(tmp_path / "c.json")
    elif case == "unknown-field":
        (tmp_path / "c.json").write_text(json.dumps({"hidden_dim": 96, "colour": "blue"}))
        cfg = str(tmp_path / "c.json")
    elif case == "with-registry-source":
        src, cfg = "veca_tiny", "veca_tiny"
    before = snapshot(tmp_path)
    code, _, err = run_main(["export", src, "--random-weights" if case == "with-registry-source" else "--quiet",
                             "--config", cfg, *FAST_EXPORT, "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, UsageError, "--config")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ 8. one default epoch count
def test_train_help_states_the_default_epochs_the_code_uses(capsys):
    from veca_deploy.model.registry import DEFAULT_EPOCHS
    from veca_deploy.model.train import TrainConfig

    code, out, _ = run_main(["train", "--help"], capsys)
    assert code == 0
    assert TrainConfig().epochs == DEFAULT_EPOCHS
    assert f"the reference recipe ({TrainConfig().epochs})" in " ".join(out.split())


# ------------------------------------------------------------------ 9. bare veca-deploy
def test_bare_command_prints_the_normal_help(capsys):
    code, out, err = run_main([], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("Usage: veca-deploy") and len(lines) > 10
    assert "Commands:" in out and any(ln.strip().startswith("export") for ln in lines)


# ------------------------------------------------------------------ 10. bench --plot into a missing folder
def test_bench_plot_into_a_missing_folder_is_refused_before_measuring(tiny_bundle, tmp_path, capsys):
    b = _copy(tiny_bundle, tmp_path / "b")
    before = snapshot(tmp_path)
    png = tmp_path / "nonexistent" / "p.png"
    code, _, err = run_main(["bench", str(b), "--plot", str(png), "--quiet"], capsys)
    assert_one_line_error(code, err, UsageError, "--plot", "does not exist")
    assert not png.parent.exists()
    assert snapshot(tmp_path) == before  # no profile either: nothing was measured


# ------------------------------------------------------------------ 11. tables off a terminal; top-1 one way
def _with_top1_records(b: Path) -> None:
    d = _manifest(b)
    for a in d["artifacts"]:
        if a["elastic"]:
            a["accuracy"] = {"dataset": "x", "samples": 2000, "backend": "onnxruntime", "metric": "top1",
                             "per_tier": {str(c): 0.8 + c / 1000 for c in a["tiers"]}}
        else:
            a["accuracy"] = {"dataset": "x", "samples": 2000, "backend": "onnxruntime", "metric": "top1",
                             "top1": 0.8865}
    (b / "manifest.json").write_text(json.dumps(d))


def test_tables_piped_to_a_file_keep_every_artifact_id_whole(tiny_bundle, tmp_path, capsys, monkeypatch):
    b = _copy(tiny_bundle, tmp_path / "b")
    _with_top1_records(b)
    # stdout captured (not a terminal) while another stream is an 80-column terminal, COLUMNS unset
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(os, "get_terminal_size", lambda *a: os.terminal_size((80, 24)))
    code, out, err = run_main(["inspect", str(b)], capsys)
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if "-28x28" in ln]
    ids = [a["id"] for a in _manifest(b)["artifacts"]]
    for aid in ids:
        assert sum(aid in ln.split() or f" {aid} " in f" {ln} " for ln in rows) == 1, (aid, out)
    assert max(len(ln) for ln in out.splitlines()) > 80  # laid out wider than the terminal would be


def test_top1_is_printed_one_way_with_its_sample_size(tiny_bundle, tmp_path, capsys):
    from veca_deploy.commands.common import format_top1

    assert format_top1(0.8865, 2000) == format_top1(88.65, 2000) == "88.65 % (n=2000)"
    assert format_top1(None) == "-" and format_top1(0.5) == "50.00 %"
    b = _copy(tiny_bundle, tmp_path / "b")
    _with_top1_records(b)
    code, out, err = run_main(["inspect", str(b)], capsys)
    assert code == 0, err
    assert "88.65 % (n=2000)" in out and "c8 80.80 %" in out
    code, out, err = run_main(["select", str(b), "--budget-ms", "1000", "--backend", "onnxruntime", "--tiers", "8",
                               "--count", "3"], capsys)
    assert code == 0, err
    assert "88.65 % (n=2000)" in out and "80.80 % (n=2000)" in out


# ------------------------------------------------------------------ 12. the example without Pillow
def test_classify_folder_without_pillow_is_one_line(tiny_bundle, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("classify_folder", ROOT / "examples" / "classify_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    b = _copy(tiny_bundle, tmp_path / "b")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL -> ImportError, as without Pillow
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = mod.main([str(b), str(imgs), "--budget-ms", "1000"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "pip install pillow" in lines[0] and "Traceback" not in err
    assert snapshot(tmp_path) == before  # refused before the runtime profiled anything
