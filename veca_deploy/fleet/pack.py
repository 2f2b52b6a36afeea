"""Slice a bundle for one device: only the artifacts its selection and adaptive ladder use.

``pack`` decides offline with the device's profile (the same rules as ``select`` there), keeps
the chosen candidate, the next rungs of its adaptive ladder (``keep``: how many rungs below the
chosen one; None = the whole ladder) and the most accurate fitting candidate when the chosen one
won a tie against it (so the device, with the same profile and budget, makes the same decision),
and writes a new bundle holding their artifacts, the
golden files of their tiers, the device's profile (its entries for the kept artifacts, so
``Runtime.open`` there needs no profiling) and a manifest whose ``sliced`` section records the
source bundle, the profile and the decision. Atomic (staging folder, then rename), optionally
signed (:mod:`veca_deploy.bundle.signing`). ``validate``, ``Runtime.open`` and adaptive mode
read it like any bundle.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle.io import sha256_file, staged_bundle, verify_artifact, verify_file, write_manifest
from ..bundle.manifest import MANIFEST_NAME
from ..bundle.reader import Bundle
from ..bundle.signing import load_private_key, sign_bundle, signature_of
from ..compare.golden import output_key, size_key
from ..errors import UsageError
from ..selector.profile import Profile, profile_path, write_profile
from ..selector.select import Selection
from .profiles import device_classes
from .view import offline_selection


@dataclass
class PackResult:
    out: Path
    selection: Selection
    kept: list[str]  # candidate keys of the ladder kept, chosen first
    artifacts: list[str]  # artifact ids written
    bytes_before: int
    bytes_after: int
    signed_by: str | None = None
    dropped: list[str] = field(default_factory=list)  # artifact ids left out

    @property
    def fraction(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "device": self.selection.device, "chosen": self.selection.chosen.cand.key,
                "kept": self.kept, "artifacts": self.artifacts, "dropped": self.dropped,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "fraction": round(self.fraction, 4), "signed_by": self.signed_by,
                "selection": self.selection.to_dict()}


def bundle_bytes(bundle: Bundle) -> int:
    """What shipping the bundle costs: manifest, artifacts and golden files (profiles excluded)."""
    total = (Path(bundle.root) / MANIFEST_NAME).stat().st_size
    total += sum(size for a in bundle.artifacts for _, _, size in a.all_files())
    golden = bundle.manifest.golden or {}
    total += sum(int(e.get("bytes", 0)) for sec in ("inputs", "outputs") for e in (golden.get(sec) or {}).values())
    return total


def pack(directory: str | os.PathLike, profile: str | os.PathLike, budget_ms: float, out: str | os.PathLike, *,
         keep: int | None = None, percentile: float = 95, margin: float = 0.1, backend: Any = "auto",
         threads: int | None = None, sign_key: str | os.PathLike | None = None, force: bool = False) -> PackResult:
    """Write the slice of ``directory`` that the device behind ``profile`` needs for ``budget_ms``."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise UsageError(f"keep must be a number of rungs >= 0, got {keep!r}")
    src = Bundle.open(directory)
    out = Path(out)
    if out.resolve() == Path(src.root).resolve():
        raise UsageError(f"{out}: the slice cannot replace the bundle it is cut from; choose another --out")
    if sign_key is not None:
        load_private_key(sign_key)  # a bad key fails before any work
    (dev,) = device_classes(src, [profile], threads)
    sel = offline_selection(src, dev, budget_ms, percentile=percentile, margin=margin, backend=backend)
    ladder = sel.ladder()
    rungs = ladder if keep is None else ladder[:keep + 1]
    # the most accurate fitting candidate is the evidence of the decision (the chosen one may be
    # tied with it and faster): without it the device, with the same profile and budget, would
    # rank the chosen one first and could pick a faster rung tied with *it*
    leader = [m for m in sel.ranked if m.cand.key == sel.decision.get("leader")]
    kept_ids = list(dict.fromkeys(m.cand.artifact.id for m in [*rungs, *leader]))
    arts = [src.get(i) for i in kept_ids]
    for a in arts:
        verify_artifact(src.root, a)  # never ship bytes that do not match their manifest
    tiers = {(m.cand.cores, m.cand.artifact.height, m.cand.artifact.width) for m in rungs}
    for a in arts:  # an elastic artifact serves all its tiers: keep their golden data too
        tiers |= {(c, a.height, a.width) for c in a.tiers}
    manifest = copy.deepcopy(src.manifest)
    manifest.artifacts = [copy.deepcopy(a) for a in arts]
    golden = copy.deepcopy(src.manifest.golden or {})
    if golden:
        sizes = {size_key(h, w) for _, h, w in tiers}
        outs = {output_key(c, h, w) for c, h, w in tiers}
        golden["inputs"] = {k: v for k, v in (golden.get("inputs") or {}).items() if k in sizes}
        golden["outputs"] = {k: v for k, v in (golden.get("outputs") or {}).items() if k in outs}
    manifest.golden = golden
    before = bundle_bytes(src)
    manifest.sliced = {
        "from": {"model": (src.manifest.model or {}).get("name"), "manifest_sha256": sha256_file(src.root / MANIFEST_NAME),
                 "artifacts": len(src.artifacts), "bytes": before},
        "device": dev.device, "profile": {"sources": dev.sources, "updated": dev.profile.updated},
        "budget_ms": budget_ms, "percentile": sel.percentile, "margin": sel.margin, "threads": dev.threads,
        "chosen": sel.chosen.cand.key, "kept": [m.cand.key for m in rungs], "keep": keep,
        "leader": sel.decision.get("leader"), "artifacts": kept_ids,
        "why": f"{sel.decision.get('reason', '')}; kept the chosen candidate and "
               + (f"{len(rungs) - 1} rung(s)" if keep is not None else "the whole") + " of its adaptive ladder"}
    with staged_bundle(out, force=force) as stage:
        rels = {rel for a in arts for rel, _, _ in a.all_files()}
        rels |= {e["path"] for sec in ("inputs", "outputs") for e in (golden.get(sec) or {}).values()}
        for e in [e for sec in ("inputs", "outputs") for e in (golden.get(sec) or {}).values()]:
            verify_file(src.root, e["path"], e["sha256"], int(e["bytes"]), "golden")
        for rel in sorted(rels):
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.root / rel, dst)
        write_manifest(stage, manifest)
        kept_prof = Profile(device=dev.device, fingerprint=dev.profile.fingerprint,
                            entries={k: e for k, e in dev.profile.entries.items() if e.get("artifact") in kept_ids},
                            created=dev.profile.created, preprocess=dict(dev.profile.preprocess))
        write_profile(profile_path(stage, dev.device), kept_prof)
        signer = None
        if sign_key is not None:
            sign_bundle(stage, sign_key)
            signer = (signature_of(stage) or {}).get("key_id")
        after = (stage / MANIFEST_NAME).stat().st_size + sum((stage / rel).stat().st_size for rel in rels)
    return PackResult(out, sel, [m.cand.key for m in rungs], kept_ids, before, after, signer,
                      [a.id for a in src.artifacts if a.id not in kept_ids])
