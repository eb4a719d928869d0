"""Tiny random-weight LaMa and MI-GAN files in every layout the engines load, built offline.

Each network is seeded and has non-trivial BatchNorm statistics and noise strengths (so every path of
the forward pass shows in the output), then is saved the way the real files were made: LaMa as its
training checkpoint (`models/best.ckpt` with `generator.*` tensors among others, `config.yaml` with
OmegaConf references, as advimman/lama ships it) and as IOPaint's TorchScript trace of
forward(image, mask); MI-GAN as its released state dict, a TorchScript trace and ONNX exports (the
generator, and a pipeline with MI-GAN's image/mask uint8 interface).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from canvaslab.engines.learned.lama import LamaConfig, LamaGenerator, inpaint_tensor
from canvaslab.engines.learned.migan import MiganConfig, MiganGenerator, channels_for

LAMA_CONFIG = LamaConfig(ngf=4, n_downsampling=3, n_blocks=1)  # 32 bottleneck channels: 8 local, 24 global
MIGAN_RESOLUTION = 64
MIGAN_CONFIG = MiganConfig(MIGAN_RESOLUTION, tuple(channels_for(MIGAN_RESOLUTION, ch_base=256, ch_max=16).items()))


def randomise(module: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Seeded random weights, BatchNorm statistics away from (0, 1), MI-GAN's FIR filters left as they are."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.dtype.is_floating_point or "filter" in name:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("noise_const"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return module.eval()


def lama_generator(seed: int = 0, config: LamaConfig = LAMA_CONFIG) -> LamaGenerator:
    return randomise(LamaGenerator(config), seed)  # type: ignore[return-value]


def migan_generator(seed: int = 0) -> MiganGenerator:
    return randomise(MiganGenerator(MIGAN_CONFIG), seed, scale=0.12)  # type: ignore[return-value]


def lama_config_yaml(config: LamaConfig) -> dict:
    """The generator and training_model sections as LaMa's configs write them (references unresolved)."""
    return {
        "run_title": "",
        "training_model": {"kind": "default", "concat_mask": True, "store_discr_outputs_for_vis": True},
        "losses": {"resnet_pl": {"weight": 30, "weights_path": "${env:TORCH_HOME}"}},
        "generator": {
            "kind": "ffc_resnet", "input_nc": config.input_nc, "output_nc": config.output_nc, "ngf": config.ngf,
            "n_downsampling": config.n_downsampling, "n_blocks": config.n_blocks, "add_out_act": "sigmoid",
            "init_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
            "downsample_conv_kwargs": {"ratio_gin": "${generator.init_conv_kwargs.ratio_gout}",
                                       "ratio_gout": "${generator.downsample_conv_kwargs.ratio_gin}", "enable_lfu": False},
            "resnet_conv_kwargs": {"ratio_gin": config.resnet.ratio_gin,
                                   "ratio_gout": "${generator.resnet_conv_kwargs.ratio_gin}",
                                   "enable_lfu": config.resnet.enable_lfu},
        },
    }


def save_lama_release(folder: Path, generator: LamaGenerator, *, extra: dict | None = None) -> Path:
    """<folder>/config.yaml + <folder>/models/best.ckpt, a Lightning checkpoint as LaMa's release has."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(lama_config_yaml(generator.config), sort_keys=False))
    state = {f"generator.{k}": v.clone() for k, v in generator.state_dict().items()}
    state["discriminator.model0.0.weight"] = torch.ones(2, 3, 1, 1)  # other parts of the training module
    state["val_evaluator.scores.ssim.dummy"] = torch.zeros(1)
    checkpoint = {"epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.2.9", "state_dict": state, **(extra or {})}
    torch.save(checkpoint, folder / "models" / "best.ckpt")
    return folder


class _LamaJIT(nn.Module):
    """What IOPaint's big-lama.pt is: LaMa's JITWrapper, forward(image, mask) -> the inpainted image."""

    def __init__(self, generator: LamaGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return inpaint_tensor(self.generator, image, mask)


def save_lama_torchscript(path: Path, generator: LamaGenerator) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.rand(1, 3, 120, 120), (torch.rand(1, 1, 120, 120) > 0.5).float())  # LaMa's to_jit.py size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(_LamaJIT(generator), example, strict=False).save(str(path))
    return path


def save_migan_state_dict(path: Path, generator: MiganGenerator) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(generator.state_dict(), path)
    return path


def save_migan_torchscript(path: Path, generator: MiganGenerator) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = generator.config.resolution
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(generator, torch.ones(1, 4, size, size)).save(str(path))
    return path


def save_migan_onnx(path: Path, generator: MiganGenerator) -> Path:
    """The generator alone, as MI-GAN's export_inference_model.py exports it (input/output, opset 12)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = generator.config.resolution
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(generator, (torch.randn(1, 4, size, size),), str(path), dynamo=False,
                          input_names=["input"], output_names=["output"], opset_version=12)
    return path


class _MiganPipeline(nn.Module):
    """MI-GAN's pipeline interface (image uint8 (1,3,H,W), mask uint8 (1,1,H,W) with 255 = known -> uint8
    result): here simply the whole picture resized to the model's square, filled, resized back, blended."""

    def __init__(self, generator: MiganGenerator) -> None:
        super().__init__()
        self.generator = generator
        self.size = generator.config.resolution

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[2], image.shape[3]
        small = nn.functional.interpolate(image.float(), size=(self.size, self.size), mode="bilinear") * 2 / 255 - 1
        known = (nn.functional.interpolate(mask.float(), size=(self.size, self.size), mode="nearest") / 255)
        out = self.generator(torch.cat([known - 0.5, small * known], dim=1))
        out = nn.functional.interpolate((out * 0.5 + 0.5) * 255, size=(height, width), mode="bilinear").clamp(0, 255)
        keep = mask.float() / 255
        return (image.float() * keep + out * (1 - keep)).round().to(torch.uint8)


def save_migan_onnx_pipeline(path: Path, generator: MiganGenerator) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.full((1, 3, 80, 96), 128, dtype=torch.uint8)
    mask = torch.full((1, 1, 80, 96), 255, dtype=torch.uint8)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_MiganPipeline(generator), (image, mask), str(path), dynamo=False,
                          input_names=["image", "mask"], output_names=["result"], opset_version=17,
                          dynamic_axes={"image": axes, "mask": axes, "result": axes})
    return path


def build_torch(root: Path) -> dict[str, Path]:
    """The layouts torch alone writes, from one LaMa (seed 0) and one MI-GAN (seed 1)."""
    lama, migan = lama_generator(0), migan_generator(1)
    return {
        "lama-folder": save_lama_release(root / "big-lama", lama),
        "lama-torchscript": save_lama_torchscript(root / "iopaint" / "big-lama.pt", lama),
        "migan-state-dict": save_migan_state_dict(root / "migan" / "migan_64.pt", migan),
        "migan-torchscript": save_migan_torchscript(root / "iopaint" / "migan_traced.pt", migan),
    }


def build_onnx(root: Path) -> dict[str, Path]:
    """The ONNX layouts (torch.onnx.export needs the `onnx` package), from the same MI-GAN (seed 1)."""
    migan = migan_generator(1)
    return {
        "migan-onnx": save_migan_onnx(root / "migan" / "migan.onnx", migan),
        "migan-onnx-pipeline": save_migan_onnx_pipeline(root / "migan" / "migan_pipeline_v2.onnx", migan),
    }


_BUILT: dict[str, Path] = {}
_BUILT_ONNX: dict[str, Path] = {}
NO_ONNX = "writing the ONNX layouts needs onnx: pip install 'canvaslab[onnx]'"
# running them needs onnxruntime; a test that runs an ONNX file wears this mark
needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="running the ONNX layouts needs onnxruntime: pip install 'canvaslab[onnx]'")


@pytest.fixture(scope="session")
def learned_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> a tiny LaMa / MI-GAN file in a layout torch writes, built once per test process. Test modules
    import this fixture (a conftest.py here would shadow the suite's own `conftest` module), which makes it
    one fixture per module for pytest, hence the process-wide `_BUILT`. Nothing here needs onnx: tests of
    torch-only layouts run without it."""
    torch.set_num_threads(1)
    if not _BUILT:
        _BUILT.update(build_torch(tmp_path_factory.mktemp("learned")))
    return dict(_BUILT)


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> the ONNX exports of the same MI-GAN; a test using it is skipped, with the reason, when onnx
    is not installed."""
    pytest.importorskip("onnx", reason=NO_ONNX)
    torch.set_num_threads(1)
    if not _BUILT_ONNX:
        _BUILT_ONNX.update(build_onnx(tmp_path_factory.mktemp("learned-onnx")))
    return dict(_BUILT_ONNX)
