"""The unified transformer: Show-o's Phi-1.5 decoder (qk-LayerNorm, partial rotary, lm_head with bias).

Each layer is Phi's parallel block, `x + attn(ln(x)) + mlp(ln(x))`, with one LayerNorm per layer,
rotary embeddings on the first `partial_rotary_factor` of every head, gelu_new in the MLP, and (Show-o's
change) a LayerNorm on every query and key head before the rotary embedding. The lm_head has a bias
and is not tied to the embeddings; both cover the whole unified vocabulary (text, special tokens,
image codes, mask token).

We use transformers' `PhiForCausalLM`, because `PhiConfig` has `qk_layernorm` and
`partial_rotary_factor` and, in transformers 5.x, a caller-built 4-D mask is used as is: the model's
`create_causal_mask` returns any 4-D mask unchanged (`masking_utils._preprocess_mask_arguments`), the
eager path adds it to the scores and the sdpa path passes it as `attn_mask` with `is_causal=False`
(checked in 5.23; `tests/unified/test_model.py` asserts it against an independent forward). The
parameter names are therefore the released ones: `showo.model.*`, `showo.lm_head.*`, `mm_projector.*`.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PhiConfig, PhiForCausalLM
from transformers.cache_utils import DynamicCache

from canvaslab.engines.unified.attention import additive_mask
from canvaslab.engines.unified.config import UnifiedConfig
from canvaslab.engines.unified.tokens import TokenLayout
from canvaslab.errors import InputError

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
# transformers 5.24 renamed the forward argument `past_key_values` to `cache` (the old name warns and goes
# away in 5.40); earlier versions only know `past_key_values`. Ask the installed one.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(PhiForCausalLM.forward).parameters else "past_key_values"


def phi_config(config: UnifiedConfig, attn_implementation: str = "sdpa") -> PhiConfig:
    """transformers' PhiConfig for the backbone, built offline from the Show-o config."""
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise InputError(f"attn_implementation {attn_implementation!r}: choose one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    llm = config.llm
    return PhiConfig(
        vocab_size=config.vocab_size,  # Show-o resizes Phi's 51200 embeddings to the unified vocabulary
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_attention_heads,
        hidden_act=llm.hidden_act,
        max_position_embeddings=llm.max_position_embeddings,
        layer_norm_eps=llm.layer_norm_eps,
        partial_rotary_factor=llm.partial_rotary_factor,
        rope_theta=llm.rope_theta,
        qk_layernorm=True,  # Show-o's PhiForCausalLM forces it on
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation=attn_implementation,
    )


class UnifiedModel(nn.Module):
    """Backbone + lm_head (`showo`), and the CLIP feature projector (`mm_projector`) when `w_clip_vit`."""

    def __init__(self, config: UnifiedConfig, *, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.layout = TokenLayout.from_config(config)
        self.showo = PhiForCausalLM(phi_config(config, attn_implementation))
        if config.w_clip_vit:
            hidden = config.llm.hidden_size
            self.mm_projector = nn.Sequential(nn.Linear(config.mm_projector_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    @property
    def dtype(self) -> torch.dtype:
        return self.showo.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.showo.lm_head.weight.device

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, hidden), e.g. to splice projected CLIP features in."""
        return self.showo.model.embed_tokens(input_ids)

    def new_cache(self) -> DynamicCache:
        """An empty key/value cache; pass it to every `forward` of one decoding run (it grows in place)."""
        return DynamicCache(config=self.showo.config)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits (B, Q, vocab) in fp32, like the reference.

        `attention_mask` is the additive (B, 1, Q, K) mask from `attention.py` (K = cached + new keys),
        used as is; a boolean mask (True = may attend) is converted, None means plain causal.
        `position_ids` default to 0.. after what the cache holds. `logits_to_keep=n` computes the
        head for the last n positions only (MaskGIT needs the image span, decoding the last token).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("give exactly one of input_ids and inputs_embeds")
        batch, queries = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        mask = self._prepare_mask(attention_mask, batch, queries, past)
        output = self.showo(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
            **({CACHE_ARGUMENT: cache} if cache is not None else {}),
        )
        return output.logits.float()

    def _prepare_mask(self, mask: torch.Tensor | None, batch: int, queries: int, past: int) -> torch.Tensor:
        keys = past + queries
        if mask is None:
            allowed = torch.ones(queries, keys, dtype=torch.bool, device=self.device).tril(diagonal=past)
            return additive_mask(allowed.expand(batch, 1, queries, keys), self.dtype)
        if tuple(mask.shape) != (batch, 1, queries, keys):
            expected = (batch, 1, queries, keys)
            raise InputError(f"attention_mask has shape {tuple(mask.shape)}; expected (batch, 1, queries, keys) = {expected}")
        if mask.dtype == torch.bool:
            return additive_mask(mask, self.dtype)
        if mask.dtype != self.dtype:
            # clamp: the fp32 minimum becomes -inf in fp16, and a row of -inf turns into NaN
            return mask.to(self.dtype).clamp(min=torch.finfo(self.dtype).min)
        return mask
