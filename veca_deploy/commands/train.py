"""``veca-deploy train``: nested-core training of a VECA classifier on Fashion-MNIST."""

from __future__ import annotations

import json

import click

from ..model.registry import DEFAULT_EPOCHS, DEFAULT_MODEL
from .common import console, progress_reporter, torch_side_import


@click.command("train")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Registry name.")
@click.option("--epochs", type=int, default=None, help=f"Default: the reference recipe ({DEFAULT_EPOCHS}).")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--threads", type=int, default=None)
@click.option("--train-limit", type=int, default=None, help="Use only the first N training images (smoke runs).")
@click.option("--eval-limit", type=int, default=None, help="Evaluate on the first N test images (default all 10k).")
@click.option("--out", required=True, type=click.Path(), help="Folder for model.safetensors, config.json, card.json.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("-q", "--quiet", is_flag=True)
def command(model, epochs, batch_size, lr, seed, threads, train_limit, eval_limit, out, force, quiet):
    """Train with nested core budgets (one prefix budget per step) and save weights + card.

    With no options this reproduces the shipped reference model:
    ``veca-deploy train --out veca_deploy/weights/veca_tiny --force``.
    """
    from pathlib import Path

    from ..errors import OutputExistsError

    with torch_side_import():
        from ..model.train import TrainConfig, train_reference

    if Path(out).exists() and not force:
        raise OutputExistsError(f"{out} exists (pass --force to replace it)")
    kw = {k: v for k, v in dict(model=model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                threads=threads, train_limit=train_limit, eval_limit=eval_limit).items()
          if v is not None}
    cfg = TrainConfig(**kw)
    with progress_reporter(not quiet) as report:
        def progress(step, total, info):
            if report:
                desc = f"epoch {info['epoch']}/{cfg.epochs}"
                if "history" in info:
                    desc += f" test1k {info['history']['test1k_top1']}"
                elif "loss" in info:
                    desc += f" loss {info['loss']:.3f}"
                report(desc, advance=0 if "history" in info else 1, total=total)

        card = train_reference(out, cfg, progress)
    console.print(f"[green]saved[/green] {out}: test top-1 per tier {json.dumps(card['test_top1'])}")
