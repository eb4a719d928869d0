"""The losses: inpainting (latents + mask + masked-image latents) and instruction editing
(latents + the latents of N conditioning images, InstructPix2Pix's 3-way conditioning dropout).

Both follow what the diffusers pipelines do at inference, so a trained model runs there unchanged:
- inpaint: masked image = image where the mask is 0, zero (mid-grey) where it is 1; its latents are
  sampled from the VAE and scaled like the target's; the mask is resized to the latent grid (nearest).
- edit: each conditioning image's latents are the VAE posterior's mode, unscaled; the UNet sees
  [noisy latents, image 1, ..., image N] along channels; dropped images are zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from canvaslab.train.components import Components, add_time_ids, encode_text
from canvaslab.train.config import TrainConfig


@dataclass
class StepInputs:
    """What one step needs besides the batch: where, in which dtype, and its random stream."""

    device: torch.device
    weight_dtype: torch.dtype
    generator: torch.Generator  # CPU generator seeded per (seed, step, process): exact resume


def _randn(shape: tuple[int, ...], inputs: StepInputs) -> torch.Tensor:
    return torch.randn(shape, generator=inputs.generator).to(inputs.device)


def _posterior(vae: Any, pixels: torch.Tensor, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        dist = vae.encode(pixels.to(inputs.device, inputs.weight_dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def _sample(mean: torch.Tensor, std: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
    return mean + std * _randn(tuple(mean.shape), inputs)


def target_latents(components: Components, batch: dict[str, Any], inputs: StepInputs) -> torch.Tensor:
    if "latent_mean" in batch:  # from the latent cache
        mean, std = batch["latent_mean"].to(inputs.device), batch["latent_std"].to(inputs.device)
    else:
        mean, std = _posterior(components.vae, batch["pixels"], inputs)
    return _sample(mean, std, inputs) * components.vae.config.scaling_factor


def condition_latents(components: Components, batch: dict[str, Any], inputs: StepInputs) -> torch.Tensor:
    """The extra UNet input channels for the objective (before any dropout)."""
    vae = components.vae
    if components.frames == 0:  # inpainting: mask + masked image latents
        pixels, mask = batch["pixels"].to(inputs.device), batch["mask"].to(inputs.device)
        masked = pixels * (mask < 0.5)
        mean, std = _posterior(vae, masked, inputs)
        masked_latents = _sample(mean, std, inputs) * vae.config.scaling_factor
        small_mask = F.interpolate(mask, size=masked_latents.shape[-2:])
        return torch.cat([small_mask, masked_latents], dim=1)
    if "input_latents" in batch:
        frames = batch["input_latents"].to(inputs.device)  # (B, N, 4, h, w), cached modes
    else:
        images = batch["inputs"]  # (B, N, 3, H, W)
        b, n = images.shape[:2]
        mean, _ = _posterior(vae, images.flatten(0, 1), inputs)
        frames = mean.unflatten(0, (b, n))
    return frames.flatten(1, 2)


def text_conditioning(
    components: Components, batch: dict[str, Any], inputs: StepInputs, text_cache: Any | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if text_cache is not None:
        return text_cache.lookup(batch["caption"], inputs.device)
    return encode_text(components, list(batch["caption"]), inputs.device)


def edit_dropout(
    hidden: torch.Tensor, pooled: torch.Tensor | None, conditioning: torch.Tensor, null: tuple[torch.Tensor, torch.Tensor | None],
    p: float, inputs: StepInputs,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """InstructPix2Pix's conditioning dropout, each with probability p per sample:
    u < p: text dropped; p <= u < 2p: text and images dropped; 2p <= u < 3p: images dropped."""
    u = torch.rand(hidden.shape[0], generator=inputs.generator).to(inputs.device)
    drop_text = u < 2 * p
    drop_image = (u >= p) & (u < 3 * p)
    null_hidden, null_pooled = null
    hidden = torch.where(drop_text[:, None, None], null_hidden.to(hidden.dtype).expand_as(hidden), hidden)
    if pooled is not None and null_pooled is not None:
        pooled = torch.where(drop_text[:, None], null_pooled.to(pooled.dtype).expand_as(pooled), pooled)
    conditioning = conditioning * (~drop_image).to(conditioning.dtype)[:, None, None, None]
    return hidden, pooled, conditioning


def snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas / (1 - alphas)


def diffusion_loss(
    components: Components, unet: Any, batch: dict[str, Any], config: TrainConfig, inputs: StepInputs,
    *, text_cache: Any | None = None, null_text: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """One batch's loss (mean over samples; min-SNR weighted when configured)."""
    scheduler = components.noise_scheduler
    latents = target_latents(components, batch, inputs)
    b = latents.shape[0]
    noise = _randn(tuple(latents.shape), inputs)
    if config.train.noise_offset:
        noise = noise + config.train.noise_offset * _randn((b, latents.shape[1], 1, 1), inputs)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=inputs.generator).to(inputs.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)

    conditioning = condition_latents(components, batch, inputs)
    hidden, pooled = text_conditioning(components, batch, inputs, text_cache)
    if components.frames and config.train.conditioning_dropout > 0:
        assert null_text is not None
        hidden, pooled, conditioning = edit_dropout(hidden, pooled, conditioning, null_text,
                                                    config.train.conditioning_dropout, inputs)
    model_input = torch.cat([noisy, conditioning], dim=1)
    extra: dict[str, Any] = {}
    if components.family == "sdxl":
        height, width = pixel_size(components, latents)
        time_ids = add_time_ids(batch["original_size"], batch["crop_top_left"], (width, height), hidden.dtype)
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.to(inputs.device)}

    if components.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(model_input, timesteps, hidden, **extra, return_dict=False)[0]
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if config.train.snr_gamma:
        ratio = snr(scheduler, timesteps)
        clipped = torch.clamp(ratio, max=config.train.snr_gamma)
        # Min-SNR-gamma (Hang et al. 2023): w = min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v.
        weights = clipped / (ratio + 1) if components.prediction_type == "v_prediction" else clipped / ratio
        per_sample = per_sample * weights
    return per_sample.mean()


def pixel_size(components: Components, latents: torch.Tensor) -> tuple[int, int]:
    """(height, width) in pixels of the batch's images."""
    factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    return latents.shape[-2] * factor, latents.shape[-1] * factor
