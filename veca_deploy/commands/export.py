"""``veca-deploy export``: model -> parity-checked bundle."""

from __future__ import annotations

import click

from .common import (console, int8_scheme_option, nncf_preset_option, parse_int_list, parse_list, parse_size,
                     print_int8_choice, progress_reporter, target_option, torch_side_import)


@click.command("export")
@click.argument("source", required=False)
@click.option("--cores", help="Core tiers, e.g. 8,16,32,64 (default: the model's tiers, at most 4).")
@click.option("--image-size", "image_sizes", multiple=True, help="N or HxW; repeat for several sizes.")
@click.option("--formats", default="onnx,openvino", show_default=True, help="onnx, openvino.")
@click.option("--precision", "precisions", default="fp32,fp16", show_default=True, help="fp32, fp16, int8.")
@click.option("--calib", help="Calibration data for int8: a folder of images, a .npy/.npz, fashion-mnist, photos or "
              "seg-fashion-mnist (segmentation canvases).")
@click.option("--calib-size", type=int, default=None, help="Calibration images (default 512).")
@int8_scheme_option
@nncf_preset_option
@target_option
@click.option("--allow-drop", type=float, default=None, help="Accept an accuracy drop up to X points.")
@click.option("--resize-mode", type=click.Choice(["stretch", "shorter"]), default="stretch", show_default=True,
              help="How the runtime fits a photo to a tier: stretch to its size, or resize the shorter side to "
                   "size / --crop-pct and centre-crop (timm's eval transform). Declare what training used.")
@click.option("--crop-pct", type=float, default=1.0, show_default=True, help="With --resize-mode shorter.")
@click.option("--no-antialias", is_flag=True,
              help="Declare plain bilinear without antialiasing (default: antialiased, as PIL/torchvision train).")
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--simplifier", type=click.Choice(["onnxslim", "onnxsim", "none"]), default="onnxslim", show_default=True)
@click.option("--elastic", is_flag=True, help="Also write one elastic ONNX serving every tier.")
@click.option("--random-weights", is_flag=True, help="Export a registry model with random weights (latency work).")
@click.option("--config", "config", default=None, metavar="NAME_OR_JSON",
              help="Model config of a checkpoint that carries none (a bare state_dict, safetensors without "
                   "config.json): a registry name (veca_small, ...) or a JSON file of config fields. A "
                   "checkpoint's own config wins.")
@click.option("--model-factory", "model_factory", default=None, metavar="MODULE:FUNCTION",
              help="Export your own task model: FUNCTION in MODULE (a .py file or an importable module) returns "
                   "an nn.Module with forward(images, cores=C) and a VECA backbone inside.")
@click.option("--checkpoint", default=None, type=click.Path(), help="With --model-factory: weights (safetensors, "
              "or a torch file read with weights_only=True) loaded into the module's state_dict.")
@click.option("--output-names", default=None, help="Task models (--model-factory, or a SOURCE with a head such as "
              "veca_tiny_seg): names of a tensor/tuple's outputs.")
@click.option("--postprocess", default=None, help="Task models: argmax and/or softmax of the dense mask_logits "
              "output, inside the graph (argmax: the application gets an integer mask).")
@click.option("--out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--calib-resolution", type=int, default=None,
              help="int8: ONNX graphs larger than NxN reuse the activation ranges of the same tier at NxN (export "
                   "that size too: --image-size N); see quantize --help.")
@click.option("--allow-small-calib", is_flag=True, help="Accept fewer than 300 calibration images (recorded).")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def command(source, cores, image_sizes, formats, precisions, calib, calib_size, int8_scheme, nncf_preset, target, allow_drop, resize_mode, crop_pct,
            no_antialias, batch, opset, exporter,
            simplifier, elastic, random_weights, config, model_factory, checkpoint, output_names, postprocess, out,
            calib_resolution, allow_small_calib, force, quiet):
    """Export SOURCE (the built-in reference model by default, a registry name with
    --random-weights, or a checkpoint path) into a bundle at --out."""
    from ..errors import UsageError

    with torch_side_import():
        from ..export import export

    if batch != "dynamic":
        try:
            batch = int(batch)
        except ValueError:
            raise UsageError(f"--batch must be 'dynamic' or an integer, got {batch!r}") from None
    task_kw = {}
    if model_factory is not None:
        from ..export.task_export import load_factory

        if source:
            raise UsageError("give either SOURCE or --model-factory, not both")
        source = load_factory(model_factory, checkpoint)
        task_kw = {"source_info": {"name": model_factory.rpartition(":")[2], "source": f"factory:{model_factory}",
                                   **({"checkpoint": str(checkpoint)} if checkpoint else {})}}
    elif checkpoint:
        raise UsageError("--checkpoint needs --model-factory (a checkpoint of the model itself is SOURCE)")
    if output_names or postprocess:  # the pipeline refuses them for a SOURCE without a head
        task_kw.update(output_names=parse_list(output_names) or None, postprocess=parse_list(postprocess) or None)
    calib_options = {"allow_small": allow_small_calib, "int8_scheme": int8_scheme, "target": target,
                     "nncf_preset": nncf_preset}
    if calib_size is not None:
        calib_options["count"] = calib_size
    if calib_resolution is not None:
        calib_options["calib_resolution"] = calib_resolution
    if allow_drop is not None:
        calib_options["allow_drop"] = allow_drop
    with progress_reporter(not quiet) as report:
        manifest = export(
            source, out=out, cores=parse_int_list(cores, "--cores"),
            image_sizes=[parse_size(s) for s in image_sizes] or None,
            formats=parse_list(formats) or ["onnx"], precisions=parse_list(precisions) or ["fp32"],
            batch=batch, opset=opset, exporter=exporter, simplifier=simplifier, elastic=elastic,
            force=force, random_weights=random_weights, calib=calib, calib_options=calib_options,
            progress=report, preprocess={"resize_mode": resize_mode, "crop_pct": crop_pct,
                                         "antialias": not no_antialias},
            config=config, **task_kw)
    if config is not None and (manifest.model or {}).get("config_from") == "checkpoint":
        console.print(f"note: {source} carries its own model config; --config {config} was not used",
                      highlight=False, soft_wrap=True)
    n = len(manifest.artifacts)
    console.print(f"[green]wrote[/green] {out}: {n} artifacts, {len(manifest.tiers())} tiers, all parity gates passed")
    if "int8" in (parse_list(precisions) or []):
        print_int8_choice(manifest.calibration)
