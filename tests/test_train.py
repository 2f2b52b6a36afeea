"""``veca-deploy train`` (veca_deploy/model/train.py): a few nested-core steps on a handful of
Fashion-MNIST images really learn, and the folder it writes loads back as the trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import veca_deploy
from veca_deploy.data import fashion_mnist, fashion_mnist_available
from veca_deploy.model.registry import model_config
from veca_deploy.model.train import evaluate_tiers, to_model_input
from veca_deploy.model.veca import VECA

pytestmark = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")

TRAIN_IMAGES, EPOCHS, BATCH, EVAL = 256, 6, 32, 200


def _loss(model, images: np.ndarray, labels: np.ndarray, cores: int) -> float:
    x = to_model_input(images, model.cfg.mean, model.cfg.std)
    with torch.no_grad():
        logits = model.eval()(x, cores=cores)[-1]
    return float(F.cross_entropy(logits, torch.from_numpy(np.array(labels))))


@pytest.mark.extended  # CI's extended job (.ci/run), not the default suite
def test_train_cli_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    from veca_deploy.cli import main

    out = tmp_path / "model"
    capsys.readouterr()
    code = main(["train", "--epochs", str(EPOCHS), "--train-limit", str(TRAIN_IMAGES), "--batch-size", str(BATCH),
                 "--lr", "3e-3", "--eval-limit", str(EVAL), "--threads", "2", "--seed", "0", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "config.json", "model.safetensors"]

    card = json.loads((out / "card.json").read_text())
    assert card["recipe"]["train_limit"] == TRAIN_IMAGES and card["data"]["train_images"] == TRAIN_IMAGES
    assert card["data"]["test_images"] == EVAL and len(card["history"]) == EPOCHS
    losses = [h["train_loss"] for h in card["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses

    model = veca_deploy.load_checkpoint(out)  # safetensors + config.json, as shipped
    assert model.cfg.num_classes == 10 and model.cfg.model_family == "tiny"
    assert model.source_path == str(out) and len(model.source_sha256) == 64

    # the weights on disk are the trained ones: they reproduce the card's test accuracy exactly ...
    te_x, te_y = fashion_mnist("test")
    acc = evaluate_tiers(model, te_x[:EVAL], te_y[:EVAL])
    assert {str(c): round(a, 2) for c, a in acc.items()} == card["test_top1"]
    # ... and fit the training images far better than the same seeded initialisation did
    tr_x, tr_y = fashion_mnist("train")
    tr_x, tr_y = tr_x[:TRAIN_IMAGES], tr_y[:TRAIN_IMAGES]
    torch.manual_seed(0)
    init = VECA(model_config("veca_tiny", num_classes=10))
    for c in model.cfg.core_tiers:
        before, after = _loss(init, tr_x, tr_y, c), _loss(model, tr_x, tr_y, c)
        assert after < 0.8 * before, (c, before, after)
    assert max(acc.values()) > 30.0  # chance is 10%
