"""Where the model to export comes from: the built-in reference model, a registry name (random
weights, for latency work), or a checkpoint path (the authors' ``torch.save`` file or our
safetensors folder). Returns the model and the provenance the manifest records."""

from __future__ import annotations

from pathlib import Path

from ..data import FASHION_MNIST_CLASSES
from ..errors import UsageError

BUILTIN = "builtin:veca_tiny"
#: the dense reference model (segmentation), shipped beside veca_tiny
SEG_MODEL = "veca_tiny_seg"


def resolve_config(spec):
    """``export --config``: a :class:`~veca_deploy.model.config.VecaConfig` from a registry name
    (``veca_small``), a JSON file of config fields (what ``config.json`` of a safetensors folder
    holds; the authors' training-config keys are accepted too), a dict of fields, or a config."""
    import json

    from ..errors import CheckpointError
    from ..model.config import VecaConfig
    from ..model.registry import list_models, model_config

    if spec is None or isinstance(spec, VecaConfig):
        return spec
    if isinstance(spec, dict):
        fields = spec
        where = "config"
    else:
        name = str(spec)
        if name in list_models():
            return model_config(name)
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"--config {name!r} is neither a registry name ({', '.join(list_models())}) "
                             "nor a JSON file of config fields")
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"--config {name}: not a readable JSON file ({e})") from None
        where = f"--config {name}"
    if not isinstance(fields, dict):
        raise UsageError(f"{where}: expected a JSON object of config fields, got {type(fields).__name__}")
    try:
        try:
            return VecaConfig.from_dict(fields)
        except CheckpointError:
            if "hidden_dim" in fields and "num_query_tokens" in fields:  # the authors' training config
                return VecaConfig.from_author_config(fields)
            raise
    except CheckpointError as e:
        raise UsageError(f"{where}: {e}") from None


def resolve_source(source: str | None, random_weights: bool = False, config=None):
    """A model and its provenance from: None (built-in reference), a registry name, or a path.
    ``config`` (see :func:`resolve_config`) is the model config of a checkpoint that carries none."""
    from ..model.checkpoint import load_checkpoint, load_reference_model
    from ..model.registry import DEFAULT_MODEL, create_model, latency_weights, list_models

    config = resolve_config(config)
    if config is not None and (source in (None, "", BUILTIN, "builtin") or source in list_models()):
        raise UsageError("--config is for a checkpoint path that carries no config (a bare state_dict or "
                         "safetensors weights without config.json), not for a registry name or the built-in model")
    if source in (None, "", BUILTIN, "builtin", DEFAULT_MODEL) and not random_weights:
        model = load_reference_model()
        info = {"name": DEFAULT_MODEL, "source": BUILTIN, "source_sha256": model.source_sha256,
                "random_weights": False, "class_names": list(FASHION_MNIST_CLASSES)}
        from ..model.checkpoint import reference_card

        card = reference_card()
        info["card_top1"] = card.get("test_top1", {})
        if isinstance((card.get("data") or {}).get("test_images"), int):
            info["card_samples"] = card["data"]["test_images"]  # what the selector's tie rule needs
        return model, info
    if source == SEG_MODEL and not random_weights:
        model = load_reference_model(SEG_MODEL)
        from ..model.checkpoint import reference_card
        from ..seg_data import SEG_SOURCE

        card = reference_card(SEG_MODEL)
        info = {"name": SEG_MODEL, "source": f"builtin:{SEG_MODEL}", "source_sha256": model.source_sha256,
                "random_weights": False, "eval_data": SEG_SOURCE, "card_metric": "miou",
                "card_top1": card.get("heldout_miou", {}),
                # mask value -> name (0 background, k = Fashion-MNIST class k - 1)
                "class_names": ["background", *FASHION_MNIST_CLASSES]}
        if isinstance(card.get("eval_samples"), int):
            info["card_samples"] = card["eval_samples"]
        return model, info
    if source in list_models():
        if not random_weights:
            raise UsageError(f"{source} is a registry name without weights: pass --random-weights to export "
                             "random weights (latency work only) or give a checkpoint path")
        import torch

        torch.manual_seed(0)
        model = latency_weights(create_model(source)).eval()
        return model, {"name": source, "source": f"registry:{source}", "source_sha256": None,
                       "random_weights": True}
    if source is None:
        raise UsageError("--random-weights needs a registry name as SOURCE")
    path = Path(source)
    if not path.exists():
        raise UsageError(f"SOURCE {source!r} is neither a registry name ({', '.join(list_models())}) "
                         "nor an existing checkpoint path")
    model = load_checkpoint(path, config=config)
    info = {"name": f"veca_{model.cfg.model_family}" if model.cfg.attention == "core" else "vit",
            "source": str(path), "source_sha256": model.source_sha256, "random_weights": False}
    if config is not None:
        info["config_from"] = getattr(model, "config_from", "checkpoint")  # "given": --config was used
    return model, info


def default_tiers(cfg) -> list[int]:
    """All tiers when there are at most four, else doubling from the chunk size up to the bank."""
    tiers = cfg.core_tiers
    if len(tiers) <= 4:
        return tiers
    out, c = [], cfg.nested_chunk_size
    while c < cfg.num_query_tokens:
        out.append(c)
        c *= 2
    return out + [cfg.num_query_tokens]
