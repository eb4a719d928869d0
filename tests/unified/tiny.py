"""Tiny unified models and MAGVIT tokenizers with seeded random weights, built offline from configs."""

from __future__ import annotations

import torch

from canvaslab.engines.unified.config import MagvitConfig, UnifiedConfig, tiny_magvit_config, tiny_unified_config
from canvaslab.engines.unified.magvit import Magvit
from canvaslab.engines.unified.model import UnifiedModel


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter (LayerNorm weights and biases included) so no term can hide behind a 0 or 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module


def tiny_model(config: UnifiedConfig | None = None, *, seed: int = 0, attn_implementation: str = "sdpa") -> UnifiedModel:
    torch.manual_seed(seed)
    model = UnifiedModel(config or tiny_unified_config(), attn_implementation=attn_implementation)
    return randomize(model, seed + 1).eval()


def tiny_magvit(config: MagvitConfig | None = None, *, seed: int = 0) -> Magvit:
    torch.manual_seed(seed)
    return randomize(Magvit(config or tiny_magvit_config()), seed + 1, scale=0.02).eval()


# -- a tiny text tokenizer (characters), built offline -------------------------------------------

TINY_CHARS = " abcdefghijklmnopqrstuvwxyz0123456789.,?!'-:;()"


def save_tiny_tokenizer(folder):
    """A character-level tokenizer that fits the tiny config's 96-token text vocabulary (bos 1, eos 2),
    saved as tokenizer files and loadable with AutoTokenizer, offline."""
    from pathlib import Path

    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|bos|>": 1, "<|eos|>": 2, **{c: i + 3 for i, c in enumerate(TINY_CHARS)}}
    model = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    model.normalizer = normalizers.Lowercase()
    model.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    model.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>", bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|eos|>")
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder


def save_tiny_bundle(folder, *, seed: int = 0):
    """A self-contained tiny unified checkpoint: model, tokenizer files and magvit/ (what training writes)."""
    from pathlib import Path

    from canvaslab.engines.unified.loading import save_magvit, save_unified_model

    folder = Path(folder)
    save_unified_model(tiny_model(seed=seed), folder)
    save_tiny_tokenizer(folder)
    save_magvit(tiny_magvit(seed=seed), folder / "magvit")
    return folder


_shared_bundle = None


def shared_bundle_folder(tmp_path_factory):
    """One saved tiny bundle per test session, for the test modules that run tasks on it (the unified
    engine caches the loaded bundle by folder, so sharing the folder also shares the loaded model)."""
    global _shared_bundle
    if _shared_bundle is None:
        _shared_bundle = save_tiny_bundle(tmp_path_factory.getbasetemp() / "shared-tiny-bundle")
    return _shared_bundle


def save_chatty_bundle(folder):
    """A tiny bundle whose lm_head prefers text tokens (image codes and special tokens pushed down), so
    greedy answers are strings of the tiny vocabulary that depend on the image and the question; the
    plain random model mostly answers with image codes, which decode to empty text."""
    from pathlib import Path

    from canvaslab.engines.unified.loading import save_unified_model

    folder = save_tiny_bundle(Path(folder))
    model = tiny_model()
    with torch.no_grad():
        model.showo.lm_head.bias[model.config.llm_vocab_size :] -= 100.0
        model.showo.lm_head.weight.mul_(20.0)  # hidden states, not the bias, pick the token
    save_unified_model(model, folder)
    return folder


def save_clip_variant_bundle(folder):
    """A tiny bundle of Show-o's CLIP-ViT variant (`w_clip_vit`, with `mm_projector.*`)."""
    from pathlib import Path

    from canvaslab.engines.unified.config import tiny_unified_config
    from canvaslab.engines.unified.loading import save_magvit, save_unified_model

    folder = Path(folder)
    save_unified_model(tiny_model(tiny_unified_config(w_clip_vit=True)), folder)
    save_tiny_tokenizer(folder)
    save_magvit(tiny_magvit(), folder / "magvit")
    return folder
