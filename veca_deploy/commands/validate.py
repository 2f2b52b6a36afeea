"""``veca-deploy validate``: every hash, every artifact loaded in its runtime and run on a real image."""

from __future__ import annotations

import click

from .common import out


@click.command("validate")
@click.argument("bundle", type=click.Path())
@click.option("--backend", "backends", multiple=True, help="Only these backends (default: all installed).")
@click.option("--public-key", "public_key", multiple=True, type=click.Path(),
              help="Require a valid signature by this ed25519 public key (repeatable; default: $VECA_PUBLIC_KEY).")
def command(bundle, backends, public_key):
    """Verify BUNDLE: hashes and sizes, load each artifact, run it on a real image. Exit 0 only if all pass."""
    from rich.table import Table

    from ..compare.validate import validate_bundle
    from ..errors import BundleError

    results = validate_bundle(bundle, backends=list(backends) or None, public_key=list(public_key) or None)
    t = Table("artifact", "check", "detail")
    for r in results:
        t.add_row(r.artifact, "[green]ok[/green]" if r.ok else ("[yellow]skipped[/yellow]" if r.skipped else "[red]FAIL[/red]"),
                  r.detail)
    out.print(t)
    bad = [r for r in results if not r.ok and not r.skipped]
    if bad:
        raise BundleError(f"{len(bad)} artifact(s) failed validation; first: {bad[0].artifact}: {bad[0].detail}")
    from ..bundle.reader import Bundle

    signer = Bundle.open(bundle, public_key=list(public_key) or None).signed_by
    out.print(f"[green]valid[/green]: {sum(r.ok for r in results)} artifact(s) verified"
              + (f", manifest signed by trusted key {signer}" if signer else "")
              + (f", {sum(r.skipped for r in results)} skipped" if any(r.skipped for r in results) else ""))
