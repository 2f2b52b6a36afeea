"""Checks of a bundle's artifacts against the bundle's own references, shared by export,
quantize, validate and the TensorRT engine gates.

References come from the bundle's golden outputs (PyTorch FP32, see :mod:`.golden`) when it
has them for the tier; older bundles without golden data fall back to the FP32 artifact of
the same format run in the same runtime on the same real images. Either way every reference
is computed or read once per (tier, size) and reused for every artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import Artifact, Manifest
from ..errors import BundleError
from ..preprocess import Preprocess
from .comparator import Comparator, ParityReport, Reference, Target, parity_inputs
from .golden import Golden


class BundleReferences:
    """Inputs and references for checking the artifacts of one bundle (or staging folder)."""

    def __init__(self, root: str | Path, manifest: Manifest, comparator: Comparator) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.pre = Preprocess.from_dict(manifest.preprocess)
        self.golden = Golden.of(self.root, manifest, self.pre)
        self.comparator = comparator
        self._inputs: dict[tuple[int, int], np.ndarray] = {}
        self._refs: dict[tuple[Any, ...], Reference] = {}

    def has_golden(self, cores: int, height: int, width: int) -> bool:
        return self.golden is not None and self.golden.has(cores, height, width)

    def inputs(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._inputs:
            if self.golden is not None and f"{height}x{width}" in self.golden.section.get("inputs", {}):
                self._inputs[key] = self.golden.inputs(height, width)
            else:
                self._inputs[key] = parity_inputs(self.pre, height, width)
        return self._inputs[key]

    def reference(self, art: Artifact, cores: int) -> Reference:
        """Golden outputs for (cores, size), else the FP32 artifact of ``art``'s format."""
        if self.has_golden(cores, art.height, art.width):
            key: tuple[Any, ...] = ("golden", cores, art.height, art.width)
            if key not in self._refs:
                assert self.golden is not None
                self._refs[key] = self.golden.reference(cores, art.height, art.width)
            return self._refs[key]
        src = fp32_source(self.manifest, art, cores)
        if src is None:
            raise BundleError(f"{art.id}: no golden outputs and no FP32 {art.format} artifact at C={cores} "
                              f"{art.height}x{art.width} to compare with")
        key = ("artifact", src.id, cores)
        if key not in self._refs:
            target = Target.of(self.root, src)
            outs = self.comparator.outputs(target, self.inputs(art.height, art.width), cores)
            self._refs[key] = Reference(outs, f"{src.id} ({target.backend})")
        return self._refs[key]

    def check(self, art: Artifact, *, root: str | Path | None = None, backend: str | None = None,
              options: dict[str, Any] | None = None, precision: str | None = None) -> dict[int, ParityReport]:
        """Every tier of ``art`` against its reference; ``precision`` picks another gate (an
        execution variant such as bf16)."""
        target = Target.of(root or self.root, art, options, backend)
        x = self.inputs(art.height, art.width)
        try:
            return {c: self.comparator.check(target, x, self.reference(art, c), c, precision=precision)
                    for c in art.tiers}
        finally:
            self.comparator.release(target)


def fp32_source(manifest: Manifest, art: Artifact, cores: int) -> Artifact | None:
    """The FP32 artifact ``art`` is judged against without golden data: same format first."""
    cands = [a for a in manifest.find(precision="fp32", cores=cores, size=art.size) if a.format != "tensorrt"]
    cands.sort(key=lambda a: (a.format != art.format, a.elastic != art.elastic, a.id))
    return cands[0] if cands else None


def parity_record(reports: dict[int, ParityReport], elastic: bool) -> dict[str, Any]:
    """The manifest's ``parity`` value: one report, or one per tier for an elastic artifact."""
    if elastic:
        return {str(c): r.to_dict() for c, r in reports.items()}
    return next(iter(reports.values())).to_dict()


def failures_of(reports: dict[int, ParityReport]) -> list[str]:
    return [m for r in reports.values() for m in r.gate_messages()]
