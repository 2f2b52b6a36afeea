"""``veca-deploy quantize``: add INT8 / FP16 artifacts to an existing bundle (atomic, torch-free)."""

from __future__ import annotations

import click

from .common import (format_accuracy, int8_scheme_option, nncf_preset_option, out, parse_int_list, parse_list,
                     print_int8_choice, progress_reporter, target_option)


@click.command("quantize")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--precision", "precisions", default="int8", show_default=True, help="int8 and/or fp16, comma-separated.")
@click.option("--calib", default=None,
              help="Calibration data: a folder of jpg/png, a .npy/.npz, fashion-mnist (TRAIN split), photos or "
                   "seg-fashion-mnist (segmentation canvases from the TRAIN split).")
@click.option("--calib-size", "count", type=int, default=None,
              help="Calibration images (default 512, minimum 300 without --force).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample.")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default=None,
              help="ONNX Runtime activation calibration (default minmax, see docs/quantization.md).")
@int8_scheme_option
@nncf_preset_option
@target_option
@click.option("--format", "formats", default=None, help="onnx, openvino (default: both, where the bundle has FP32).")
@click.option("--tiers", default=None, help="Only these core tiers (elastic graphs are always included).")
@click.option("--eval-data", default="fashion-mnist", show_default=True, help="Held-out data for the accuracy gate: fashion-mnist (TEST split; the default, which becomes the "
                   "model's own data when its card names one, and held-out real photos for a feature-cosine gate "
                   "from 512 px), photos, a folder, .npy or .npz.")
@click.option("--eval-limit", type=int, default=2000, show_default=True,
              help="Images the accuracy gate uses (the built-in seg-fashion-mnist: 256 canvases unless given).")
@click.option("--metric", type=click.Choice(["top1", "miou", "mae", "cosine"]), default=None,
              help="Task metric of the accuracy gate (default: from the outputs and the data).")
@click.option("--allow-drop", type=float, default=None,
              help="Accept a drop up to X points (top-1, mIoU) or an error rise up to X %% (MAE) vs FP32 (recorded).")
@click.option("--calib-resolution", type=int, default=None,
              help="ONNX INT8 of larger static graphs reuses the activation ranges of the same tier's FP32 ONNX graph "
                   "at NxN in the bundle (calibrating there is ~3x cheaper from 512 to 1024 px; recorded, gated). "
                   "OpenVINO and elastic graphs calibrate at their own size.")
@click.option("--allow-small-calib", "--force", "allow_small", is_flag=True,
              help="Accept fewer than 300 calibration images (recorded in the manifest); --force is the old name.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(bundle_dir, precisions, calib, count, seed, method, int8_scheme, nncf_preset, target, formats, tiers, eval_data, eval_limit,
            metric, allow_drop, calib_resolution, allow_small, quiet) -> None:
    """Add INT8 (ONNX QDQ + OpenVINO NNCF) and/or FP16 ONNX artifacts to BUNDLE_DIR, gated on parity and accuracy."""
    from rich.table import Table

    from ..calibration.quantize import quantize

    precs = parse_list(precisions) or ["int8"]
    with progress_reporter(not quiet) as rep:
        m = quantize(bundle_dir, precisions=precs, calib=calib, formats=parse_list(formats), allow_small=allow_small,
                     allow_drop=allow_drop, progress=rep, method=method, int8_scheme=int8_scheme, count=count, seed=seed,
                     tiers=parse_int_list(tiers, "--tiers"), eval_data=eval_data, eval_limit=eval_limit, target=target,
                     metric=metric, calib_resolution=calib_resolution, nncf_preset=nncf_preset)
    t = Table(title=f"quantized artifacts in {bundle_dir}")
    for col in ("artifact", "path", "MiB", "accuracy", "min cosine"):
        t.add_column(col)
    for a in m.artifacts:
        if a.precision == "fp32" or a.format == "tensorrt":
            continue
        val = format_accuracy(a.accuracy)
        par = a.parity if not a.elastic else next(iter(a.parity.values()), {})
        cos = min((o["cosine"] for o in par.get("outputs", {}).values()), default=float("nan"))
        t.add_row(a.id, a.path, f"{a.bytes / 2**20:.2f}", val, f"{cos:.4f}")
    out.print(t)
    cal = m.calibration
    out.print(f"calibration: {cal.get('source')} ({cal.get('count')} images, seed {cal.get('seed')})"
              + (" [yellow]below minimum, forced[/yellow]" if cal.get("forced_below_minimum") else ""))
    if "int8" in precs:
        print_int8_choice(cal)
