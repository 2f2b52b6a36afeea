"""``veca-deploy inspect``: what a bundle holds."""

from __future__ import annotations

import json

import click
from rich.table import Table

from .common import out


def _fmt_parity(a) -> str:
    p = a.parity or {}
    if a.elastic and p:
        worst = max((v["outputs"].get("patches", {}).get("rel", 0) for v in p.values()), default=0)
        return f"rel {worst:.1e} @{len(p)} tiers"
    outs = p.get("outputs") or {}
    if not outs:
        return "-"
    if a.precision == "fp32":
        return f"rel {max(o['rel'] for o in outs.values()):.1e}"
    return f"cos {min(o['cosine'] for o in outs.values()):.5f}"


@click.command("inspect")
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def command(bundle, as_json):
    """Show the tiers and artifacts of a BUNDLE (no file is loaded or changed)."""
    from ..bundle.reader import Bundle

    b = Bundle.open(bundle)
    m = b.manifest
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=1))
        return
    model = m.model
    out.print(f"[bold]{model.get('name')}[/bold] from {model.get('source')}"
              f"{'  [yellow](random weights)[/yellow]' if model.get('random_weights') else ''}"
              f"  params {model.get('parameters', 0):,}  outputs {', '.join(model.get('outputs', []))}")
    t = Table("id", "format", "precision", "cores", "size", "batch", "MB", "GFLOPs", "parity", "top-1")
    for a in sorted(m.artifacts, key=lambda a: (a.height * a.width, a.elastic, a.cores, a.format, a.precision)):
        acc = a.accuracy or {}
        top1 = f"{acc['top1']:.2f}" if "top1" in acc else (
            ", ".join(f"{v:.1f}" for v in acc.get("per_tier", {}).values()) or "-")
        cores = ",".join(map(str, a.tiers)) if a.elastic else str(a.cores)
        t.add_row(a.id, a.format, a.precision, cores, f"{a.height}x{a.width}", str(a.batch),
                  f"{(a.bytes + sum(f.bytes for f in a.files)) / 1e6:.2f}", f"{a.flops / 1e9:.3f}",
                  _fmt_parity(a), top1)
    out.print(t)
