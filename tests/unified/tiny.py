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
