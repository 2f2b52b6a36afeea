"""``veca-deploy keygen`` and ``veca-deploy sign``: ed25519 keys and signed manifests."""

from __future__ import annotations

import click

from .common import out


@click.command("keygen")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder for NAME.key (private) and NAME.pub.")
@click.option("--name", default="veca-signing", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def keygen(out_dir, name, force):
    """Create an ed25519 key pair for signing bundles (the private key is written with mode 0600)."""
    from ..bundle.signing import generate_keypair, key_id, load_public_key

    priv, pub = generate_keypair(out_dir, name, force=force)
    kid = key_id(load_public_key(pub).raw)
    out.print(f"private key {priv} (keep it off devices), public key {pub} (key id {kid}): "
              f"devices trust it with VECA_PUBLIC_KEY={pub}", highlight=False, soft_wrap=True)


@click.command("sign")
@click.argument("bundle", type=click.Path())
@click.option("--key", "key", required=True, type=click.Path(), help="ed25519 private key (veca-deploy keygen).")
def sign(bundle, key):
    """Sign BUNDLE's manifest (which holds every file's sha256); writes BUNDLE/manifest.sig only."""
    from ..bundle.reader import Bundle
    from ..bundle.signing import sign_bundle, signature_of

    b = Bundle.open(bundle, public_key=[])  # readable and well-formed; an old signature is replaced
    path = sign_bundle(b.root, key)
    out.print(f"signed {b.root} with key {(signature_of(b.root) or {}).get('key_id')}: {path}",
              highlight=False, soft_wrap=True)
