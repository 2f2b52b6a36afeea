"""Golden inputs and outputs that travel with a bundle (after Polygraphy's --save-outputs /
--load-outputs), so any device checks every artifact's numbers without torch.

At export, each input size gets a few real photos already resized to that size and stored as
uint8 (``golden/inputs_HxW.npz``): preprocessing them again is exact (no resize, only the
bundle's mean/std), so a device rebuilds bit-identical network inputs. Each (tier, size) gets
the PyTorch FP32 outputs on them (``golden/cC_HxW.npz``): the global output, the logits, and a
fixed sample of patch rows (``patch_rows``, at most :data:`PATCH_ROWS` of them; the full
patch output of a 1536 px tier is 9,216 rows). Every file is hashed in the manifest's
``golden`` section and verified before use. ``allow_pickle=False`` everywhere: a bundle never
executes code.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.io import file_entry, verify_file
from ..bundle.manifest import Manifest
from ..errors import BundleError
from ..preprocess import Preprocess, resize_bilinear, to_hwc_batch
from ..seg_data import SEG_SOURCE
from .comparator import Reference, project, real_images

GOLDEN_DIR = "golden"
#: patch rows kept per golden output (evenly spaced over the grid, first and last included)
PATCH_ROWS = 64
#: pixels kept per dense golden output ([B, K, H, W] or [B, H, W]): a fixed seeded subset of the
#: H*W positions, every channel kept, so a 448 px 21-class map stays ~170 kB per tier
DENSE_PIXELS = 1024
#: golden-file keys of the samples of named outputs (``rows:NAME`` / ``pixels:NAME``)
SAMPLE_PREFIXES = ("rows:", "pixels:")
REFERENCE = "pytorch-fp32"


def golden_count(height: int, width: int) -> int:
    """Images per size: 4 up to 256x256, 2 above (a cosine gate needs few; storage grows with h*w)."""
    return 4 if height * width <= 256 * 256 else 2


def resized_uint8(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Real images resized (the bundle's bilinear resize) and rounded to uint8 at ``height x width``."""
    out = np.empty((len(images), height, width, 3), np.uint8)
    for i, img in enumerate(to_hwc_batch(list(images))):
        x = img.astype(np.float32)
        if x.shape[:2] != (height, width):
            x = resize_bilinear(x, height, width)
        out[i] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


def patch_rows_for(n_patches: int, limit: int = PATCH_ROWS) -> np.ndarray:
    if n_patches <= limit:
        return np.arange(n_patches, dtype=np.int64)
    return np.unique(np.linspace(0, n_patches - 1, limit).round().astype(np.int64))


def pixels_for(n_pixels: int, limit: int = DENSE_PIXELS) -> np.ndarray:
    """A fixed subset of flat pixel positions (seed 0, sorted): deterministic for a map size, and
    scattered, so a stride in the map cannot alias with the sample."""
    if n_pixels <= limit:
        return np.arange(n_pixels, dtype=np.int64)
    return np.sort(np.random.default_rng(0).choice(n_pixels, limit, replace=False)).astype(np.int64)


def sample_plan(outputs: dict[str, np.ndarray], kinds: dict[str, str]) -> dict[str, tuple[str, np.ndarray]]:
    """How each named output of a task model is sampled: token outputs by rows, dense maps by
    pixels; small outputs (global, logits) whole. The backbone's ``patches`` keeps ``patch_rows``."""
    plan: dict[str, tuple[str, np.ndarray]] = {}
    for name, v in outputs.items():
        if name == "patches":
            continue
        kind = kinds.get(name, "")
        if kind == "patches" and v.ndim == 3:
            plan[name] = ("rows", patch_rows_for(v.shape[1]))
        elif v.ndim >= 3 and kind != "patches":
            plan[name] = ("pixels", pixels_for(int(v.shape[-2]) * int(v.shape[-1])))
    return plan


def size_key(height: int, width: int) -> str:
    return f"{height}x{width}"


def output_key(cores: int, height: int, width: int) -> str:
    return f"c{cores}@{height}x{width}"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise BundleError(f"{path.name}: unreadable golden file ({e})") from None


class GoldenWriter:
    """Writes golden files into a staging bundle and records them in its manifest."""

    def __init__(self, stage: Path, manifest: Manifest, pre: Preprocess) -> None:
        self.stage, self.manifest, self.pre = Path(stage), manifest, pre
        self.section: dict[str, Any] = {"reference": REFERENCE, "patch_rows": PATCH_ROWS, "inputs": {}, "outputs": {}}
        manifest.golden = self.section

    def inputs(self, height: int, width: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Golden uint8 images at this size (written once) and the network input they give."""
        n = n or golden_count(height, width)
        own = (self.manifest.model or {}).get("eval_data")
        if own == SEG_SOURCE:  # a model of its own domain is checked on its own held-out images
            from ..seg_data import SegImages

            source, imgs = f"{SEG_SOURCE}:test", list(SegImages(n, "test"))
        else:
            source, imgs = "photos+fashion-mnist", real_images(n)
        raw = resized_uint8(imgs, height, width)
        self.section.setdefault("inputs_source", source)
        rel = f"{GOLDEN_DIR}/inputs_{size_key(height, width)}.npz"
        _save_npz(self.stage / rel, {"images": raw})
        fe = file_entry(self.stage, rel)
        self.section["inputs"][size_key(height, width)] = {"path": rel, "sha256": fe.sha256, "bytes": fe.bytes,
                                                           "count": int(len(raw))}
        return raw, self.pre(list(raw), (height, width))

    def outputs(self, cores: int, height: int, width: int, outputs: dict[str, np.ndarray]) -> Reference:
        """Store the reference outputs of one tier (patch rows sampled) and return them."""
        rows = patch_rows_for(outputs["patches"].shape[1]) if "patches" in outputs else None
        specs = (self.manifest.model or {}).get("output_specs") or {}
        samples = sample_plan(outputs, {n: str(s.get("kind", "")) for n, s in specs.items()}) if specs else {}
        # integer outputs (argmax masks) stay integer: their gate is agreement, not cosine
        cast = {k: (np.asarray(v) if np.asarray(v).dtype.kind in "iub" else np.asarray(v, np.float32))
                for k, v in outputs.items()}
        ref = Reference(project(cast, rows, samples), REFERENCE, rows, samples)
        rel = f"{GOLDEN_DIR}/c{cores}_{size_key(height, width)}.npz"
        arrays = dict(ref.outputs)
        if rows is not None:
            arrays["patch_rows"] = rows
        for name, (how, idx) in samples.items():
            arrays[f"{how}:{name}"] = idx
        _save_npz(self.stage / rel, arrays)
        fe = file_entry(self.stage, rel)
        self.section["outputs"][output_key(cores, height, width)] = {
            "path": rel, "sha256": fe.sha256, "bytes": fe.bytes, "cores": cores, "height": height, "width": width,
            "outputs": sorted(ref.outputs)}
        return ref


@dataclass
class Golden:
    """A bundle's golden data, read lazily and verified against the manifest's hashes."""

    root: Path
    section: dict[str, Any]
    preprocess: Preprocess

    @classmethod
    def of(cls, root: str | os.PathLike, manifest: Manifest, pre: Preprocess) -> "Golden | None":
        sec = manifest.golden or {}
        if not sec.get("inputs"):
            return None
        return cls(Path(root), sec, pre)

    def has(self, cores: int, height: int, width: int) -> bool:
        return (size_key(height, width) in self.section.get("inputs", {})
                and output_key(cores, height, width) in self.section.get("outputs", {}))

    def verify_all(self) -> None:
        """Check every golden file's hash and size (a BundleError names the first bad one)."""
        for entry in list(self.section.get("inputs", {}).values()) + list(self.section.get("outputs", {}).values()):
            self._read(entry)

    def _read(self, entry: dict[str, Any]) -> dict[str, np.ndarray]:
        try:
            rel, digest, size = str(entry["path"]), str(entry["sha256"]), int(entry["bytes"])
        except (KeyError, TypeError, ValueError):
            raise BundleError("manifest golden entry lacks path, sha256 or bytes") from None
        path = verify_file(self.root, rel, digest, size, what="golden")
        return _load_npz(path)

    def images(self, height: int, width: int) -> np.ndarray:
        entry = self.section["inputs"].get(size_key(height, width))
        if entry is None:
            raise BundleError(f"no golden inputs at {height}x{width}")
        raw = self._read(entry).get("images")
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[1:3] != (height, width):
            raise BundleError(f"golden inputs at {height}x{width} are malformed")
        return raw

    def inputs(self, height: int, width: int) -> np.ndarray:
        return self.preprocess(list(self.images(height, width)), (height, width))

    def reference(self, cores: int, height: int, width: int) -> Reference:
        entry = self.section["outputs"].get(output_key(cores, height, width))
        if entry is None:
            raise BundleError(f"no golden outputs for C={cores} at {height}x{width}")
        arrays = self._read(entry)
        rows = arrays.pop("patch_rows", None)
        samples: dict[str, tuple[str, np.ndarray]] = {}
        for key in [k for k in arrays if k.startswith(SAMPLE_PREFIXES)]:
            how, _, name = key.partition(":")
            samples[name] = (how, arrays.pop(key).astype(np.int64))
        return Reference(arrays, str(self.section.get("reference", REFERENCE)), rows, samples)
