"""Nested-core training of the dense reference model (segmentation of Fashion-MNIST canvases).

Same budget rule as ``train.py``: one prefix budget per step, drawn with weights ceil(rank/2),
so one set of weights serves every tier; per-pixel cross-entropy; mIoU per tier on a held-out
split generated from the Fashion-MNIST test images.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..bundle.io import sha256_file
from ..data import FASHION_MNIST_DIR
from ..metrics import ConfusionMatrix
from ..runtimes.fingerprint import cpu_info
from .. import seg_data
from .checkpoint import save_pretrained
from .task import TaskModel, create_task_model
from .train import NestedRecipe

#: the backbone of the reference seg model: veca_tiny's blocks at 224 px with 16 px patches
SEG_BACKBONE = "veca_tiny"
SEG_OVERRIDES: dict[str, Any] = dict(patch_size=16, default_image_size=(224, 224),
                                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@dataclass
class SegTrainConfig(NestedRecipe):
    """The recipe. Defaults reproduce the shipped ``veca_tiny_seg``."""

    head: str = "conv_decoder"
    steps: int = 1600
    batch_size: int = 16
    size: int = 224
    warmup_steps: int = 50
    eval_samples: int = 256


def to_input(images_u8: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalized float32 [B, 3, H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def evaluate_seg(model: TaskModel, n: int = 128, seed: int = 0, size: int = 224, batch_size: int = 16,
                 tiers: list[int] | None = None) -> dict[int, float]:
    """mIoU (%) per tier on the first ``n`` held-out samples (streamed)."""
    model.eval()
    cms = {c: ConfusionMatrix(seg_data.NUM_SEG_CLASSES) for c in (tiers or model.cfg.core_tiers)}
    sampler = seg_data.SegSampler("test", size, seed)
    for start in range(0, n, batch_size):
        imgs, masks = sampler.samples(start, min(n, start + batch_size))
        x = to_input(imgs, model.cfg.mean, model.cfg.std)
        for c, cm in cms.items():
            cm.update(model(x, cores=c)["mask_logits"].argmax(1).numpy(), masks)
    return {c: 100.0 * cm.miou() for c, cm in cms.items()}


def train_seg(cfg: SegTrainConfig | None = None,
              progress: Callable[[int, int, dict], None] | None = None) -> tuple[TaskModel, dict[str, Any]]:
    """Train the dense reference model; returns ``(model, card)``."""
    cfg = cfg or SegTrainConfig()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    overrides = dict(SEG_OVERRIDES, default_image_size=(cfg.size, cfg.size))
    model = create_task_model(SEG_BACKBONE, {"name": cfg.head, "num_classes": seg_data.NUM_SEG_CLASSES}, **overrides)
    opt = cfg.optimizer(model)
    tiers = model.cfg.core_tiers
    probs = cfg.weights(tiers)
    rng = np.random.default_rng(cfg.seed)

    t0 = time.perf_counter()
    history: list[dict[str, Any]] = []
    loss_sum = 0.0
    stream = seg_data.SegSampler("train", cfg.size, cfg.seed)
    model.train()
    for step in range(cfg.steps):
        imgs, masks = stream.batch(cfg.batch_size)
        x = to_input(imgs, model.cfg.mean, model.cfg.std)
        y = torch.from_numpy(masks.astype(np.int64))
        cores = int(rng.choice(tiers, p=probs))
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step, cfg.steps)
        loss = F.cross_entropy(model(x, cores=cores)["mask_logits"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_sum += float(loss.detach())
        if (step + 1) % 100 == 0:
            history.append({"step": step + 1, "train_loss": round(loss_sum / 100, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            loss_sum = 0.0
        if progress:
            progress(step + 1, cfg.steps, {"loss": float(loss.detach())})
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = evaluate_seg(model, cfg.eval_samples, seed=cfg.seed, size=cfg.size)
    card = {
        "model": "veca_tiny_seg",
        "backbone": SEG_BACKBONE, "backbone_overrides": {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in overrides.items()},
        "head": model.head_config,
        "task": (f"semantic segmentation, {seg_data.NUM_SEG_CLASSES} classes (0 background, 1..10 Fashion-MNIST "
                 f"class + 1), {cfg.size} px canvases of 1-3 items scaled 2-3x on a noisy background"),
        "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "budget_probabilities": {str(c): round(float(p), 4) for c, p in zip(tiers, probs)},
        "data": {
            "source": "Debian package dataset-fashion-mnist, composited by veca_deploy.seg_data",
            "train": f"seg_data split 'train' (Fashion-MNIST train images), samples 0..{cfg.steps * cfg.batch_size - 1}, seed {cfg.seed}",
            "heldout": f"seg_data split 'test' (Fashion-MNIST test images), samples 0..{cfg.eval_samples - 1}, seed {cfg.seed}",
            "item_threshold": seg_data.ITEM_THRESHOLD,
            "files": {f.name: sha256_file(f) for f in sorted(FASHION_MNIST_DIR.glob("*.gz"))},
        },
        "heldout_miou": {str(c): round(v, 2) for c, v in scores.items()},
        "eval_samples": cfg.eval_samples,
        "history": history,
        "parameters": model.num_params(),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "machine": f"{(cpu_info()['model'] or platform.machine())} ({torch.get_num_threads()} threads), torch {torch.__version__}",
    }
    return model, card


def train_seg_reference(out: str | Path, cfg: SegTrainConfig | None = None, progress=None) -> dict[str, Any]:
    """Train and save (safetensors + config with head + card) the dense reference model into ``out``."""
    model, card = train_seg(cfg, progress)
    save_pretrained(model, out, card=card)
    return card
