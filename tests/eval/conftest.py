"""Tiny, randomly initialised metric networks saved in the real files' layouts, once per session.

Every learned metric loads them through the code path the real weights take: a weights folder holding
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, torchvision's `alexnet-owt-7be5be79.pth` and
`vgg16-397923af.pth` (classifier included, as in the real files), the lpips package's `alex.pth` /
`vgg.pth` heads, and a transformers CLIP folder (config, safetensors, tokenizer, preprocessor).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALEX_CHANNELS = [6, 8, 10, 8, 8]
VGG_CHANNELS = [4, 4, 6, 6, 8, 8, 8, 10, 10, 10, 10, 10, 10]
INCEPTION_DIVISOR = 16


def _torchvision_like(state: dict, classifier_in: int, seed: int) -> dict:
    """A backbone's features plus a (small) classifier, as torchvision's files also hold one."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    out["classifier.1.weight"] = torch.randn(16, classifier_in, generator=generator)
    out["classifier.1.bias"] = torch.zeros(16)
    return out


def _heads(channels: list[int], seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for k, c in enumerate(channels)}


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    from canvaslab.eval.metrics.inception import WEIGHTS_FILE, FIDInceptionV3
    from canvaslab.eval.metrics.lpips import LPIPS

    folder = tmp_path_factory.mktemp("eval-weights")
    torch.manual_seed(0)
    inception = FIDInceptionV3(INCEPTION_DIVISOR)
    for module in inception.modules():  # random BatchNorm statistics, so eval-mode BN is not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(inception.state_dict(), folder / WEIGHTS_FILE)
    alex = LPIPS("alex", ALEX_CHANNELS)
    torch.save(_torchvision_like(alex.net.state_dict(), 8, 1), folder / "alexnet-owt-7be5be79.pth")
    torch.save(_heads(ALEX_CHANNELS, 2), folder / "alex.pth")
    vgg = LPIPS("vgg", VGG_CHANNELS)
    torch.save(_torchvision_like(vgg.net.state_dict(), 10, 3), folder / "vgg16-397923af.pth")
    torch.save(_heads([4, 6, 8, 10, 10], 4), folder / "vgg.pth")
    return folder


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from diffusion.tiny import write_tokenizer_files

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(write_tokenizer_files(folder / "vocab"), model_max_length=77)
    assert len(tokenizer) > 2
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """Three real photos (the shipped examples), small, in a folder."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("coffee.png", "chelsea.png", "rocket.jpg"):
        image = Image.open(EXAMPLES / name).convert("RGB")
        image.thumbnail((192, 192))
        image.save(folder / f"{Path(name).stem}.png")
    return folder


def rgb(seed: int, shape=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
