"""Big-LaMa: the Fast Fourier Convolution ResNet generator of "Resolution-robust Large Mask Inpainting
with Fourier Convolutions" (Suvorov et al., WACV 2022), written from the paper and the description in
advimman/lama (saicinpainting/training/modules/ffc.py, configs/training/big-lama.yaml).

Input convention (the training module's, `concat_mask: true`): 4 channels, the RGB image in [0, 1] with
the hole zeroed, then the mask (1 = hole); output RGB in [0, 1] (a sigmoid), at the input's size, which
must be a multiple of 2 ** n_downsampling (8 for big-LaMa). Module and parameter names follow the
released checkpoints (`generator.model.<i>....`) so `best.ckpt` loads as it is.

An FFC layer keeps two streams: local channels (ordinary 3x3 convolutions) and global channels, whose
`SpectralTransform` convolves in the Fourier domain, so one layer sees the whole image: that is what lets
LaMa continue periodic structure (fences, tiles, windows) across large holes. The encoder is local only;
the last downsampling splits its output 1/4 local, 3/4 global (`ratio_g`) for the residual blocks, and
the decoder concatenates the streams again (local first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class FFCSpec:
    """How one group of FFC layers splits its channels (a section of the reference's generator config)."""

    ratio_gin: float = 0.0  # share of the input channels that are global
    ratio_gout: float = 0.0  # share of the output channels that are global
    enable_lfu: bool = False  # the local Fourier unit: a second spectral path on quarter tiles (off in big-LaMa)


@dataclass(frozen=True)
class LamaConfig:
    """The generator section of a LaMa `config.yaml`; the defaults are big-LaMa's."""

    input_nc: int = 4  # RGB with the hole zeroed + the mask
    output_nc: int = 3
    ngf: int = 64  # width of the first layer; doubles at each downsampling up to max_features
    n_downsampling: int = 3  # so sides must be multiples of 8
    n_blocks: int = 18  # FFC residual blocks at 1/8 scale (9 in lama-fourier)
    max_features: int = 1024
    out_act: str = "sigmoid"  # sigmoid | tanh | none (the reference's add_out_act)
    init: FFCSpec = field(default_factory=FFCSpec)
    down: FFCSpec = field(default_factory=FFCSpec)
    resnet: FFCSpec = field(default_factory=lambda: FFCSpec(0.75, 0.75))

    @property
    def multiple(self) -> int:
        return 2**self.n_downsampling


class FourierUnit(nn.Module):
    """A 1x1 convolution + BN + ReLU on the real and imaginary parts of the 2-D real FFT ("ortho")."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_layer = nn.Conv2d(in_channels * 2, out_channels * 2, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels * 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        spectrum = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")  # (b, c, h, w/2+1) complex
        # channels interleaved as (c0.re, c0.im, c1.re, ...): the order the released weights expect
        stacked = torch.stack((spectrum.real, spectrum.imag), dim=2).reshape(batch, -1, height, spectrum.shape[-1])
        stacked = self.relu(self.bn(self.conv_layer(stacked)))
        pairs = stacked.reshape(batch, -1, 2, height, stacked.shape[-1])
        return torch.fft.irfftn(torch.complex(pairs[:, :, 0], pairs[:, :, 1]), s=(height, width), dim=(-2, -1), norm="ortho")


class SpectralTransform(nn.Module):
    """The global-to-global path: 1x1 reduce, Fourier unit (+ optional local Fourier unit), residual, 1x1 expand."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, enable_lfu: bool = False) -> None:
        super().__init__()
        self.enable_lfu = enable_lfu
        self.downsample = nn.AvgPool2d(kernel_size=2, stride=2) if stride == 2 else nn.Identity()
        half = out_channels // 2
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, half, kernel_size=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        self.fu = FourierUnit(half, half)
        if enable_lfu:
            self.lfu = FourierUnit(half, half)
        self.conv2 = nn.Conv2d(half, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.downsample(x))
        out = x + self.fu(x)
        if self.enable_lfu:
            # a quarter of the channels, cut into 2x2 tiles stacked on channels, transformed, tiled back
            channels, height, width = x.shape[1:]
            tiles = torch.cat(torch.split(x[:, : channels // 4], height // 2, dim=-2), dim=1)
            tiles = torch.cat(torch.split(tiles, width // 2, dim=-1), dim=1)
            out = out + self.lfu(tiles).repeat(1, 1, 2, 2)
        return self.conv2(out)


class FFC(nn.Module):
    """One Fast Fourier Convolution: local->local, local->global, global->local convolutions (reflect padding,
    no bias) and the spectral global->global path. Streams that are absent are None."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, spec: FFCSpec, *, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        in_g = int(in_channels * spec.ratio_gin)
        out_g = int(out_channels * spec.ratio_gout)
        in_l, out_l = in_channels - in_g, out_channels - out_g
        self.out_local, self.out_global = out_l > 0, out_g > 0

        def conv(cin: int, cout: int) -> nn.Module:
            if cin == 0 or cout == 0:
                return nn.Identity()
            return nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False, padding_mode="reflect")

        self.convl2l = conv(in_l, out_l)
        self.convl2g = conv(in_l, out_g)
        self.convg2l = conv(in_g, out_l)
        self.convg2g = SpectralTransform(in_g, out_g, stride, spec.enable_lfu) if in_g and out_g else nn.Identity()
        self.has = {"l2l": in_l and out_l, "l2g": in_l and out_g, "g2l": in_g and out_l, "g2g": in_g and out_g}

    def forward(self, local: torch.Tensor | None, glob: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out_l = out_g = None
        if self.out_local:
            out_l = _add(self.convl2l(local) if self.has["l2l"] else None, self.convg2l(glob) if self.has["g2l"] else None)
        if self.out_global:
            out_g = _add(self.convl2g(local) if self.has["l2g"] else None, self.convg2g(glob) if self.has["g2g"] else None)
        return out_l, out_g


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


class FFC_BN_ACT(nn.Module):  # noqa: N801 - the released checkpoints' module name
    """FFC, then BatchNorm and ReLU on each stream that exists."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, spec: FFCSpec, *, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.ffc = FFC(in_channels, out_channels, kernel_size, spec, stride=stride, padding=padding)
        out_g = int(out_channels * spec.ratio_gout)
        self.bn_l = nn.BatchNorm2d(out_channels - out_g) if spec.ratio_gout != 1 else nn.Identity()
        self.bn_g = nn.BatchNorm2d(out_g) if spec.ratio_gout != 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, streams):  # type: ignore[no-untyped-def]
        if isinstance(streams, torch.Tensor):  # the first layer takes the plain input as its local stream
            streams = (streams, None)
        local, glob = self.ffc(*streams)
        return (None if local is None else self.act(self.bn_l(local)),
                None if glob is None else self.act(self.bn_g(glob)))


class FFCResnetBlock(nn.Module):
    """Two FFC_BN_ACT 3x3 layers (both with ReLU, unlike a classic ResNet) and a skip on each stream."""

    def __init__(self, dim: int, spec: FFCSpec) -> None:
        super().__init__()
        self.conv1 = FFC_BN_ACT(dim, dim, 3, spec, padding=1)
        self.conv2 = FFC_BN_ACT(dim, dim, 3, spec, padding=1)

    def forward(self, streams: tuple[torch.Tensor | None, torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        local, glob = self.conv2(self.conv1(streams))
        return _add(streams[0], local), _add(streams[1], glob)


class _ConcatStreams(nn.Module):
    """The end of the two-stream part: (local, global) concatenated on channels, local first."""

    def forward(self, streams):  # type: ignore[no-untyped-def]
        return torch.cat([t for t in streams if t is not None], dim=1)


class LamaGenerator(nn.Module):
    """`model` is one Sequential whose indices match the reference's, so checkpoint keys map one to one:
    0 pad, 1 first FFC, downsamplings, residual blocks, the stream concatenation, (transposed conv, BN,
    ReLU) per upsampling, pad, last conv, activation."""

    def __init__(self, config: LamaConfig = LamaConfig()) -> None:
        super().__init__()
        self.config = config
        c = config
        width = lambda mult: min(c.max_features, int(c.ngf * mult))  # noqa: E731
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), FFC_BN_ACT(c.input_nc, c.ngf, 7, c.init)]
        for i in range(c.n_downsampling):
            spec = c.down if i < c.n_downsampling - 1 else FFCSpec(c.down.ratio_gin, c.resnet.ratio_gin, c.down.enable_lfu)
            layers.append(FFC_BN_ACT(width(2**i), width(2 ** (i + 1)), 3, spec, stride=2, padding=1))
        bottleneck = width(2**c.n_downsampling)
        layers += [FFCResnetBlock(bottleneck, c.resnet) for _ in range(c.n_blocks)]
        layers.append(_ConcatStreams())
        for i in range(c.n_downsampling):
            mult = 2 ** (c.n_downsampling - i)
            layers += [
                nn.ConvTranspose2d(width(mult), width(mult / 2), kernel_size=3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(width(mult / 2)),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c.ngf, c.output_nc, kernel_size=7)]
        activation = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}.get(c.out_act)
        if activation is not None:
            layers.append(activation())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, input_nc, h, w) -> (b, output_nc, h, w); h and w multiples of `config.multiple`."""
        # Channels-last memory: PyTorch's CPU convolutions run ~15-20 % faster on it at 512 px (the layout
        # carries through the layers, FFTs included); the result comes back in the usual layout. The plain
        # .contiguous() first: a tensor with a batch stride of 0 (a numpy image through [None]) passes as
        # channels-last without being laid out as such.
        return self.model(x.contiguous().contiguous(memory_format=torch.channels_last)).contiguous()


def inpaint_tensor(generator: LamaGenerator, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """The training module's prediction: image (b, 3, h, w) in [0, 1], hole (b, 1, h, w) in {0, 1} ->
    the generator's RGB with the known pixels put back (the reference's `inpainted`)."""
    x = image * (1 - hole)
    if generator.config.input_nc == 4:
        x = torch.cat([x, hole], dim=1)
    predicted = generator(x)
    return hole * predicted + (1 - hole) * image
