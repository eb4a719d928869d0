"""Show-o's token id layout and the conversions between image codes and token ids.

One vocabulary holds everything, in this order (numbers for the released 256 px model):

    [0, llm_vocab_size)                      text tokens of the Phi-1.5 tokenizer (0 .. 50294)
    llm_vocab_size + 0 .. + 9                [PAD] <|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>
                                             (50295 .. 50304; added to the tokenizer in this order)
    image_offset .. + codebook_size - 1      the MAGVIT codes 0 .. 8191 (50305 .. 58496),
                                             image_offset = llm_vocab_size + num_new_special_tokens
    vocab_size - 1                           the mask token (58497)

<|sot|> and <|eot|> are not new tokens: they are the text tokenizer's bos and eos (both 50256,
<|endoftext|>, for Phi-1.5).

In code grids (what MAGVIT produces and consumes) an unknown position is `MASKED` (-1); in token ids
it is `mask_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from canvaslab.engines.unified.config import SPECIAL_TOKENS, UnifiedConfig
from canvaslab.errors import InputError

MASKED = -1  # an unknown position in a code grid


@dataclass(frozen=True)
class TokenLayout:
    """Where every kind of token lives in the unified vocabulary (see the module docstring)."""

    llm_vocab_size: int
    num_new_special_tokens: int
    codebook_size: int
    sot_id: int
    eot_id: int

    @classmethod
    def from_config(cls, config: UnifiedConfig) -> TokenLayout:
        return cls(
            llm_vocab_size=config.llm_vocab_size,
            num_new_special_tokens=config.num_new_special_tokens,
            codebook_size=config.codebook_size,
            sot_id=config.text_bos_id,
            eot_id=config.text_eos_id,
        )

    def special_id(self, token: str) -> int:
        """The id of one of Show-o's added tokens, e.g. `special_id("<|soi|>")`."""
        if token not in SPECIAL_TOKENS:
            raise InputError(f"unknown special token {token!r}: choose one of {', '.join(SPECIAL_TOKENS)}")
        return self.llm_vocab_size + SPECIAL_TOKENS.index(token)

    @property
    def pad_id(self) -> int:
        return self.special_id("[PAD]")

    @property
    def soi_id(self) -> int:
        return self.special_id("<|soi|>")

    @property
    def eoi_id(self) -> int:
        return self.special_id("<|eoi|>")

    @property
    def t2i_id(self) -> int:
        return self.special_id("<|t2i|>")

    @property
    def mmu_id(self) -> int:
        return self.special_id("<|mmu|>")

    @property
    def image_offset(self) -> int:
        return self.llm_vocab_size + self.num_new_special_tokens

    @property
    def mask_id(self) -> int:
        return self.image_offset + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.mask_id + 1

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes (any shape, `MASKED` for unknown) -> token ids (`mask_id` for unknown)."""
        codes = torch.as_tensor(codes)
        known = codes != MASKED
        if bool(((codes[known] < 0) | (codes[known] >= self.codebook_size)).any()):
            raise InputError(f"image codes must be in [0, {self.codebook_size}) or {MASKED} for a masked position")
        return torch.where(known, codes + self.image_offset, torch.full_like(codes, self.mask_id))

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids of image tokens (or `mask_id`) -> codes (`MASKED` where the id is the mask token)."""
        ids = torch.as_tensor(ids)
        masked = ids == self.mask_id
        if not bool(self.is_image_id(ids[~masked]).all()):
            raise InputError(f"ids outside the image range [{self.image_offset}, {self.mask_id}] cannot become codes")
        return torch.where(masked, torch.full_like(ids, MASKED), ids - self.image_offset)

    def is_image_id(self, ids: torch.Tensor) -> torch.Tensor:
        """True where an id is one of the image codes (not the mask token)."""
        return (ids >= self.image_offset) & (ids < self.mask_id)
