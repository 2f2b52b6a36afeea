"""Checkpoint loading: the authors' format (every variant we know of), our safetensors folders,
and every way a checkpoint can be wrong."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

import veca_deploy
from veca_deploy.errors import CheckpointError
from veca_deploy.model.checkpoint import save_pretrained
from veca_deploy.model.registry import model_config
from veca_deploy.model.veca import VECA

from .reference_impl import naive_forward


def _author_checkpoint(path, cfg_overrides: dict, prefix: str = "", extra: dict | None = None, seed: int = 0):
    """Write a checkpoint in the authors' layout from a randomly initialized model."""
    torch.manual_seed(seed)
    author_cfg = dict(model_family="custom", num_query_tokens=16, hidden_dim=64, num_heads=2, num_layers=2,
                      mlp_ratio=2.66667, patch_size=8, in_channels=3, patch_embed_use_ln=False,
                      rope_p_zero_freqs=0.125, rope_zero_freqs_from="low", nested_chunk_size=8,
                      distill_output_dim=None, nested_budgets=(8, 16), lr=1e-4, teacher_id="x")
    author_cfg.update(cfg_overrides)
    from veca_deploy.model.config import VecaConfig

    model = VECA(VecaConfig.from_author_config(author_cfg))
    with torch.no_grad():  # make every parameter matter (defaults zero some of them)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    obj = {"student": sd, "config": author_cfg, **(extra or {})}
    torch.save(obj, path)
    return model.state_dict(), author_cfg


VARIANTS = {
    "splus_mlp": dict(mlp_ratio=4.0, model_family="splus"),
    "output_proj": dict(distill_output_dim=48),
    "patch_ln": dict(patch_embed_use_ln=True),
    "zero_high": dict(rope_zero_freqs_from="high", rope_p_zero_freqs=0.25),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("prefix", ["", "module.", "student."])
def test_author_format_variants_match_naive_reference(tmp_path, variant, prefix):
    path = tmp_path / "ckpt.pt"
    sd, cfg = _author_checkpoint(path, VARIANTS[variant], prefix=prefix,
                                 extra={"optimizer": {"state": {}, "param_groups": []}, "step": 12})
    model = veca_deploy.load_checkpoint(path)
    x = torch.randn(2, 3, 32, 48)
    for cores in (8, 16):
        with torch.no_grad():
            g, p = model(x, cores=cores)
            rg, rp = naive_forward(sd, cfg, x, cores)
        torch.testing.assert_close(g, rg, atol=1e-5, rtol=0)
        torch.testing.assert_close(p, rp, atol=1e-5, rtol=0)
    if variant == "output_proj":
        assert g.shape[-1] == 48
    assert len(model.source_sha256) == 64


def test_naive_reference_agrees_with_golden(golden_dir):
    """The naive reference itself reproduces the authors' vectors, so it is a fair judge."""
    from safetensors.torch import load_file

    obj = torch.load(golden_dir / "checkpoint.pt", weights_only=True)
    cases = load_file(str(golden_dir / "cases.safetensors"))
    meta = json.loads((golden_dir / "cases.json").read_text())
    c = meta["cases"][2]
    g, p = naive_forward(obj["student"], obj["config"], cases["case2.input"], c["active_cores"])
    torch.testing.assert_close(g, cases["case2.global"], atol=1e-5, rtol=0)
    torch.testing.assert_close(p, cases["case2.patches"], atol=1e-5, rtol=0)


def test_save_pretrained_roundtrip(tmp_path):
    torch.manual_seed(1)
    m = veca_deploy.create_model("veca_tiny", num_classes=10).eval()
    save_pretrained(m, tmp_path / "w")
    assert sorted(os.listdir(tmp_path / "w")) == ["config.json", "model.safetensors"]
    m2 = veca_deploy.load_checkpoint(tmp_path / "w")
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        for a, b in zip(m(x, cores=16), m2(x, cores=16)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    # saving again over an existing folder replaces it atomically
    save_pretrained(m, tmp_path / "w")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_reference_model_ships_with_card():
    from veca_deploy.model.checkpoint import reference_card

    m = veca_deploy.create_model("veca_tiny", pretrained=True)
    card = reference_card()
    assert m.cfg.num_classes == 10
    assert set(card["test_top1"]) == {str(c) for c in m.cfg.core_tiers}
    assert card["data"]["test_images"] == 10000


# --------------------------------------------------------------------------- bad checkpoints
def test_missing_file():
    with pytest.raises(CheckpointError, match="no such file"):
        veca_deploy.load_checkpoint("/nonexistent/ckpt.pt")


def test_truncated_checkpoint(tmp_path, golden_dir):
    data = (golden_dir / "checkpoint.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        veca_deploy.load_checkpoint(tmp_path / "t.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        veca_deploy.load_checkpoint(tmp_path / "x.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        veca_deploy.load_checkpoint(tmp_path / "list.pt")
    torch.save({"weights": {}}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="'student' and 'config'"):
        veca_deploy.load_checkpoint(tmp_path / "d.pt")


def test_missing_unexpected_and_misshaped_keys(tmp_path):
    sd, cfg = _author_checkpoint(tmp_path / "a.pt", {})
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    del obj["student"]["blocks.0.fc1.weight"]
    torch.save(obj, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing keys blocks.0.fc1.weight"):
        veca_deploy.load_checkpoint(tmp_path / "missing.pt")
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    obj["student"]["blocks.9.attn.q_proj.weight"] = torch.zeros(1)
    torch.save(obj, tmp_path / "unexpected.pt")
    with pytest.raises(CheckpointError, match="unexpected keys blocks.9"):
        veca_deploy.load_checkpoint(tmp_path / "unexpected.pt")
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    obj["student"]["final_norm.weight"] = torch.zeros(65)
    torch.save(obj, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape mismatch for final_norm.weight"):
        veca_deploy.load_checkpoint(tmp_path / "shape.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('VECA_EVIL_MARKER', '/tmp/veca_evil_marker')}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VECA_EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"student": _Evil(), "config": {}}, f)
    torch.save({"student": {"x": _Evil()}, "config": {}}, tmp_path / "evil_zip.pt")
    for p in (path, tmp_path / "evil_zip.pt"):
        with pytest.raises(CheckpointError, match="weights_only|not a readable"):
            veca_deploy.load_checkpoint(p)
    assert not marker.exists()


def test_safetensors_folder_errors(tmp_path):
    (tmp_path / "w").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        veca_deploy.load_checkpoint(tmp_path / "w")
    m = veca_deploy.create_model("veca_tiny")
    save_pretrained(m, tmp_path / "ok")
    (tmp_path / "ok" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        veca_deploy.load_checkpoint(tmp_path / "ok")
    save_pretrained(m, tmp_path / "ok2")
    cfg = json.loads((tmp_path / "ok2" / "config.json").read_text())
    cfg["hidden_dim"] = 128
    cfg["num_heads"] = 4
    (tmp_path / "ok2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        veca_deploy.load_checkpoint(tmp_path / "ok2")
    save_pretrained(m, tmp_path / "ok3")
    (tmp_path / "ok3" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        veca_deploy.load_checkpoint(tmp_path / "ok3")


def test_config_to_from_dict_roundtrip():
    cfg = model_config("veca_splus", num_classes=3)
    from veca_deploy.model.config import VecaConfig

    assert VecaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CheckpointError, match="unknown config keys"):
        VecaConfig.from_dict({**cfg.to_dict(), "bogus": 1})
