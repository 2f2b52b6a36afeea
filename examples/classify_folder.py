"""Classify every image in a folder under a latency budget: what an edge application looks like.

    python examples/classify_folder.py BUNDLE IMAGES_DIR --budget-ms 10 [--adaptive] [--backend auto]

Only the runtime install is needed (numpy, onnxruntime, optionally openvino; Pillow to read
PNG/JPEG; ``.npy`` files are read with numpy alone). Images of any size are resized by the
bundle's own preprocessing. Prints the tier the selector chose and, per image, the predicted
class (when the model has a classifier head) and the model latency.
"""

from __future__ import annotations

import argparse
import sys
import time

import veca_deploy
from veca_deploy.errors import VecaError
from veca_deploy.images import PILLOW_HINT, image_files, pillow_available, read_image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("images")
    ap.add_argument("--budget-ms", type=float, default=10.0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--percentile", type=float, default=95)
    ap.add_argument("--adaptive", action="store_true", help="step down tiers when the budget is missed")
    args = ap.parse_args(argv)

    try:
        files = image_files(args.images)
    except VecaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not files:
        print(f"no images in {args.images}", file=sys.stderr)
        return 2
    if any(f.suffix.lower() != ".npy" for f in files) and not pillow_available():
        # before the runtime opens (and profiles): one line, not a traceback at the first image
        print(f"error: {PILLOW_HINT} (or give .npy files)", file=sys.stderr)
        return 2
    try:
        with veca_deploy.Runtime.open(args.bundle, budget_ms=args.budget_ms, backend=args.backend,
                                      percentile=args.percentile, adaptive=args.adaptive) as rt:
            chosen = rt.selection.chosen
            print(f"tier: {rt.tier} (profiled p{args.percentile:g} {chosen.latency_ms:.2f} ms, "
                  f"budget {args.budget_ms:g} ms)")
            over = 0
            for f in files:
                image = read_image(f, keep_grey=True)
                t0 = time.perf_counter()
                pred = rt.predict(image)
                total = (time.perf_counter() - t0) * 1e3
                over += pred.latency_ms > args.budget_ms
                what = pred.names[0] if pred.names else (
                    f"class {int(pred.labels[0])}" if pred.labels is not None else "features " +
                    ", ".join(f"{k}{list(v.shape[1:])}" for k, v in pred.outputs.items()))
                print(f"{f.name}: {what}  model {pred.latency_ms:.2f} ms, with preprocessing {total:.2f} ms "
                      f"[C={pred.tier.cores} {pred.tier.precision} {pred.tier.backend}]")
            print(f"{len(files)} images, {over} over budget; switches: {len(rt.switches)}")
    except VecaError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
