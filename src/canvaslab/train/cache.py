"""Encode once, train many times: latents and text embeddings cached when their encoders are frozen.

Latents: the VAE posterior of each target (mean and std, so every step still draws a fresh sample,
as without the cache) and, for editing, the conditioning images' modes. Only valid when an image
always gets the same pixels: centre crops, no flips (the config refuses the rest). Inpainting's
masked-image latents change with every random mask, so they are never cached: for inpainting the
cache saves the target's encoding only.

Text: one embedding per distinct caption (plus the empty one for dropout), kept in memory.

The cache folder holds one safetensors file per sample and a manifest naming what it was computed
from; a different model, resolution or dataset rebuilds it instead of training on stale latents.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from canvaslab.core.image import atomic_write_bytes


class LatentCache:
    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = identity

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:08d}.safetensors"

    def valid(self) -> bool:
        manifest = self.folder / "manifest.json"
        try:
            return json.loads(manifest.read_text()) == self.identity
        except (OSError, ValueError):
            return False

    def missing(self, indices: list[int]) -> list[int]:
        return [i for i in indices if not self._path(i).is_file()]

    def reset(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / "manifest.json", json.dumps(self.identity, sort_keys=True).encode())

    def store(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        data = save({name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()})
        atomic_write_bytes(self._path(index), data)

    def load(self, index: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self._path(index))


def cache_identity(config: Any, components: Any, keys: list[str]) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    return {
        "model": components.source_name,
        "objective": config.objective,
        "data": str(Path(config.data.path).resolve()),
        "samples": len(keys),
        "keys": digest,
        "resolution": config.data.resolution,
        "buckets": [config.data.buckets, config.data.bucket_step, config.data.max_ratio],
        "columns": dict(sorted(config.data.columns.items())),
    }


def encode_sample(components: Any, sample: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The cached tensors for one fitted sample (batch dimension dropped)."""
    vae = components.vae
    with torch.no_grad():
        dist = vae.encode(sample["pixels"][None].to(device, dtype)).latent_dist
        out = {"latent_mean": dist.mean[0].float(), "latent_std": dist.std[0].float()}
        if "inputs" in sample:
            out["input_latents"] = vae.encode(sample["inputs"].to(device, dtype)).latent_dist.mean.float()
    return out


class CachedSamples(torch.utils.data.Dataset):
    """TrainingSamples with the cached latents attached (and, for editing, no images decoded at all)."""

    def __init__(self, samples: Any, cache: LatentCache) -> None:
        self.samples, self.cache = samples, cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        sample = self.samples[item]
        sample.update(self.cache.load(item[1]))
        sample.pop("inputs", None)
        return sample


class TextCache:
    """caption -> (hidden states, pooled or None), computed once with the frozen encoder(s)."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def build(self, components: Any, captions: list[str], device: torch.device, batch: int = 32) -> None:
        from canvaslab.train.components import encode_text

        todo = sorted(set(captions) - set(self.table))
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            with torch.no_grad():
                hidden, pooled = encode_text(components, chunk, device)
            for i, caption in enumerate(chunk):
                self.table[caption] = (hidden[i].float().cpu(), None if pooled is None else pooled[i].float().cpu())

    def lookup(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = [self.table[c] for c in captions]
        hidden = torch.stack([r[0] for r in rows]).to(device)
        pooled = None if rows[0][1] is None else torch.stack([r[1] for r in rows]).to(device)
        return hidden, pooled
