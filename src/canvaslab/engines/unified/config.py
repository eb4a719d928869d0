"""Configs of the unified model (Show-o family) and its image tokenizer, plus tiny test configs.

`UnifiedConfig` mirrors the released Show-o `config.json` (`w_clip_vit`, `vocab_size`, `llm_vocab_size`,
`llm_model_path`, `codebook_size`, `num_vq_tokens`, `num_new_special_tokens`) and adds what the
reference fetched from the hub at load time: the Phi architecture (`llm`, `LLMConfig`) and the text
tokenizer's begin/end-of-text ids. The released file does not contain those, so they come from
`KNOWN_LLMS` (keyed by `llm_model_path`), from a local `llm_model_path` folder's `config.json`, or from
the `llm_config` entry our own writer adds. Nothing here touches the network.

`MagvitConfig` describes the MAGVIT-v2 tokenizer; its defaults are the released `showlab/magvitv2`
architecture (whose `config.json` holds no fields at all).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from canvaslab.core.notices import notice
from canvaslab.errors import InputError, ModelNotAvailableError

# The special tokens Show-o adds to the text tokenizer, in the order it adds them ([PAD] first).
SPECIAL_TOKENS = ("[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")


@dataclass(frozen=True)
class LLMConfig:
    """The Phi-1.5-style decoder: the fields of transformers' `PhiConfig` that matter for Show-o.

    Show-o always turns on the per-head LayerNorm of queries and keys (`qk_layernorm`), so it is not a
    field here. Dropouts are zero in the release and stay zero.
    """

    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    partial_rotary_factor: float = 0.5  # rotary embedding on the first half of each head only
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"llm hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMConfig:
        """Pick our fields from a Phi `config.json` (old `rope_theta`/`partial_rotary_factor` keys or v5 `rope_parameters`)."""
        data = dict(data)
        rope = data.pop("rope_parameters", None) or {}
        data.setdefault("rope_theta", rope.get("rope_theta", cls.rope_theta))
        data.setdefault("partial_rotary_factor", rope.get("partial_rotary_factor", cls.partial_rotary_factor))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})


# Architectures we can build without the hub. microsoft/phi-1_5's config.json, as Show-o loads it.
KNOWN_LLMS: dict[str, LLMConfig] = {"microsoft/phi-1_5": LLMConfig()}
# Phi-1.5's tokenizer: <|endoftext|> is both bos and eos; Show-o uses it as <|sot|> and <|eot|>.
PHI_TEXT_BOS_EOS = 50256


@dataclass(frozen=True)
class UnifiedConfig:
    """The released Show-o config plus the backbone architecture (see the module docstring)."""

    w_clip_vit: bool = False
    vocab_size: int = 58498
    llm_vocab_size: int = 50295  # len(Phi-1.5 tokenizer) before Show-o's special tokens
    llm_model_path: str = "microsoft/phi-1_5"
    codebook_size: int = 8192
    num_vq_tokens: int = 256  # 16x16 tokens at 256 px; 1024 for the 512 px model
    num_new_special_tokens: int = 10
    llm: LLMConfig = field(default_factory=LLMConfig)
    text_bos_id: int = PHI_TEXT_BOS_EOS
    text_eos_id: int = PHI_TEXT_BOS_EOS
    mm_projector_in: int = 1024  # CLIP ViT-L/14 feature width, used only when w_clip_vit

    def __post_init__(self) -> None:
        expected = self.llm_vocab_size + self.num_new_special_tokens + self.codebook_size + 1
        if self.vocab_size != expected:
            raise InputError(
                f"vocab_size {self.vocab_size} does not fit Show-o's layout: llm_vocab_size {self.llm_vocab_size} + "
                f"{self.num_new_special_tokens} special tokens + codebook_size {self.codebook_size} + 1 mask token = {expected}"
            )
        if self.num_new_special_tokens < len(SPECIAL_TOKENS):
            raise InputError(
                f"num_new_special_tokens is {self.num_new_special_tokens}; Show-o's layout needs {len(SPECIAL_TOKENS)}"
            )
        for name in ("text_bos_id", "text_eos_id"):
            if not 0 <= getattr(self, name) < self.llm_vocab_size:
                raise InputError(f"{name} {getattr(self, name)} is outside the text vocabulary [0, {self.llm_vocab_size})")

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size - 1

    def to_json_dict(self) -> dict[str, Any]:
        """The released config.json fields, plus ours (`llm_config`, text ids) so a reload needs no hub."""
        data = asdict(self)
        data["llm_config"] = data.pop("llm")
        return {"_class_name": "Showo", "mask_token_id": self.mask_token_id, **data}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], *, folder: Path | None = None) -> UnifiedConfig:
        """Build from a Show-o config.json; the backbone comes from `llm_config`, a local path or `KNOWN_LLMS`."""
        data = dict(data)
        llm_data = data.pop("llm_config", None)
        mask_token_id = data.pop("mask_token_id", None)
        names = {f.name for f in fields(cls)} - {"llm"}
        unknown = sorted(k for k in data if k not in names and not k.startswith("_") and k not in _IGNORED_KEYS)
        if unknown:
            notice(f"unified model config: ignoring unknown keys {', '.join(unknown)}")
        values = {k: v for k, v in data.items() if k in names}
        llm_path = values.get("llm_model_path", cls.llm_model_path)
        llm = LLMConfig.from_dict(llm_data) if llm_data is not None else resolve_llm(llm_path, folder=folder)
        config = cls(llm=llm, **values)
        if mask_token_id is not None and mask_token_id != config.mask_token_id:
            raise InputError(f"mask_token_id {mask_token_id} is not vocab_size - 1 = {config.mask_token_id} as Show-o requires")
        return config


# Keys the reference writes that carry nothing we need (its loader options).
_IGNORED_KEYS = {"load_from_showo"}


def resolve_llm(llm_model_path: str, *, folder: Path | None = None) -> LLMConfig:
    """The backbone architecture for `llm_model_path`, offline: a known id or a local folder with config.json."""
    if llm_model_path in KNOWN_LLMS:
        return KNOWN_LLMS[llm_model_path]
    candidates = [Path(llm_model_path)]
    if folder is not None:
        candidates.append(folder / llm_model_path)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return LLMConfig.from_dict(json.loads((candidate / "config.json").read_text()))
    known = ", ".join(KNOWN_LLMS)
    raise ModelNotAvailableError(
        f"unknown backbone llm_model_path {llm_model_path!r}: use one of {known}, a local folder with its config.json, "
        "or add an 'llm_config' entry to the model's config.json"
    )


@dataclass(frozen=True)
class MagvitConfig:
    """MAGVIT-v2 encoder/decoder with lookup-free quantization; defaults = the released tokenizer.

    The encoder downsamples once per level after the first (5 levels: x16), so 256 px gives 16x16 codes.
    Attention blocks are added at levels whose nominal resolution (starting at `resolution`) is in
    `attn_resolutions`; the release lists 5, which no level reaches, so only the middle blocks attend.
    """

    ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    attn_resolutions: tuple[int, ...] = (5,)
    resolution: int = 256
    codebook_bits: int = 13  # lookup-free quantization: one sign bit per latent channel, 2**13 = 8192 codes
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        for name in ("encoder_ch_mult", "encoder_num_res_blocks", "decoder_ch_mult", "decoder_num_res_blocks", "attn_resolutions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.encoder_ch_mult) != len(self.encoder_num_res_blocks):
            raise InputError("encoder_ch_mult and encoder_num_res_blocks must have one entry per level")
        if len(self.decoder_ch_mult) != len(self.decoder_num_res_blocks):
            raise InputError("decoder_ch_mult and decoder_num_res_blocks must have one entry per level")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise InputError("the encoder and decoder must have the same number of levels")
        if self.ch % 32:
            raise InputError(f"ch {self.ch} must be a multiple of 32 (GroupNorm with 32 groups)")

    @property
    def codebook_size(self) -> int:
        return 2**self.codebook_bits

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    def to_json_dict(self) -> dict[str, Any]:
        return {"_class_name": "MAGVITv2", **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> MagvitConfig:
        """The release's config.json is empty apart from `_class_name`: absent fields keep the release values."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in names and not k.startswith("_"))
        if unknown:
            notice(f"MAGVIT config: ignoring unknown keys {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in names})


# -- tiny configs: a few layers, CPU in well under a second -------------------------------------

TINY_TEXT_VOCAB = 96  # a byte-ish toy vocabulary; ids 1 and 2 play bos/eos


def tiny_unified_config(*, codebook_size: int = 8192, num_vq_tokens: int = 16, w_clip_vit: bool = False) -> UnifiedConfig:
    """A 2-layer, 64-wide Show-o. The codebook stays at the release's 8192 (the layout is the same)."""
    return UnifiedConfig(
        w_clip_vit=w_clip_vit,
        vocab_size=TINY_TEXT_VOCAB + len(SPECIAL_TOKENS) + codebook_size + 1,
        llm_vocab_size=TINY_TEXT_VOCAB,
        llm_model_path="canvaslab/tiny-phi",
        codebook_size=codebook_size,
        num_vq_tokens=num_vq_tokens,
        num_new_special_tokens=len(SPECIAL_TOKENS),
        llm=LLMConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512),
        text_bos_id=1,
        text_eos_id=2,
        mm_projector_in=32,
    )


def tiny_magvit_config(*, codebook_bits: int = 13) -> MagvitConfig:
    """Release-shaped MAGVIT (5 levels, x16, one attention-free level each) at 32 channels."""
    return MagvitConfig(
        ch=32,
        encoder_ch_mult=(1, 1, 1, 1, 1),
        encoder_num_res_blocks=(1, 1, 1, 1, 1),
        decoder_ch_mult=(1, 1, 1, 1, 2),
        decoder_num_res_blocks=(1, 1, 1, 1, 1),
        attn_resolutions=(4,),  # the 64 px tiny model has one attention level (4x4), unlike the release
        resolution=64,
        codebook_bits=codebook_bits,
    )

