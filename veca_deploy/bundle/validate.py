"""Bundle validation: integrity (paths, sizes, sha256) and a real run of every artifact. No torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, BundleError, VecaError
from .manifest import Artifact
from .reader import Bundle


@dataclass
class CheckResult:
    artifact: str
    ok: bool
    detail: str
    skipped: bool = False


def sample_image() -> np.ndarray:
    """One real photo (scikit-image) or Fashion-MNIST image; a fixed synthetic scene as last resort."""
    from ..export.parity import real_images

    return real_images(1)[0]


def validate_bundle(directory: str | Path, backends: list[str] | None = None) -> list[CheckResult]:
    """Check every artifact. Integrity failures are reported per artifact (never a traceback);
    artifacts whose backend is not installed here are reported as skipped."""
    from ..runtimes import FORMAT_BACKEND, create_runner
    from ..runtimes.base import CORE_SELECT, IMAGES, core_select

    bundle = Bundle.open(directory)
    if not bundle.artifacts:
        raise BundleError(f"{directory}: the manifest lists no artifacts")
    img = sample_image()
    pre = bundle.preprocess
    results: list[CheckResult] = []
    for art in bundle.artifacts:
        backend = FORMAT_BACKEND[art.format]
        if backends and backend not in backends:
            continue
        try:
            path = bundle.path_of(art)
        except BundleError as e:
            results.append(CheckResult(art.id, False, str(e)))
            continue
        try:
            with create_runner(backend, path) as runner:
                x = pre([img], (art.height, art.width))
                if isinstance(art.batch, int) and art.batch > 1:
                    x = np.repeat(x, art.batch, axis=0)
                for c in art.tiers:
                    feed = {IMAGES: x}
                    if art.elastic:
                        feed[CORE_SELECT] = core_select(c)
                    outs = runner.infer(feed)
                    _check_outputs(art, outs, c, len(x))
            results.append(CheckResult(art.id, True, f"sha256 ok, ran {len(art.tiers)} tier(s) in {backend}"))
        except BackendUnavailable as e:
            results.append(CheckResult(art.id, False, f"{backend} not installed here ({e})", skipped=True))
        except VecaError as e:
            results.append(CheckResult(art.id, False, str(e)))
    return results


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
