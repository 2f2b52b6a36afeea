"""Bundles: a folder + ``manifest.json``, the only thing the runtime side reads."""

from .manifest import MANIFEST_NAME, SCHEMA_VERSION, Artifact, FileEntry, Manifest, read_manifest
from .reader import Bundle

__all__ = ["MANIFEST_NAME", "SCHEMA_VERSION", "Artifact", "FileEntry", "Manifest", "read_manifest", "Bundle"]
