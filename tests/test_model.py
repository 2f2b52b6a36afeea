"""The PyTorch VECA against the authors' golden vectors, plus our own invariants."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import veca_deploy
from veca_deploy.errors import UsageError
from veca_deploy.model.flops import forward_flops, param_count
from veca_deploy.model.registry import FAMILIES, list_models, model_config
from veca_deploy.model.veca import VECA, rope_inv_periods


def _cases(golden_dir):
    meta = json.loads((golden_dir / "cases.json").read_text())
    return meta, load_file(str(golden_dir / "cases.safetensors"))


def test_golden_vectors_match_to_1e5(golden_dir):
    model = veca_deploy.load_checkpoint(golden_dir / "checkpoint.pt")
    meta, cases = _cases(golden_dir)
    assert model.num_params() == meta["parameters"]
    assert len(meta["cases"]) >= 4
    for case in meta["cases"]:
        i = case["case"]
        x = cases[f"case{i}.input"]
        assert list(x.shape) == [case["batch"], 3, case["height"], case["width"]]
        with torch.no_grad():
            g, p = model(x, cores=case["active_cores"])
        torch.testing.assert_close(g, cases[f"case{i}.global"], atol=1e-5, rtol=0)
        torch.testing.assert_close(p, cases[f"case{i}.patches"], atol=1e-5, rtol=0)


class _AttentionCalls(TorchDispatchMode):
    """Records the (query, key) shapes of every attention kernel the forward pass really runs."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in str(func):
            self.shapes.append((tuple(args[0].shape), tuple(args[1].shape)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,overrides,size,cores", [
    ("veca_tiny", {}, (28, 28), 8),
    ("veca_tiny", {}, (28, 42), 16),  # non-square: N = 4 x 6
    ("veca_tiny", {"num_classes": 10, "distill_output_dim": 48}, (56, 28), 32),  # head + output projection
    ("vit_tiny", {}, (28, 42), None),
])
def test_analytic_flops_match_the_shapes_the_model_runs(name, overrides, size, cores):
    """forward_flops against what the forward pass executes: every Linear/Conv2d counted by torch's
    FlopCounterMode, plus QK^T and AV of the attention kernels actually dispatched. Per layer the
    query-key pairs must be 2NC + C^2 for VECA (cores see all C+N tokens, patches only the C cores)
    and (N+1)^2 for the ViT baseline."""
    torch.manual_seed(0)
    cfg = model_config(name, **overrides)
    model = VECA(cfg).eval()
    b, (h, w) = 2, size
    x = torch.randn(b, 3, h, w)
    with FlopCounterMode(display=False) as counter, _AttentionCalls() as attn, torch.no_grad():
        model(x, cores=cores)
    per_module = counter.get_flop_counts()
    dense_names = [f"{type(model).__name__}.{n}" for n, m in model.named_modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert all(n in per_module for n in dense_names), sorted(set(dense_names) - set(per_module))
    dense = sum(sum(per_module[n].values()) for n in dense_names)

    n_patches = (h // cfg.patch_size) * (w // cfg.patch_size)
    calls_per_layer = 1 if cfg.attention == "full" else 2
    assert len(attn.shapes) == cfg.num_layers * calls_per_layer
    attention = 0
    for layer in range(cfg.num_layers):
        calls = attn.shapes[layer * calls_per_layer:(layer + 1) * calls_per_layer]
        pairs = sum(q[2] * k[2] for q, k in calls)
        if cfg.attention == "full":
            assert pairs == (n_patches + 1) ** 2
        else:
            assert pairs == 2 * n_patches * cores + cores ** 2
        for q, k in calls:
            assert q[0] == b and q[1] * q[3] == cfg.hidden_dim and k[3] == q[3]
            attention += 2 * 2 * q[0] * q[1] * q[2] * k[2] * q[3]  # QK^T and AV, 2 FLOPs per multiply-add
    assert dense + attention == b * forward_flops(cfg, h, w, cores)


@pytest.mark.parametrize("cores", [0, 4, 12, 40, -8, 8.0, True])
def test_invalid_core_counts_are_value_errors(cores):
    m = veca_deploy.create_model("veca_tiny")
    with pytest.raises(ValueError, match="cores"):
        m(torch.zeros(1, 3, 28, 28), cores=cores)


def test_bad_image_shapes_are_value_errors():
    m = veca_deploy.create_model("veca_tiny")
    with pytest.raises(ValueError, match="multiples of the patch size"):
        m(torch.zeros(1, 3, 30, 28))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        m(torch.zeros(1, 1, 28, 28))


def test_prefix_semantics_cores_are_a_prefix_of_the_bank():
    """Running with C cores must equal a model whose bank holds only the first C cores."""
    torch.manual_seed(0)
    big = VECA(model_config("veca_tiny"))
    big.pos_alpha.data.normal_()  # make coordinate motion matter
    for lin in big.pos_linears:
        torch.nn.init.normal_(lin.weight, std=0.1)
    small = VECA(model_config("veca_tiny", num_query_tokens=16))
    sd = {k: v for k, v in big.state_dict().items() if "chunks." not in k or int(k.split(".")[1]) < 2}
    small.load_state_dict(sd)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        a = big(x, cores=16)
        b = small(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_patches_do_not_attend_to_each_other():
    """Changing one patch may change other patches' outputs only through the cores: with one
    layer, other patches' outputs are unchanged when the cores' keys and values are unchanged."""
    torch.manual_seed(0)
    cfg = model_config("veca_tiny", num_layers=1)
    m = VECA(cfg).eval()
    x = torch.randn(1, 3, 28, 28)
    y = x.clone()
    y[..., :7, :7] += 1.0  # perturb patch 0 only
    with torch.no_grad():
        tok_x, _ = m.forward_tokens(x, 8)
        tok_y, _ = m.forward_tokens(y, 8)
    # cores attend to the perturbed patch, so they change; in a single layer the other patches
    # only read the cores' keys/values, which are computed from the *input* core tokens (unchanged)
    torch.testing.assert_close(tok_x[:, 8 + 1:], tok_y[:, 8 + 1:])
    assert not torch.allclose(tok_x[:, 8], tok_y[:, 8])


def test_vit_baseline_is_all_to_all_and_same_width():
    torch.manual_seed(0)
    vit = veca_deploy.create_model("vit_tiny").eval()
    veca = veca_deploy.create_model("veca_tiny")
    assert vit.cfg.hidden_dim == veca.cfg.hidden_dim and vit.cfg.num_layers == veca.cfg.num_layers
    assert vit.cfg.mlp_hidden == veca.cfg.mlp_hidden
    x = torch.randn(1, 3, 28, 28)
    y = x.clone()
    y[..., :7, :7] += 1.0
    with torch.no_grad():
        g, p = vit(x)
        _, q = vit(y)
    assert g.shape == (1, 96) and p.shape == (1, 16, 96)
    assert not torch.allclose(p[:, 5], q[:, 5])  # patch 5 sees patch 0 directly
    with pytest.raises(ValueError):
        vit(x, cores=8)


def test_head_adds_logits():
    m = veca_deploy.create_model("veca_tiny", num_classes=10).eval()
    with torch.no_grad():
        out = m(torch.zeros(2, 3, 28, 28), cores=8)
    assert len(out) == 3 and out[2].shape == (2, 10)


def test_registry_lists_families_and_baselines():
    names = list_models()
    for fam in ("small", "splus", "base", "large", "tiny"):
        assert f"veca_{fam}" in names and f"vit_{fam}" in names
    assert model_config("veca_splus").mlp_hidden == 1536
    assert model_config("veca_small").mlp_hidden == 1024
    with pytest.raises(UsageError, match="unknown model"):
        veca_deploy.create_model("veca_huge")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_analytic_params_match_the_module(family):
    for name in (f"veca_{family}", f"vit_{family}"):
        cfg = model_config(name, num_classes=7, distill_output_dim=32)
        with torch.device("meta"):
            m = VECA(cfg)
        assert param_count(cfg) == sum(p.numel() for p in m.parameters())


def test_flops_scale_linearly_for_veca_and_quadratically_for_vit():
    veca, vit = model_config("veca_small"), model_config("vit_small")
    r_veca = forward_flops(veca, 1024, 1024, 16) / forward_flops(veca, 512, 512, 16)
    r_vit = forward_flops(vit, 1024, 1024) / forward_flops(vit, 512, 512)
    assert 3.9 < r_veca < 4.2 and r_vit > 4.5


def test_rope_zero_frequencies():
    inv = rope_inv_periods(64, 100.0, 0.125, "low")  # 16 periods, round(2.0) = 2 zeroed at the end
    assert inv.shape == (16,) and (inv[-2:] == 0).all() and (inv[:-2] > 0).all()
    inv = rope_inv_periods(64, 100.0, 0.125, "high")
    assert (inv[:2] == 0).all() and (inv[2:] > 0).all()
    inv = rope_inv_periods(32, 100.0, 0.125, "low")  # round(1.0) = 1
    assert (inv == 0).sum() == 1
    inv = rope_inv_periods(16, 100.0, 0.125, "low")  # round(0.5) = 0: half to even
    assert (inv == 0).sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rotate_half_matmul_is_bit_identical_to_the_pair_rotation(dtype):
    """The exported form (t @ R) must equal the textbook pair rotation exactly, in every dtype."""
    from veca_deploy.model.veca import rotate_half, rotation_matrix

    t = (torch.randn(2, 3, 7, 16) * 100).to(dtype)
    pairs = t.unflatten(-1, (-1, 2))
    expected = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    assert torch.equal(rotate_half(t, rotation_matrix(16).to(dtype)), expected)
    assert torch.equal(rotate_half(t), expected)


def test_rotation_buffer_is_not_part_of_checkpoints_and_follows_dtype():
    m = veca_deploy.create_model("veca_tiny")
    assert not any("rope_rot" in k for k in m.state_dict())
    assert m.half().blocks[0].attn.rope_rot.dtype == torch.float16


@pytest.mark.parametrize("name,cores", [("veca_tiny", 16), ("vit_tiny", None)])
def test_graph_form_computes_the_same_numbers_and_is_undone(name, cores):
    """The exported form (token-layout RoPE, constant patch tables, fc1 as two products, the
    blocks' LayerNorm affine folded into the products after them) is the same computation as the
    eager one, and leaving the block restores eager's form and every weight."""
    from veca_deploy.model.registry import latency_weights
    from veca_deploy.model.veca import graph_form

    torch.manual_seed(0)
    m = latency_weights(veca_deploy.create_model(name)).eval()
    x = torch.randn(2, 3, 28, 42)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        eager = m(x, cores=cores)
        with graph_form(m):
            assert m.export_form and all(b.split_fc1 for b in m.blocks)
            for b in m.blocks:  # folded: bare normalisations
                for norm in (b.norm_attn, b.norm_ffn):
                    assert bool((norm.weight == 1).all()) and bool((norm.bias == 0).all())
            assert not bool((m.final_norm.weight == 1).all())  # no product after it to fold into
            exported = m(x, cores=cores)
        assert not m.export_form and not any(b.split_fc1 for b in m.blocks)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    for a, b in zip(eager, exported):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_graph_form_undoes_its_fold_after_an_error_and_folds_half_precision_in_float32():
    """An export that fails inside the graph form leaves the model as it was (flags and weights),
    and a half-precision product after an fp32 norm (the 'norms in fp32' pattern) folds without a
    dtype error."""
    from veca_deploy.model.registry import latency_weights
    from veca_deploy.model.veca import graph_form

    m = latency_weights(veca_deploy.create_model("veca_tiny")).eval()  # norms that are not 1 and 0: a fold changes them
    m.blocks[0].attn.q_proj.half()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match="export failed"):
        with graph_form(m):
            assert m.blocks[0].attn.q_proj.weight.dtype == torch.float16
            assert not torch.equal(before["blocks.0.attn.q_proj.weight"], m.blocks[0].attn.q_proj.weight)  # folded
            raise RuntimeError("export failed")
    assert not m.export_form and not any(b.split_fc1 for b in m.blocks)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
