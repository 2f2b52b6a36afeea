"""Segment every image in a folder under a latency budget and write one mask per image.

    python examples/segment_folder.py BUNDLE IMAGES_DIR --out MASKS_DIR --budget-ms 50 [--adaptive]

The application side of a dense task model (``veca-deploy export veca_tiny_seg --postprocess
argmax ...``): only the runtime install is needed (numpy, onnxruntime, optionally openvino; no
torch). ``Runtime.open`` picks the most accurate tier whose profiled latency fits the budget.
Each mask (class index per pixel, mapped back to the image's own size) is written as
``NAME.png`` (8-bit, Pillow) or ``NAME.npy`` with ``--format npy`` or for ``.npy`` input without
Pillow; each file is written to a temporary name first and renamed, so a folder never holds a
half-written mask. Prints, per image, the classes found (pixel share) and the time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import veca_deploy
from veca_deploy.errors import VecaError
from veca_deploy.images import PILLOW_HINT, image_files, pillow_available, read_image


def class_mask(pred: "veca_deploy.Prediction") -> np.ndarray:
    """The [H, W] class indices of the first image: the in-graph ``mask`` when the bundle was
    exported with ``--postprocess argmax``, else the argmax of ``mask_logits``/``mask_probs``."""
    for name in ("mask", "mask_logits", "mask_probs"):
        if name in pred:
            out = pred[name][0]
            return (out if out.ndim == 2 else out.argmax(0)).astype(np.int64)
    raise VecaError(f"the bundle has no mask output (outputs: {', '.join(pred.keys())}); "
                    "export a segmentation model such as veca_tiny_seg")


def to_image_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour map of a graph-size mask onto the original image (stretch geometry)."""
    h, w = shape
    rows = np.minimum((np.arange(h) * mask.shape[0]) // h, mask.shape[0] - 1)
    cols = np.minimum((np.arange(w) * mask.shape[1]) // w, mask.shape[1] - 1)
    return mask[rows][:, cols]


def write_atomic(mask: np.ndarray, dest: Path) -> None:
    """Write ``mask`` to ``dest`` (.png or .npy) through a temporary file in the same folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    try:
        if dest.suffix == ".npy":
            np.save(tmp, mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.int32))
        else:
            from PIL import Image

            Image.fromarray(mask.astype(np.uint8), mode="L").save(tmp, format="PNG")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("images")
    ap.add_argument("--out", required=True, help="folder for the masks (created)")
    ap.add_argument("--budget-ms", type=float, default=50.0, help="per-image model latency budget")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--percentile", type=float, default=95)
    ap.add_argument("--format", choices=("png", "npy"), default=None, help="mask files (default png with Pillow)")
    ap.add_argument("--adaptive", action="store_true", help="step down tiers when the budget is missed")
    args = ap.parse_args(argv)

    src = Path(args.images)
    try:
        files = image_files(src)
    except VecaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not files:
        print(f"error: no images in {src}", file=sys.stderr)
        return 2
    has_pil = pillow_available()
    if any(f.suffix.lower() != ".npy" for f in files) and not has_pil:
        print(f"error: {PILLOW_HINT} (or give .npy files)", file=sys.stderr)
        return 2
    fmt = args.format or ("png" if has_pil else "npy")
    if fmt == "png" and not has_pil:
        print("error: --format png needs Pillow: pip install pillow (or --format npy)", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create {out}: {e.strerror}", file=sys.stderr)
        return 73
    try:
        with veca_deploy.Runtime.open(args.bundle, budget_ms=args.budget_ms, backend=args.backend,
                                      percentile=args.percentile, adaptive=args.adaptive) as rt:
            chosen = rt.selection.chosen
            print(f"tier: {rt.tier} (profiled p{args.percentile:g} {chosen.latency_ms:.2f} ms, "
                  f"budget {args.budget_ms:g} ms)")
            over, totals = 0, []
            for f in files:
                image = read_image(f)
                pred = rt.predict(image)
                t0 = time.perf_counter()
                mask = to_image_size(class_mask(pred), image.shape[:2])
                write_atomic(mask, out / f"{f.stem}.{fmt}")
                post_ms = (time.perf_counter() - t0) * 1e3
                over += pred.latency_ms > args.budget_ms
                totals.append(pred.total_ms + post_ms)
                names = pred.class_names or ()
                ids, counts = np.unique(mask, return_counts=True)
                found = ", ".join(f"{names[i] if i < len(names) else i} {100 * n / mask.size:.0f}%"
                                  for i, n in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: -t[1])[:4])
                print(f"{f.name}: {found}  model {pred.latency_ms:.2f} ms, total {totals[-1]:.2f} ms "
                      f"[C={pred.tier.cores} {pred.tier.precision} {pred.tier.backend}]")
            print(f"{len(files)} masks in {out}, {over} over the model budget; median total "
                  f"{float(np.median(totals)):.2f} ms per image; switches: {len(rt.switches)}")
    except VecaError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
