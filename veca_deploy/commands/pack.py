"""``veca-deploy pack``: the slice of a bundle one device needs, decided from its profile."""

from __future__ import annotations

import json

import click

from ..errors import UsageError
from .common import out


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


@click.command("pack")
@click.argument("bundle", type=click.Path())
@click.option("--profile", "profile", required=True, type=click.Path(), help="The device's profile (bench --out FILE there).")
@click.option("--budget-ms", type=float, required=True, help="The device's latency budget per image.")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder of the sliced bundle.")
@click.option("--keep", default="ladder", show_default=True,
              help="Rungs of the adaptive ladder to keep below the chosen candidate: a number, or 'ladder' for all.")
@click.option("--percentile", type=float, default=95, show_default=True)
@click.option("--margin", type=float, default=0.1, show_default=True)
@click.option("--backend", default="auto", show_default=True, help="auto (what the profile measured) or a comma list.")
@click.option("--threads", type=int, default=None, help="Use the measurements made with this thread count.")
@click.option("--sign-key", type=click.Path(), default=None, help="Sign the manifest with this ed25519 private key.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True)
def command(bundle, profile, budget_ms, out_dir, keep, percentile, margin, backend, threads, sign_key, force, as_json):
    """Write to --out only what the device behind --profile runs for --budget-ms (atomic; optionally signed)."""
    from ..fleet.pack import pack
    from ..selector.select import check_budget

    check_budget(budget_ms, percentile, margin)
    if keep == "ladder":
        rungs = None
    else:
        try:
            rungs = int(keep)
        except ValueError:
            raise UsageError(f"--keep must be a number of rungs or 'ladder', got {keep!r}") from None
    r = pack(bundle, profile, budget_ms, out_dir, keep=rungs, percentile=percentile, margin=margin, backend=backend,
             threads=threads, sign_key=sign_key, force=force)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    out.print(f"packed {r.out} for {r.selection.device}: {len(r.artifacts)} of {len(r.artifacts) + len(r.dropped)} "
              f"artifacts, {_mb(r.bytes_after)} of {_mb(r.bytes_before)} ({100 * r.fraction:.1f} %)",
              highlight=False, soft_wrap=True)
    out.print(f"chosen {r.selection.chosen.cand.key} (p{r.selection.percentile:g} {r.selection.chosen.latency_ms:.3f} ms "
              f"for {budget_ms:g} ms); ladder kept: {', '.join(r.kept)}", highlight=False, soft_wrap=True)
    if r.signed_by:
        out.print(f"signed by key {r.signed_by} ({r.out}/manifest.sig)", highlight=False, soft_wrap=True)
