"""Nested-core training of VECA classifiers, and the recipe of the built-in reference model.

Each step draws one prefix budget for the whole batch, with weights rising toward the largest
budget as in the paper ((1,1,2,2,3,3,4,4) over 8..64: weight = ceil(rank/2)), so one set of
weights serves every tier.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data import FASHION_MNIST_DIR, fashion_mnist
from ..bundle.io import sha256_file
from .checkpoint import save_pretrained
from ..runtimes.fingerprint import cpu_info
from .registry import DEFAULT_EPOCHS, DEFAULT_MODEL, model_config


@dataclass
class NestedRecipe:
    """What every nested-core recipe here shares: the budget draw (one prefix budget per step,
    weights ceil(rank/2) unless given), AdamW with no decay on norms, biases and the core bank,
    and a linear warmup into a cosine decay."""

    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    budget_weights: tuple[float, ...] | None = None  # default ceil(rank/2)

    def weights(self, tiers: list[int]) -> np.ndarray:
        w = np.asarray(self.budget_weights if self.budget_weights else
                       [math.ceil((i + 1) / 2) for i in range(len(tiers))], dtype=np.float64)
        if len(w) != len(tiers):
            raise ValueError(f"budget_weights has {len(w)} entries for {len(tiers)} tiers")
        return w / w.sum()

    def optimizer(self, model: torch.nn.Module) -> torch.optim.AdamW:
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "chunks" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "chunks" not in n)]
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.lr)

    def lr_at(self, step: int, total: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


@dataclass
class TrainConfig(NestedRecipe):
    """The classifier recipe. Defaults reproduce the shipped reference model."""

    model: str = DEFAULT_MODEL
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 64
    label_smoothing: float = 0.0
    augment: bool = False  # random horizontal flip + 2-pixel shifts; off: 4 epochs underfit, not overfit
    train_limit: int | None = None  # for smoke tests only
    eval_limit: int | None = None


def to_model_input(images_u8: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Grey uint8 [N, H, W] -> normalized float32 [N, 3, H, W] (grey replicated to RGB)."""
    x = torch.from_numpy(np.array(images_u8, dtype=np.float32)).div_(255.0)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    pad = 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return xp[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


@torch.no_grad()
def evaluate_tiers(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> dict[int, float]:
    """Top-1 accuracy (%) at every core tier on the given grey uint8 images."""
    model.eval()
    cfg = model.cfg
    x_all = to_model_input(images, cfg.mean, cfg.std)
    y = torch.from_numpy(np.array(labels))
    acc = {}
    for c in cfg.core_tiers:
        correct = 0
        for i in range(0, len(x_all), batch_size):
            logits = model(x_all[i:i + batch_size], cores=c)[-1]
            correct += int((logits.argmax(-1) == y[i:i + batch_size]).sum())
        acc[c] = 100.0 * correct / len(x_all)
    return acc


def train(cfg: TrainConfig | None = None, progress: Callable[[int, int, dict], None] | None = None):
    """Train a classifier with nested core budgets on Fashion-MNIST.

    Returns ``(model, card)``; the card records the recipe, data, seed, timing and the test
    accuracy at every tier on the test split (all 10k images unless ``eval_limit``).
    """
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)

    mcfg = model_config(cfg.model, num_classes=10)
    from .veca import VECA

    model = VECA(mcfg)
    tr_x, tr_y = fashion_mnist("train")
    te_x, te_y = fashion_mnist("test")
    if cfg.train_limit:
        tr_x, tr_y = tr_x[: cfg.train_limit], tr_y[: cfg.train_limit]
    if cfg.eval_limit:
        te_x, te_y = te_x[: cfg.eval_limit], te_y[: cfg.eval_limit]
    x_train = to_model_input(tr_x, mcfg.mean, mcfg.std)
    y_train = torch.from_numpy(np.array(tr_y))

    opt = cfg.optimizer(model)
    steps_per_epoch = len(x_train) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    tiers = mcfg.core_tiers
    probs = cfg.weights(tiers)
    rng = np.random.default_rng(cfg.seed)

    t0 = time.perf_counter()
    step = 0
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if cfg.augment:
                xb = _augment(xb, gen)
            cores = int(rng.choice(tiers, p=probs))
            for g in opt.param_groups:
                g["lr"] = cfg.lr_at(step, total)
            logits = model(xb, cores=cores)[-1]
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            loss_sum += float(loss.detach())
            step += 1
            if progress:
                progress(step, total, {"epoch": epoch + 1, "loss": float(loss.detach())})
        probe = evaluate_tiers(model, te_x[:1000], te_y[:1000])
        history.append({"epoch": epoch + 1, "train_loss": round(loss_sum / steps_per_epoch, 4),
                        "seconds": round(time.perf_counter() - t0, 1),
                        "test1k_top1": {str(c): round(a, 2) for c, a in probe.items()}})
        if progress:
            progress(step, total, {"epoch": epoch + 1, "history": history[-1]})
    train_s = time.perf_counter() - t0
    model.eval()
    acc = evaluate_tiers(model, te_x, te_y)
    card = {
        "model": cfg.model,
        "task": "Fashion-MNIST classification (10 classes), grey replicated to RGB",
        "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "budget_probabilities": {str(c): round(float(p), 4) for c, p in zip(tiers, probs)},
        "data": {
            "source": "Debian package dataset-fashion-mnist",
            "train_images": int(len(x_train)),
            "test_images": int(len(te_x)),
            "files": {f.name: sha256_file(f) for f in sorted(FASHION_MNIST_DIR.glob("*.gz"))},
        },
        "test_top1": {str(c): round(a, 2) for c, a in acc.items()},
        "history": history,
        "parameters": model.num_params(),
        "train_seconds": round(train_s, 1),
        "machine": f"{(cpu_info()['model'] or platform.machine())} ({torch.get_num_threads()} threads), torch {torch.__version__}",
    }
    return model, card


def train_reference(out: str | Path, cfg: TrainConfig | None = None, progress=None) -> dict[str, Any]:
    """Train and save (safetensors + config + card) the reference model into ``out``."""
    model, card = train(cfg, progress)
    save_pretrained(model, out, card=card)
    return card
