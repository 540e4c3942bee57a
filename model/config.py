"""Qwen3-VL configuration read from (and written to) a Hugging Face ``config.json``.

Accepts both spellings transformers has used: ``rope_parameters`` (5.x) and
``rope_scaling`` + ``rope_theta`` (4.57), and ``tie_word_embeddings`` at the top
level or inside ``text_config``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


class ConfigError(ValueError):
    """A config.json that is missing, unreadable or not a Qwen3-VL config."""


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    max_position_embeddings: int = 128_000
    attention_bias: bool = False


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig:
    text: TextConfig
    vision: VisionConfig
    tie_word_embeddings: bool = False
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    @classmethod
    def from_dict(cls, d: dict) -> Qwen3VLConfig:
        """The config of a parsed ``config.json``; raises ``ConfigError`` for one that is not
        Qwen3-VL's, lacks a field or whose ``mrope_section`` does not cover ``head_dim``."""
        if d.get("model_type") != "qwen3_vl":
            raise ConfigError(f"model_type is {d.get('model_type')!r}, expected 'qwen3_vl'")
        t = dict(d.get("text_config") or {})
        v = dict(d.get("vision_config") or {})
        rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
        try:
            text = TextConfig(
                vocab_size=int(t["vocab_size"]),
                hidden_size=int(t["hidden_size"]),
                intermediate_size=int(t["intermediate_size"]),
                num_hidden_layers=int(t["num_hidden_layers"]),
                num_attention_heads=int(t["num_attention_heads"]),
                num_key_value_heads=int(t.get("num_key_value_heads") or t["num_attention_heads"]),
                head_dim=int(t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]),
                rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 5_000_000.0))),
                mrope_section=tuple(int(x) for x in rope.get("mrope_section", (24, 20, 20))),
                max_position_embeddings=int(t.get("max_position_embeddings", 128_000)),
                attention_bias=bool(t.get("attention_bias", False)),
            )
            vision = VisionConfig(
                depth=int(v["depth"]),
                hidden_size=int(v["hidden_size"]),
                intermediate_size=int(v["intermediate_size"]),
                num_heads=int(v["num_heads"]),
                out_hidden_size=int(v["out_hidden_size"]),
                in_channels=int(v.get("in_channels", 3)),
                patch_size=int(v.get("patch_size", 16)),
                temporal_patch_size=int(v.get("temporal_patch_size", 2)),
                spatial_merge_size=int(v.get("spatial_merge_size", 2)),
                num_position_embeddings=int(v.get("num_position_embeddings", 2304)),
                deepstack_visual_indexes=tuple(
                    int(x) for x in v.get("deepstack_visual_indexes", (8, 16, 24))
                ),
            )
        except KeyError as e:
            raise ConfigError(f"config.json lacks {e.args[0]!r}") from None
        if sum(text.mrope_section) * 2 != text.head_dim:
            raise ConfigError(
                f"mrope_section {list(text.mrope_section)} does not cover head_dim {text.head_dim}"
            )
        tie = d.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
        return cls(
            text=text,
            vision=vision,
            tie_word_embeddings=bool(tie),
            image_token_id=int(d.get("image_token_id", 151655)),
            video_token_id=int(d.get("video_token_id", 151656)),
            vision_start_token_id=int(d.get("vision_start_token_id", 151652)),
            vision_end_token_id=int(d.get("vision_end_token_id", 151653)),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> Qwen3VLConfig:
        """The config in the ``config.json`` file at ``path``; raises ``ConfigError``."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: unreadable config ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: not a JSON object")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        """The config.json that transformers' ``Qwen3VLConfig`` reads."""
        t = dataclasses.asdict(self.text)
        rope = {
            "rope_type": "default",
            "rope_theta": t.pop("rope_theta"),
            "mrope_section": list(t.pop("mrope_section")),
            "mrope_interleaved": True,
        }
        v = dataclasses.asdict(self.vision)
        v["deepstack_visual_indexes"] = list(v["deepstack_visual_indexes"])
        return {
            "model_type": "qwen3_vl",
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "tie_word_embeddings": self.tie_word_embeddings,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "text_config": {
                **t,
                "model_type": "qwen3_vl_text",
                "hidden_act": "silu",
                "rope_parameters": rope,
                "tie_word_embeddings": self.tie_word_embeddings,
            },
            "vision_config": {
                **v,
                "model_type": "qwen3_vl_vision",
                "hidden_act": "gelu_pytorch_tanh",
            },
        }
