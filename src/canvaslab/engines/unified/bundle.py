"""Everything a unified-model task needs, loaded together: the Show-o model, its MAGVIT image
tokenizer and its text tokenizer, offline.

Where each part comes from (first that exists):
- model: a Show-o folder or a hub id already in the local Hugging Face cache (`loading.resolve_folder`);
  aliases `show-o` (256 px) and `show-o-512`.
- MAGVIT: the `magvit` argument; a `magvit/` folder inside the model folder (our checkpoints); the
  config's `vq_model_path`; the hub id `showlab/magvitv2` in the local cache.
- text tokenizer: the `tokenizer` argument; tokenizer files in the model folder (our checkpoints save
  them); the config's `llm_model_path` as a local folder or a cached hub id (`microsoft/phi-1_5`).
Anything missing is a `ModelNotAvailableError` in one sentence saying what and how to provide it.
`save_bundle` writes a self-contained folder (model, tokenizer files, magvit/) that `load_bundle` reads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from canvaslab.engines.unified.config import UnifiedConfig
from canvaslab.engines.unified.loading import (
    load_magvit,
    load_unified_model,
    read_unified_config,
    resolve_folder,
    save_magvit,
    save_unified_model,
)
from canvaslab.engines.unified.magvit import Magvit
from canvaslab.engines.unified.model import UnifiedModel
from canvaslab.engines.unified.tokens import TokenLayout
from canvaslab.errors import InputError, ModelNotAvailableError

ALIASES = {"show-o": "showlab/show-o", "show-o-512": "showlab/show-o-512x512"}
DEFAULT_MODEL = "show-o"
DEFAULT_MAGVIT = "showlab/magvitv2"
MAGVIT_SUBFOLDER = "magvit"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


@dataclass
class UnifiedBundle:
    model: UnifiedModel
    magvit: Magvit
    tokenizer: Any  # a transformers tokenizer
    source: str  # the model as the user named it
    magvit_source: str = ""  # where the MAGVIT was loaded from (recorded in checkpoints)

    @property
    def config(self) -> UnifiedConfig:
        return self.model.config

    @property
    def layout(self) -> TokenLayout:
        return self.model.layout

    @property
    def downsample(self) -> int:
        return self.magvit.downsample

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (the prompts add <|sot|>/<|eot|> themselves)."""
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def image_codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> code grid (B, H/16, W/16)."""
        return self.magvit.encode(pixels)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code grid (B, h, w) -> pixels (B, 3, 16h, 16w) clamped to [-1, 1]."""
        return self.magvit.decode(codes).clamp(-1, 1)


def resolve_model_name(name: str | None) -> str:
    name = name or DEFAULT_MODEL
    return ALIASES.get(name, name)


def load_bundle(
    model: str | Path | None = None,
    *,
    magvit: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> UnifiedBundle:
    """Model + MAGVIT + text tokenizer (see the module docstring for where each comes from)."""
    name = resolve_model_name(str(model) if model is not None else None)
    folder = resolve_folder(name, "unified model")
    config = read_unified_config(folder)
    text = load_text_tokenizer(folder, config, tokenizer)
    unified = load_unified_model(folder, dtype=dtype, device=device)
    vq_source = _magvit_source(folder, magvit)
    vq = load_magvit(vq_source, dtype=dtype, device=device)
    if vq.quantize.codebook_size != config.codebook_size:
        raise InputError(f"the MAGVIT tokenizer has {vq.quantize.codebook_size} codes but the model expects "
                         f"{config.codebook_size}; pass the MAGVIT the model was trained with")
    located = resolve_folder(vq_source, "MAGVIT tokenizer") if not Path(vq_source).is_dir() else Path(vq_source)
    return UnifiedBundle(unified, vq, text, str(model or DEFAULT_MODEL), str(located.resolve()))


def write_checkpoint_metadata(bundle: UnifiedBundle, folder: str | Path) -> None:
    """Make a training checkpoint folder (weights saved by accelerate as model.safetensors) loadable by
    `load_bundle`: the model's config.json pointing at its MAGVIT, and the tokenizer files."""
    from canvaslab.core.image import atomic_write_bytes

    folder = Path(folder)
    config = {**bundle.config.to_json_dict(), "vq_model_path": bundle.magvit_source}
    atomic_write_bytes(folder / "config.json", json.dumps(config, indent=2).encode())
    bundle.tokenizer.save_pretrained(str(folder))


def _magvit_source(folder: Path, magvit: str | Path | None) -> str | Path:
    if magvit is not None:
        return magvit
    if (folder / MAGVIT_SUBFOLDER / "config.json").is_file():
        return folder / MAGVIT_SUBFOLDER
    recorded = json.loads((folder / "config.json").read_text()).get("vq_model_path")
    return recorded or DEFAULT_MAGVIT


def load_text_tokenizer(folder: Path, config: UnifiedConfig, tokenizer: str | Path | None = None) -> Any:
    from transformers import AutoTokenizer

    candidates: list[str] = []
    if tokenizer is not None:
        candidates.append(str(tokenizer))
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        candidates.append(str(folder))
    candidates.append(config.llm_model_path)
    for candidate in candidates:
        try:
            loaded = AutoTokenizer.from_pretrained(candidate, local_files_only=True, padding_side="left")
        except (OSError, ValueError, KeyError):
            if tokenizer is not None and candidate == str(tokenizer):
                raise ModelNotAvailableError(f"text tokenizer {tokenizer} could not be loaded: pass a folder with "
                                             "tokenizer.json (or vocab.json + merges.txt)") from None
            continue
        if len(loaded) <= 2:  # transformers 5 returns a stub instead of raising for some missing hub ids
            continue
        if len(loaded) > config.llm_vocab_size:
            raise InputError(f"text tokenizer {candidate} has {len(loaded)} tokens but the model's text vocabulary "
                             f"is {config.llm_vocab_size}; pass the tokenizer the model was trained with")
        return loaded
    raise ModelNotAvailableError(
        f"no text tokenizer for the unified model: {config.llm_model_path!r} is neither a local folder nor in the "
        "Hugging Face cache; pass --opt tokenizer=FOLDER or download it first (huggingface-cli download "
        f"{config.llm_model_path})"
    )


def save_bundle(bundle: UnifiedBundle, folder: str | Path, *, safe_serialization: bool = True) -> Path:
    """A self-contained folder: the model (released layout), tokenizer files and `magvit/`."""
    folder = Path(folder)
    save_unified_model(bundle.model, folder, safe_serialization=safe_serialization)
    bundle.tokenizer.save_pretrained(str(folder))
    target = folder / MAGVIT_SUBFOLDER
    if target.exists():
        shutil.rmtree(target)
    save_magvit(bundle.magvit, target, safe_serialization=safe_serialization)
    return folder
