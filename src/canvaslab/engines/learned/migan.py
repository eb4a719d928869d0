"""MI-GAN: the mobile inpainting generator of "MI-GAN: A Simple Baseline for Image Inpainting on Mobile
Devices" (Sargsyan et al., ICCV 2023), written from the paper and the description of its inference
generator in Picsart-AI-Research/MI-GAN (lib/model_zoo/migan_inference.py).

A U-Net-like encoder/synthesis pair of depthwise-separable convolutions, distilled from Co-Mod-GAN.
Input convention: 4 channels at exactly `resolution` x `resolution` (256 or 512 for the released
models): known - 0.5 (so +0.5 known, -0.5 hole), then the RGB image in [-1, 1] with the hole zeroed;
output RGB in [-1, 1]. The size is fixed because the synthesis layers add fixed per-pixel noise maps
(`noise_const`, part of the weights) and the upsampling inserts zeros through a stored pattern of the
layer's size. Module and parameter names follow the released `.pt` state dicts.

Activations are StyleGAN2's: leaky ReLU (slope 0.2) times sqrt(2), clamped to +-256. Resampling is
StyleGAN2's [1, 3, 3, 1] FIR filter, applied by depthwise 4x4 convolutions: stride 2 to downsample, and
after zero insertion (gain 4) to upsample.

Speed (CPU inference is what this model is for): the activation runs in place on the fresh tensor
each convolution returns, and the upsampling's zero insertion + filter is one depthwise transposed
convolution of stride 2 (the same sums without the zeros: a quarter of the multiplications, no
full-size intermediate). benchmarks/learned.py measures it; tests/engines/test_learned_parity.py
holds it to the reference equations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_GAIN = math.sqrt(2)
_CLAMP = 256.0


def _fir_filter(gain: float) -> torch.Tensor:
    """The normalised [1, 3, 3, 1] outer product times `gain`: (4, 4)."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum() * gain


def channels_for(resolution: int, ch_base: int = 32768, ch_max: int = 512) -> dict[int, int]:
    """Feature width at each scale 4, 8, ..., resolution: min(ch_base / scale, ch_max) as in the paper's
    StyleGAN2-style backbone (64 channels at 512 px, 512 from 64 px down)."""
    return {res: min(ch_base // res, ch_max) for res in _scales(resolution)}


def _scales(resolution: int) -> list[int]:
    log2 = int(math.log2(resolution))
    if 2**log2 != resolution or resolution < 8:
        raise ValueError(f"MI-GAN works at a power of two of at least 8 px, not {resolution}")
    return [2**i for i in range(2, log2 + 1)]


@dataclass(frozen=True)
class MiganConfig:
    resolution: int = 512
    channels: tuple[tuple[int, int], ...] = tuple(channels_for(512).items())  # (scale, width), 4 px first

    def width(self, scale: int) -> int:
        return dict(self.channels)[scale]


def lrelu_agc(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU with StyleGAN2's gain and clamp, in place: `x` must be a tensor nothing else holds (a
    layer's fresh output). Three passes over a 512 px, 64-channel map instead of three new maps."""
    return F.leaky_relu_(x, 0.2).mul_(_GAIN).clamp_(-_CLAMP, _CLAMP)


class Downsample2d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.filter = nn.Conv2d(channels, channels, kernel_size=4, stride=2, padding=1, groups=channels, bias=False)
        with torch.no_grad():
            self.filter.weight.copy_(_fir_filter(1.0).expand_as(self.filter.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.filter(x)


class Upsample2d(nn.Module):
    """x2: zero insertion (nearest copy times a [[1, 0], [0, 0]] pattern of the output size), then the FIR filter.

    Computed as a depthwise transposed convolution of stride 2 with the flipped filter, padding 1: output
    pixel p sums filter taps over the input pixels the inserted zeros would have put under it, which is
    the zero-insertion convolution exactly, at a quarter of its work. `filter_const` (the pattern) stays a
    buffer because the released state dicts carry it."""

    def __init__(self, channels: int, resolution: int) -> None:
        super().__init__()
        pattern = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).repeat(resolution // 2, resolution // 2)
        self.register_buffer("filter_const", pattern[None, None])
        self.filter = nn.Conv2d(channels, channels, kernel_size=4, groups=channels, bias=False)
        with torch.no_grad():
            self.filter.weight.copy_(_fir_filter(4.0).expand_as(self.filter.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.filter.weight.flip(2, 3)
        return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=x.shape[1])


class SeparableConv2d(nn.Module):
    """Depthwise kxk (+ bias, activation), optional downsampling, pointwise 1x1, optional upsampling,
    optional fixed noise, activation."""

    def __init__(self, in_channels: int, out_channels: int, *, resolution: int | None = None, use_noise: bool = False,
                 down: bool = False, up: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, groups=in_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.downsample = Downsample2d(in_channels) if down else None
        self.upsample = Upsample2d(out_channels, resolution) if up and resolution else None
        self.use_noise = use_noise
        if use_noise and resolution:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = lrelu_agc(self.conv1(x))
        if self.downsample is not None:
            x = self.downsample(x)
        x = self.conv2(x)
        if self.upsample is not None:
            x = self.upsample(x)
        if self.use_noise:
            x = x.add_(self.noise_const * self.noise_strength)
        return lrelu_agc(x)


class EncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, *, rgb_channels: int | None = None, down: bool = True) -> None:
        super().__init__()
        self.fromrgb = nn.Conv2d(rgb_channels, in_channels, kernel_size=1) if rgb_channels else None
        self.conv1 = SeparableConv2d(in_channels, in_channels)
        self.conv2 = SeparableConv2d(in_channels, out_channels, down=down)

    def forward(self, x: torch.Tensor | None, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fromrgb is not None:
            y = lrelu_agc(self.fromrgb(image))
            x = y if x is None else x + y
        feature = self.conv1(x)
        return self.conv2(feature), feature


class Encoder(nn.Module):
    """b<res> blocks from the input size down to 8 (each halving), then b4 (no downsampling); the output
    of each block's first convolution is kept as the skip feature of its scale."""

    def __init__(self, config: MiganConfig, in_channels: int = 4) -> None:
        super().__init__()
        scales = _scales(config.resolution)[::-1]  # resolution ... 8, 4
        self.scales = scales
        for index, (res, lower) in enumerate(zip(scales[:-1], scales[1:])):
            block = EncoderBlock(config.width(res), config.width(lower), rgb_channels=in_channels if index == 0 else None)
            setattr(self, f"b{res}", block)
        self.b4 = EncoderBlock(config.width(4), config.width(4), down=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        x = None
        features: dict[int, torch.Tensor] = {}
        for res in self.scales:
            x, features[res] = getattr(self, f"b{res}")(x, image)
        return x, features  # type: ignore[return-value]


class SynthesisBlockFirst(nn.Module):
    def __init__(self, channels: int, rgb_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = SeparableConv2d(channels, channels)
        self.conv2 = SeparableConv2d(channels, channels, resolution=4)
        self.torgb = nn.Conv2d(channels, rgb_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv2(self.conv1(x) + skip)
        return x, self.torgb(x)


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, resolution: int, rgb_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = SeparableConv2d(in_channels, out_channels, resolution=resolution, up=True, use_noise=True)
        self.conv2 = SeparableConv2d(out_channels, out_channels, resolution=resolution, use_noise=True)
        self.torgb = nn.Conv2d(out_channels, rgb_channels, kernel_size=1)
        self.upsample = Upsample2d(rgb_channels, resolution)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv2(self.conv1(x) + skip)
        return x, self.upsample(rgb) + self.torgb(x)


class Synthesis(nn.Module):
    def __init__(self, config: MiganConfig) -> None:
        super().__init__()
        self.scales = _scales(config.resolution)
        self.b4 = SynthesisBlockFirst(config.width(4))
        for lower, res in zip(self.scales[:-1], self.scales[1:]):
            setattr(self, f"b{res}", SynthesisBlock(config.width(lower), config.width(res), res))

    def forward(self, x: torch.Tensor, skips: dict[int, torch.Tensor]) -> torch.Tensor:
        x, rgb = self.b4(x, skips[4])
        for res in self.scales[1:]:
            x, rgb = getattr(self, f"b{res}")(x, skips[res], rgb)
        return rgb


class MiganGenerator(nn.Module):
    def __init__(self, config: MiganConfig = MiganConfig()) -> None:
        super().__init__()
        self.config = config
        self.synthesis = Synthesis(config)
        self.encoder = Encoder(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 4, r, r) [known - 0.5, image * known] -> (b, 3, r, r) RGB in about [-1, 1]."""
        # Channels-last memory: PyTorch's CPU depthwise and 1x1 convolutions run ~1.5-2.5x faster on it
        # (the layout then carries through every layer); the result comes back in the usual layout. The
        # plain .contiguous() first: a numpy image seen through a transpose and [None] has a batch stride of
        # 0, passes as channels-last, and made every convolution ~1.6x slower.
        bottom, skips = self.encoder(x.contiguous().contiguous(memory_format=torch.channels_last))
        return self.synthesis(bottom, skips).contiguous()


def config_from_state_dict(state: dict[str, torch.Tensor]) -> MiganConfig:
    """Resolution and widths of a released state dict, read from its tensor names and shapes."""
    scales = sorted(int(key.split(".")[1][1:]) for key in state if key.startswith("encoder.b") and key.endswith("conv1.conv1.weight"))
    if not scales or 4 not in scales:
        raise ValueError("no MI-GAN encoder weights (encoder.b<res>.conv1.conv1.weight)")
    widths = tuple((res, int(state[f"encoder.b{res}.conv1.conv1.weight"].shape[0])) for res in scales)
    return MiganConfig(resolution=max(scales), channels=widths)
