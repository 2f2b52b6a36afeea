"""``veca-deploy inspect``: what a bundle holds."""

from __future__ import annotations

import json

import click
from rich.table import Table

from .common import format_accuracy, out


def _fmt_parity(a) -> str:
    """Worst figure of the gate that applies: relative error for FP32, cosine otherwise."""
    p = a.parity or {}
    reports = list(p.values()) if a.elastic else [p]
    outs = [o for r in reports if isinstance(r, dict) for o in (r.get("outputs") or {}).values()]
    if not outs:
        return "-"
    if a.precision == "fp32":
        return f"rel {max(o['rel'] for o in outs):.1e}"
    return f"cos {min(o['cosine'] for o in outs):.4f}"


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
    t = Table("id", "cores", "batch", "MB", "GFLOPs", "parity", "top-1")
    for a in sorted(m.artifacts, key=lambda a: (a.height * a.width, a.elastic, a.cores, a.format, a.precision)):
        top1 = format_accuracy(a.accuracy)
        cores = ",".join(map(str, a.tiers)) if a.elastic else str(a.cores)
        t.add_row(a.id, cores, str(a.batch),
                  f"{(a.bytes + sum(f.bytes for f in a.files)) / 1e6:.2f}", f"{a.flops / 1e9:.3f}",
                  _fmt_parity(a), top1)
    out.print(t)
