"""Read a bundle on the device: manifest, verified artifact paths, preprocessing. No torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BundleError
from ..preprocess import Preprocess
from .io import verify_artifact
from .manifest import Artifact, Manifest, read_manifest, resolve_inside


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    _verified: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Bundle":
        root = Path(directory)
        return cls(root=root, manifest=read_manifest(root))

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
        """Top-1 (or feature cosine) recorded for this artifact at ``cores``, if measured."""
        acc = art.accuracy or {}
        per_tier = acc.get("per_tier")
        if isinstance(per_tier, dict) and str(cores) in per_tier:
            return float(per_tier[str(cores)])
        if "top1" in acc and not art.elastic:
            return float(acc["top1"])
        return None
