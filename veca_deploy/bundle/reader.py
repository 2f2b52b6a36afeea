"""Read a bundle on the device: manifest, verified artifact paths, preprocessing. No torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..preprocess import Preprocess
from .io import verify_artifact
from .manifest import MANIFEST_NAME, Artifact, Manifest, parse_manifest, read_manifest_bytes, resolve_inside
from .signing import trusted_keys, verify_manifest


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    _verified: set[str] = field(default_factory=set, repr=False)
    #: id of the trusted key whose signature was verified at open (None: none required)
    signed_by: str | None = None

    @classmethod
    def open(cls, directory: str | os.PathLike, public_key=None) -> "Bundle":
        """Read and check the manifest. When this device trusts signing keys (``public_key``, a
        path or a list of paths, else ``$VECA_PUBLIC_KEY``), the manifest bytes must carry a valid
        signature by one of them before they are parsed (see :mod:`veca_deploy.bundle.signing`)."""
        root = Path(directory)
        data = read_manifest_bytes(root)
        signer = verify_manifest(root, data, trusted_keys(public_key))
        return cls(root=root, manifest=parse_manifest(data, str(root / MANIFEST_NAME)), signed_by=signer)

    @property
    def preprocess(self) -> Preprocess:
        try:
            return Preprocess.from_dict(self.manifest.preprocess)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{self.root}: bad preprocess section ({e})") from None

    @property
    def artifacts(self) -> list[Artifact]:
        return self.manifest.artifacts

    def path_of(self, art: Artifact, verify: bool = True) -> Path:
        """The artifact's main file, after checking it stays inside and matches its hash."""
        if verify and art.id not in self._verified:
            verify_artifact(self.root, art)
            self._verified.add(art.id)
        return resolve_inside(self.root, art.path)

    def get(self, artifact_id: str) -> Artifact:
        for a in self.artifacts:
            if a.id == artifact_id:
                return a
        raise BundleError(f"{self.root}: no artifact {artifact_id!r}")

    def accuracy_of(self, art: Artifact, cores: int) -> float | None:
        """The metric (top-1, mIoU, ..., or feature cosine) recorded for this artifact at ``cores``,
        if measured; ``accuracy["metric"]`` says which."""
        return record_value(art.accuracy, cores, art.elastic)


def record_value(rec: dict[str, Any] | None, cores: int, elastic: bool) -> float | None:
    """The number an accuracy record (an artifact's, or one of its execution variants') holds at
    ``cores``: ``per_tier`` for an elastic graph, else the value under its ``metric`` key."""
    acc = rec or {}
    per_tier = acc.get("per_tier")
    if isinstance(per_tier, dict) and str(cores) in per_tier:
        return float(per_tier[str(cores)])
    key = acc.get("metric", "top1")
    if key in acc and key != "cosine" and not elastic:
        return float(acc[key])
    return None
