"""Soft inpainting: grey mask levels as per-pixel change strength (`--soft`; differential diffusion).

A pixel at level m in [0, 1] changes as much as a denoising strength of m (times `--strength`) lets
it. The pipeline runs n denoising steps (fewer than `--steps` below strength 1); before step k a
latent cell is *free* when m >= (n - k) / n (the thresholds go from 1 down to 1/n) and *pinned*
otherwise: after every step, the pinned cells' latents are replaced by the original image's latents
noised to the next step's level (the scheduler's own `scale_noise` for flow matching, `add_noise`
for the others, as the pipelines' own latent blending does), which is where img2img at strength m
would have started. So a cell is free for the last floor(m n) steps, exactly img2img's count; a cell
never freed (m < 1/n) ends as the clean original. The noise is a stream of its own from the seed.

Why cells are the max of their pixels: the VAE sees the picture in blocks (8 px, 16 for a packed 2x2
token), and the pixel composite afterwards (`core.composite` with levels) only takes change away
from a pixel, blending it by its own level, so a cell must allow the most change any of its pixels
wants. Cells at 0 and 1 are the pipeline's own business: the mask it gets is `level > 0`, whose
outside it keeps (latent-blending pipelines) or repaints for the composite to discard (FLUX.1 Fill,
9-channel SD UNets); level 1 runs free. Hence a 0/255 mask with --soft runs exactly the binary inpaint,
and the callback is not even installed.

For conditioning inpainting models (9-channel SD UNets, FLUX.1 Fill) the mask the model sees stays
binary (`level > 0`, what they were trained on); only the latents follow the levels. Step 0 starts
from the pipeline's own latents: below strength 1 they are the original noised to that step (what
pinning asks); at strength 1 they are noise (flow matching: the same thing, sigma 1; SD's DDPM
schedule leaves sqrt(alpha_bar) ~ 0.07 of the original out), and pinning starts after the first step.

Latent layouts, by pipeline class (`SOFT_LAYOUTS`), the original encoded with the pipeline's own
helpers so normalisation always matches: "plain" (B, C, h, w: SD 1.x/2.x, SDXL, SD3, Z-Image),
"packed" (FLUX.1 inpaint, Fill, Kontext inpaint: 2x2 latent pixels per token, channels (C, 2, 2)),
"packed-video" (Qwen-Image: its 3D VAE's (B, C, 1, h, w), then packed as FLUX.1), "patchified"
(FLUX.2 Klein: 2x2 patchified and batch-normalised, then flattened). The levels go through the same
packing, so every latent value gets its own latent pixel's level. Refused in one line: pipelines that
choose their own working size (Qwen-Image-Edit's masked edit), and any pipeline not in the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from canvaslab.errors import EngineError, InputError

# Inpainting pipelines whose `callback_on_step_end` sees the latents, by class name -> their layout.
SOFT_LAYOUTS: dict[str, str] = {
    "StableDiffusionInpaintPipeline": "plain",
    "StableDiffusionXLInpaintPipeline": "plain",
    "StableDiffusion3InpaintPipeline": "plain",
    "ZImageInpaintPipeline": "plain",
    "FluxInpaintPipeline": "packed",
    "FluxFillPipeline": "packed",
    "FluxKontextInpaintPipeline": "packed",
    "QwenImageInpaintPipeline": "packed-video",
    "Flux2KleinInpaintPipeline": "patchified",
}

# Pipelines that cannot follow the levels, and why (said in the refusal).
REFUSED: dict[str, str] = {
    "QwenImageEditInpaintPipeline": "works at a size of its own (~1 Mpx), so its latents do not line up with the mask",
}

NOISE_STREAM = 0x50F7  # the pinned latents' noise: a stream of its own, the sampler's noise is unchanged


def layout_of(pipe: Any) -> str:
    """The latent layout of `pipe` for soft inpainting; InputError naming the pipeline otherwise."""
    name = type(pipe).__name__
    if name in SOFT_LAYOUTS:
        return SOFT_LAYOUTS[name]
    why = REFUSED.get(name, "does not hand its latents to canvaslab between steps")
    raise InputError(f"--soft is not supported for {name}, which {why}: use a binary mask (leave --soft out), "
                     "or --feather for a soft edge")


def soft_callback(pipe: Any, image: np.ndarray, levels: np.ndarray, *, seed: int) -> Callable[..., dict[str, Any]] | None:
    """A `callback_on_step_end` that makes `pipe` (an inpainting pipeline of `SOFT_LAYOUTS`) follow `levels`
    (HxW float in [0, 1], the size of `image`, the uint8 RGB original); None when every latent cell is at
    level 0 or 1, which the pipeline does by itself."""
    import torch

    layout = layout_of(pipe)
    if levels.shape != image.shape[:2]:
        raise EngineError(f"soft mask levels are {levels.shape[1]}x{levels.shape[0]} but the image is "
                          f"{image.shape[1]}x{image.shape[0]}")
    if not ((levels > 0) & (levels < 1)).any():
        return None  # a binary mask: not worth encoding the image to find out
    generator = torch.Generator("cpu").manual_seed(int(np.random.SeedSequence([seed, NOISE_STREAM]).generate_state(1)[0]))
    with torch.no_grad():
        encoded = _encode(pipe, image, layout, generator)
        grid = _grid(encoded, layout)
        cells = torch.nn.functional.adaptive_max_pool2d(torch.tensor(levels, dtype=torch.float32)[None, None], grid)[0, 0]
        if not bool(((cells > 0) & (cells < 1)).any()):
            return None
        original = _arrange(pipe, encoded, layout, latent=True)
        level = _arrange(pipe, cells.to(original.device), layout, latent=False, channels=_channels(encoded, layout))
        noise = torch.randn(original.shape, generator=generator, dtype=torch.float32).to(original.device, original.dtype)
    return pinning(original, level, noise)


def pinning(original: Any, level: Any, noise: Any) -> Callable[..., dict[str, Any]]:
    """The callback proper: after step k, cells pinned for step k + 1 get `original` noised to its level."""
    import torch

    start: list[Any] = []  # per latent value, the first step it is free at (n - floor(m n)); set once n is known

    def on_step_end(pipeline: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = kwargs["latents"]
        if latents.shape != original.shape:
            raise EngineError(f"{type(pipeline).__name__} denoised latents of shape {tuple(latents.shape)}, not the "
                              f"{tuple(original.shape)} of the image it was given: --soft cannot follow them")
        steps = int(pipeline.num_timesteps)
        if not start:
            start.append(steps - torch.floor(level * steps + 1e-4))
        following = index + 1
        with torch.no_grad():
            if following < steps:
                pinned = (level > 0) & (start[0] > following)
                if not bool(pinned.any()):
                    return kwargs
                scheduler = pipeline.scheduler
                run = scheduler.timesteps[len(scheduler.timesteps) - steps:]  # the timesteps this call runs
                target = _noised(scheduler, original, noise, run[following:following + 1])
            else:  # after the last step: cells never freed are the original itself
                pinned = (level > 0) & (start[0] >= steps)
                if not bool(pinned.any()):
                    return kwargs
                target = original
            kwargs["latents"] = torch.where(pinned, target.to(latents.dtype), latents)
        return kwargs

    return on_step_end


def _noised(scheduler: Any, original: Any, noise: Any, timestep: Any) -> Any:
    """`original` noised to `timestep` (a 1-element tensor) as the pipelines' own latent blending does it."""
    if hasattr(scheduler, "scale_noise"):  # flow matching: sigma * noise + (1 - sigma) * original
        return scheduler.scale_noise(original, timestep, noise)
    return scheduler.add_noise(original, noise, timestep)


def _encode(pipe: Any, image: np.ndarray, layout: str, generator: Any) -> Any:
    """The original's latents, normalised as the pipeline normalises them, before any packing."""
    import torch

    vae = pipe.vae
    device = getattr(pipe, "_execution_device", None) or vae.device
    pixels = torch.tensor(image).permute(2, 0, 1)[None].to(device, vae.dtype) / 127.5 - 1.0  # a copy: inputs may be read-only
    if layout == "packed-video":
        pixels = pixels.unsqueeze(2)  # Qwen-Image's VAE takes frames: (B, C, 1, H, W)
    if hasattr(pipe, "_encode_vae_image"):
        return pipe._encode_vae_image(pixels, generator)
    # Z-Image has no helper; its prepare_latents encodes exactly this way.
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (vae.encode(pixels).latent_dist.sample(generator) - shift) * vae.config.scaling_factor


def _grid(encoded: Any, layout: str) -> tuple[int, int]:
    """(rows, columns) of latent pixels."""
    height, width = encoded.shape[-2:]
    return (2 * height, 2 * width) if layout == "patchified" else (height, width)


def _channels(encoded: Any, layout: str) -> int:
    """Latent channels per latent pixel, before packing."""
    return encoded.shape[1] // 4 if layout == "patchified" else encoded.shape[1]


def _arrange(pipe: Any, tensor: Any, layout: str, *, latent: bool, channels: int = 0) -> Any:
    """Bring `tensor` into the layout the callback sees: the encoded original (`latent`), or an (h, w) map
    of cell levels, repeated over the latent channels first so packing gives each value its own level."""
    if not latent:
        tensor = tensor[None, None].expand(1, channels, *tensor.shape).contiguous()
        if layout == "plain":
            return tensor[:, :1]  # broadcasts over the channels
        if layout == "patchified":
            tensor = pipe._patchify_latents(tensor)
    if layout == "plain":
        return tensor
    if layout == "patchified":
        return pipe._pack_latents(tensor)
    batch, channels = tensor.shape[:2]
    height, width = tensor.shape[-2:]
    return pipe._pack_latents(tensor.contiguous(), batch, channels, height, width)
