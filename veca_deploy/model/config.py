"""Model configuration as plain data (no torch), shared by the model, the exporter and bundles."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError, UsageError

#: Keys of the authors' training config that we read; everything else there is ignored.
AUTHOR_KEYS = (
    "hidden_dim", "num_heads", "num_layers", "num_query_tokens", "nested_chunk_size",
    "mlp_ratio", "patch_size", "in_channels", "patch_embed_use_ln", "rope_p_zero_freqs",
    "rope_zero_freqs_from", "distill_output_dim", "model_family",
)


@dataclass
class VecaConfig:
    """Architecture of one VECA (or like-for-like full-attention ViT) model.

    Field names follow the authors' config so their checkpoints map one to one.
    ``attention="full"`` builds the ViT baseline: one global token plus the patches, all-to-all.
    """

    hidden_dim: int = 384
    num_heads: int = 6
    num_layers: int = 12
    num_query_tokens: int = 64
    nested_chunk_size: int = 8
    mlp_ratio: float = 2.66667
    patch_size: int = 16
    in_channels: int = 3
    patch_embed_use_ln: bool = False
    rope_p_zero_freqs: float = 0.125
    rope_zero_freqs_from: str = "low"
    rope_base: float = 100.0
    distill_output_dim: int | None = None
    num_classes: int = 0
    attention: str = "core"
    model_family: str = "custom"
    default_image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.default_image_size = tuple(int(v) for v in self.default_image_size)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.validate()

    # ----------------------------------------------------------------- derived
    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_dim * self.mlp_ratio)

    @property
    def output_dim(self) -> int:
        if self.distill_output_dim is None:
            return self.hidden_dim
        return int(self.distill_output_dim)

    @property
    def has_output_proj(self) -> bool:
        return self.output_dim != self.hidden_dim

    @property
    def core_tiers(self) -> list[int]:
        """Core counts this model serves: every prefix of whole chunks (one for a ViT)."""
        if self.attention == "full":
            return [1]
        k = self.nested_chunk_size
        return list(range(k, self.num_query_tokens + 1, k))

    def validate(self) -> None:
        if self.attention not in ("core", "full"):
            raise UsageError(f"attention must be 'core' or 'full', got {self.attention!r}")
        if self.hidden_dim % self.num_heads:
            raise UsageError("hidden_dim must be a multiple of num_heads")
        if self.head_dim % 4:
            raise UsageError("head_dim must be a multiple of 4 for 2-D RoPE")
        if self.attention == "core" and self.num_query_tokens % self.nested_chunk_size:
            raise UsageError("num_query_tokens must be a multiple of nested_chunk_size")
        if self.rope_zero_freqs_from not in ("low", "high"):
            raise UsageError("rope_zero_freqs_from must be 'low' or 'high'")

    def check_cores(self, cores: int | None) -> int:
        """Resolve ``cores`` (None = whole bank) and refuse counts the model cannot run."""
        if self.attention == "full":
            if cores not in (None, 1):
                raise UsageError("a full-attention ViT has no core tiers; pass cores=None")
            return 1
        if cores is None:
            return self.num_query_tokens
        if isinstance(cores, bool) or not isinstance(cores, int):
            raise UsageError(f"cores must be an int, got {type(cores).__name__}")
        if cores not in self.core_tiers:
            raise UsageError(
                f"cores={cores} is not a tier of this model: use a multiple of "
                f"{self.nested_chunk_size} between {self.nested_chunk_size} and {self.num_query_tokens}"
            )
        return cores

    # ----------------------------------------------------------- (de)serialize
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["default_image_size"] = list(self.default_image_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VecaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(f"unknown config keys: {', '.join(unknown)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"invalid model config: {e}") from None

    @classmethod
    def from_author_config(cls, cfg: dict[str, Any]) -> "VecaConfig":
        """Map the authors' training config (a plain dict) onto our fields."""
        missing = [k for k in ("hidden_dim", "num_heads", "num_layers", "num_query_tokens") if k not in cfg]
        if missing:
            raise CheckpointError(f"checkpoint config lacks {', '.join(missing)}")
        kw: dict[str, Any] = {k: cfg[k] for k in AUTHOR_KEYS if k in cfg and cfg[k] is not None}
        if cfg.get("distill_output_dim") is not None:
            kw["distill_output_dim"] = int(cfg["distill_output_dim"])
        kw["model_family"] = str(cfg.get("model_family") or "custom")
        try:
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"invalid checkpoint config: {e}") from None
