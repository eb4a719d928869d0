"""LPIPS (Zhang et al., 2018): distance between deep features, weighted by learned linear heads.

    d(x, y) = sum_l mean_hw( w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2 )

f_l are five ReLU outputs of an ImageNet backbone (AlexNet: relu1-relu5; VGG-16: relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3) on images scaled to -1..1 and then shifted and scaled per channel (the
`lpips` package's ScalingLayer: shift (-.030, -.088, -.188), scale (.458, .448, .450)); the norm is
over channels (plus 1e-10); w_l >= 0 are the 1x1 "lin" layers of LPIPS v0.1.

Both the backbone and the heads come from the files people already have: torchvision's
`alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth` (only `features.*` is used) and the `lpips`
package's `weights/v0.1/alex.pth` / `vgg.pth` (`lin<k>.model.1.weight`). The backbones are written
here in torchvision's layer order (so those keys load) and need no torchvision; channel counts are
read from the files, so the tiny networks the tests save load through the same function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from canvaslab.errors import ModelNotAvailableError
from canvaslab.eval.metrics.base import Metric, Sample, load_state_dict
from canvaslab.eval.metrics.weights import Weights

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

# net -> (torchvision file, lpips head file, conv layers as (index in `features`, kernel, stride, padding),
#         max-pool positions, indices of the ReLUs whose outputs LPIPS compares)
NETS: dict[str, dict[str, Any]] = {
    "alex": {
        "backbone": "alexnet-owt-7be5be79.pth",
        "head": "alex.pth",
        "convs": [(0, 11, 4, 2), (3, 5, 1, 2), (6, 3, 1, 1), (8, 3, 1, 1), (10, 3, 1, 1)],
        "pools": [2, 5],  # the pool after relu5 (index 12) comes after the last tap
        "taps": [1, 4, 7, 9, 11],
    },
    "vgg": {
        "backbone": "vgg16-397923af.pth",
        "head": "vgg.pth",
        "convs": [(i, 3, 1, 1) for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)],
        "pools": [4, 9, 16, 23],
        "taps": [3, 8, 15, 22, 29],
    },
}


class Backbone(nn.Module):
    """torchvision's `features` Sequential (same indices), cut after the last LPIPS tap."""

    def __init__(self, net: str, channels: list[int]) -> None:
        super().__init__()
        spec = NETS[net]
        convs = {index: (kernel, stride, padding) for index, kernel, stride, padding in spec["convs"]}
        layers: list[nn.Module] = []
        cin, k = 3, 0
        for index in range(spec["taps"][-1] + 1):
            if index in convs:
                kernel, stride, padding = convs[index]
                layers.append(nn.Conv2d(cin, channels[k], kernel, stride, padding))
                cin, k = channels[k], k + 1
            elif index in spec["pools"]:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2) if net == "alex" else nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.taps = spec["taps"]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outs.append(x)
        return outs


class LPIPS(nn.Module):
    def __init__(self, net: str, channels: list[int]) -> None:
        super().__init__()
        self.net = Backbone(net, channels)
        tap_channels = [self.net.features[i - 1].out_channels for i in self.net.taps]  # the conv before each ReLU
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in tap_channels)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features of images in -1..1."""
        feats = self.net((images - self.shift) / self.scale)
        return [f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS) for f in feats]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) distances between images in -1..1."""
        total = torch.zeros(x.shape[0], device=x.device)
        for lin, fx, fy in zip(self.lins, self.features(x), self.features(y)):
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total


def load_lpips(net: str, backbone: str | Path, head: str | Path) -> LPIPS:
    """LPIPS from a torchvision backbone file and an lpips head file (real or tiny: shapes decide)."""
    spec = NETS[net]
    state = load_state_dict(backbone, f"the LPIPS {net} backbone")
    try:
        channels = [state[f"features.{index}.weight"].shape[0] for index, *_ in spec["convs"]]
    except KeyError as missing:
        raise ModelNotAvailableError(f"{backbone} is not a torchvision {net} state dict (no {missing.args[0]})") from None
    model = LPIPS(net, channels)
    backbone_state = {k: v for k, v in state.items() if k.startswith("features.")}
    heads = load_state_dict(head, f"the LPIPS {net} linear heads")
    head_state = {}
    for k in range(len(spec["taps"])):
        key = f"lin{k}.model.1.weight"
        if key not in heads:
            raise ModelNotAvailableError(f"{head} is not an LPIPS v0.1 head file for {net} (no {key})")
        head_state[f"lins.{k}.weight"] = heads[key]
    try:
        model.net.load_state_dict(backbone_state, strict=True)
        model.lins.load_state_dict({k.removeprefix("lins."): v for k, v in head_state.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelNotAvailableError(f"{backbone} and {head} do not fit together as LPIPS {net}: {str(exc).splitlines()[-1].strip()}") from None
    return model.eval().requires_grad_(False)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> (1, 3, H, W) in -1..1."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


class LPIPSMetrics(Metric):
    """lpips (AlexNet, the usual one) and lpips-vgg, between each output and its reference (whole image)."""

    names: ClassVar[tuple[str, ...]] = ("lpips", "lpips-vgg")
    columns: ClassVar[dict[str, bool | None]] = {"lpips": False, "lpips_vgg": False}

    def __init__(self, wanted: list[str], weights: Weights) -> None:
        super().__init__(wanted, weights)
        self.models = {}
        for name in wanted:
            net = "vgg" if name == "lpips-vgg" else "alex"
            what = f"{name} needs the {'VGG-16' if net == 'vgg' else 'AlexNet'} backbone and the LPIPS heads"
            backbone = weights.find(NETS[net]["backbone"], what=what, source="torchvision's model zoo (download.pytorch.org/models)")
            head = weights.find(NETS[net]["head"], f"lpips/{NETS[net]['head']}", what=what,
                                source="the lpips package's weights/v0.1 folder (pip install lpips, or github.com/richzhang/PerceptualSimilarity)")
            self.models[name.replace("-", "_")] = load_lpips(net, backbone, head).to(weights.device)

    def score(self, samples: list[Sample]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        with torch.inference_mode():
            for sample in samples:
                row: dict[str, Any] = {}
                if sample.reference is not None:
                    x, y = to_tensor(sample.output).to(self.weights.device), to_tensor(sample.reference).to(self.weights.device)
                    for column, model in self.models.items():
                        row[column] = float(model(x, y)[0])
                rows.append(row)
        return rows
