"""MAGVIT-v2 image tokenizer: convolutional encoder/decoder with lookup-free quantization (LFQ).

Encoder (x16 for 5 levels): conv_in, per level `num_res_blocks` ResNet blocks (+ attention at the
listed resolutions) and a stride-2 downsample except after the last level, a middle ResNet-attention-
ResNet, GroupNorm + swish + conv_out to `codebook_bits` channels, then a 1x1 `quant_conv`.

LFQ: every latent channel is one bit, `z > 0` -> 1; the code is the bits read most significant first
(channel 0 is bit 12 of a 13-bit code). Decoding looks the code up in the fixed `embedding` table of
+-1 vectors. No learned codebook, so 13 channels give 8192 codes.

Decoder: 1x1 `post_quant_conv`, conv_in, middle, per level (coarsest first) ResNet blocks and a
nearest x2 upsample + conv, GroupNorm + swish + conv_out. Any grid decodes, square or not.

Parameter and buffer names follow the released checkpoint (`encoder.*`, `decoder.*`, `quantize.*`,
including the `quantize.embedding` / `quantize.power_vals` buffers), so its state dict loads strictly.
Pixels are in [-1, 1], NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from canvaslab.engines.unified.config import MagvitConfig
from canvaslab.errors import InputError


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 `nin_shortcut` when the width changes (no time embedding)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, 1x1 convs for q/k/v/out, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (layer(normed).reshape(b, 1, c, h * w).transpose(2, 3) for layer in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale c ** -0.5, as the reference
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom (taming-transformers' asymmetric pad)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[ResnetBlock], attns: list[AttnBlock], resample: nn.Module | None, name: str) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    if resample is not None:
        setattr(level, name, resample)
    return level


def _middle(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_middle(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):  # one attention after each block at attention levels
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """Pixels (B, 3, H, W) -> latents (B, codebook_bits, H/16, W/16)."""

    def __init__(self, config: MagvitConfig) -> None:
        super().__init__()
        ch, mults = config.ch, config.encoder_ch_mult
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in, resolution = ch, config.resolution
        for i, (mult, count) in enumerate(zip(mults, config.encoder_num_res_blocks)):
            blocks, attns = [], []
            for _ in range(count):
                blocks.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
                if resolution in config.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            last = i == len(mults) - 1
            self.down.append(_level(blocks, attns, None if last else Downsample(block_in), "downsample"))
            resolution = resolution if last else resolution // 2
        self.mid = _middle(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.codebook_bits, 3, padding=1)
        self.quant_conv = nn.Conv2d(config.codebook_bits, config.codebook_bits, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_middle(self.mid, h)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    """Quantized latents (B, codebook_bits, h, w) -> pixels (B, 3, 16h, 16w)."""

    def __init__(self, config: MagvitConfig) -> None:
        super().__init__()
        ch, mults = config.ch, config.decoder_ch_mult
        block_in = ch * mults[-1]
        resolution = config.resolution // 2 ** (len(mults) - 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_bits, config.codebook_bits, 1)
        self.conv_in = nn.Conv2d(config.codebook_bits, block_in, 3, padding=1)
        self.mid = _middle(block_in)
        levels: list[nn.Module] = []
        for i in reversed(range(len(mults))):
            blocks, attns = [], []
            for _ in range(config.decoder_num_res_blocks[i]):
                blocks.append(ResnetBlock(block_in, ch * mults[i]))
                block_in = ch * mults[i]
                if resolution in config.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            levels.insert(0, _level(blocks, attns, Upsample(block_in) if i != 0 else None, "upsample"))
            resolution = resolution * 2 if i != 0 else resolution
        self.up = nn.ModuleList(levels)  # index = level, finest first, as in the checkpoint
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_middle(self.mid, self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LookupFreeQuantizer(nn.Module):
    """Sign quantization of each latent channel; codes <-> +-1 vectors, most significant bit first."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        power_vals = 2 ** torch.arange(bits - 1, -1, -1)
        codes = torch.arange(2**bits)
        self.register_buffer("embedding", ((codes[:, None] // power_vals) % 2).float() * 2 - 1)  # (2**bits, bits)
        self.register_buffer("power_vals", power_vals)

    @property
    def codebook_size(self) -> int:
        return 2**self.bits

    def codes(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, bits, h, w) -> codes (B, h, w) in [0, 2**bits)."""
        bits = (latents > 0).long()
        return (bits * self.power_vals[None, :, None, None]).sum(dim=1)

    def latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> quantized latents (B, bits, h, w) of +-1."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InputError(f"image codes must be in [0, {self.codebook_size}); got {int(codes.min())}..{int(codes.max())}")
        return self.embedding[codes].permute(0, 3, 1, 2).contiguous()


class Magvit(nn.Module):
    """The tokenizer: `encode` pixels to a code grid, `decode` a code grid (any h x w) to pixels."""

    def __init__(self, config: MagvitConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = LookupFreeQuantizer(config.codebook_bits)

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1], H and W multiples of 16 -> codes (B, H/16, W/16)."""
        if pixels.ndim != 4 or pixels.shape[1] != self.config.in_channels:
            raise InputError(f"pixels must be (batch, {self.config.in_channels}, height, width); got {tuple(pixels.shape)}")
        height, width = pixels.shape[-2:]
        if height % self.downsample or width % self.downsample:
            raise InputError(f"image size {width}x{height} must be a multiple of {self.downsample} on both sides")
        weight = self.encoder.conv_in.weight
        return self.quantize.codes(self.encoder(pixels.to(device=weight.device, dtype=weight.dtype)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> pixels (B, 3, 16h, 16w), roughly in [-1, 1] (not clamped)."""
        if codes.ndim != 3:
            raise InputError(f"codes must be a (batch, rows, columns) grid; got shape {tuple(codes.shape)}")
        latents = self.quantize.latents(codes.to(self.quantize.embedding.device))
        return self.decoder(latents.to(self.decoder.conv_in.weight.dtype))
