"""Bundle validation on any device, without torch: integrity (paths, sizes, sha256 of every
artifact and golden file) and a real run of every artifact at every tier, compared with the
bundle's golden outputs by the same gates as at export. A bundle made before golden outputs
existed is still run (outputs present, right batch, finite), and the result says the numbers
were not checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle.manifest import Artifact
from ..bundle.reader import Bundle
from ..errors import BackendUnavailable, BundleError, UsageError, VecaError
from ..formats import BACKENDS, format_backend
from .checks import BundleReferences
from .comparator import Comparator, Target


@dataclass
class CheckResult:
    artifact: str
    ok: bool
    detail: str
    skipped: bool = False


def parse_backends(backends: list[str] | str | None) -> list[str] | None:
    """``None``/``auto`` -> all; else a list (or comma-separated string) of known backend names."""
    if backends is None:
        return None
    items = [b.strip() for part in ([backends] if isinstance(backends, str) else backends)
             for b in str(part).split(",") if b.strip()]
    if not items or items == ["auto"]:
        return None
    unknown = [b for b in items if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r}; choose from auto, {', '.join(BACKENDS)}")
    return list(dict.fromkeys(items))


def validate_bundle(directory: str | Path, backends: list[str] | str | None = None,
                    public_key=None) -> list[CheckResult]:
    """Check every artifact (of ``backends``). Integrity or numeric failures are reported per
    artifact; artifacts whose backend is not installed here are reported as skipped. A filter
    that leaves nothing to check is a :class:`UsageError`, never an empty success. With trusted
    keys (``public_key`` or ``$VECA_PUBLIC_KEY``) an unsigned or mis-signed bundle is a BundleError."""
    wanted = parse_backends(backends)
    bundle = Bundle.open(directory, public_key=public_key)
    if not bundle.artifacts:
        raise BundleError(f"{directory}: the manifest lists no artifacts")
    arts = [a for a in bundle.artifacts if wanted is None or format_backend(a.format) in wanted]
    if not arts:
        have = sorted({format_backend(a.format) for a in bundle.artifacts})
        raise UsageError(f"{directory}: no artifacts for backend(s) {', '.join(wanted or [])} "
                         f"(the bundle has {', '.join(have)})")
    results: list[CheckResult] = []
    with Comparator() as comp:
        refs = BundleReferences(bundle.root, bundle.manifest, comp)
        golden_problem = _verify_golden(refs)
        for art in arts:
            results.append(_check(bundle, refs, comp, art, golden_problem))
    return results


def _verify_golden(refs: BundleReferences) -> str | None:
    if refs.golden is None:
        return None
    try:
        refs.golden.verify_all()
    except BundleError as e:
        return str(e)
    return None


def _check(bundle: Bundle, refs: BundleReferences, comp: Comparator, art: Artifact,
           golden_problem: str | None) -> CheckResult:
    backend = format_backend(art.format)
    try:
        bundle.path_of(art)
    except BundleError as e:
        return CheckResult(art.id, False, str(e))
    if golden_problem:
        return CheckResult(art.id, False, f"golden data: {golden_problem}")
    try:
        if all(refs.has_golden(c, art.height, art.width) for c in art.tiers):
            reports = refs.check(art)
            bad = [m for r in reports.values() for m in r.gate_messages()]
            if bad:
                return CheckResult(art.id, False, "wrong numbers vs golden outputs: " + "; ".join(bad[:3]))
            worst = min(o.cosine for r in reports.values() for o in r.outputs.values())
            n = next(iter(reports.values())).images
            return CheckResult(art.id, True, f"sha256 ok; {len(reports)} tier(s) match the golden outputs on {n} "
                                             f"image(s) in {backend} ({art.precision} gate, min cosine {worst:.5f})")
        target = Target.of(bundle.root, art)
        x = refs.inputs(art.height, art.width)
        for c in art.tiers:
            outs = comp.outputs(target, x, c)
            _check_outputs(art, outs, c, len(x))
        comp.release(target)
        return CheckResult(art.id, True, f"sha256 ok, ran {len(art.tiers)} tier(s) in {backend}; "
                                         "no golden outputs in this bundle: numbers not checked")
    except BackendUnavailable as e:
        return CheckResult(art.id, False, f"{backend} not installed here ({e})", skipped=True)
    except VecaError as e:
        return CheckResult(art.id, False, str(e))


def _check_outputs(art: Artifact, outs: dict[str, np.ndarray], cores: int, batch: int) -> None:
    want = art.outputs or list(outs)
    missing = [n for n in want if n not in outs]
    if missing:
        raise BundleError(f"{art.id}: outputs {missing} missing")
    for name, v in outs.items():
        if v.shape[0] != batch:
            raise BundleError(f"{art.id}: output {name} has batch {v.shape[0]}, expected {batch}")
        if not np.isfinite(v).all():
            raise BundleError(f"{art.id}: output {name} has NaN/Inf at cores={cores}")
