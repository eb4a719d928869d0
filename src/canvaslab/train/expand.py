"""Widen a UNet's input convolution so a text-to-image checkpoint can be fine-tuned into an
inpainting (9 channels) or editing (4 + 4N channels) model.

The extra input channels get zero weights and every existing weight and the bias are kept, so the
widened UNet's output, whatever the extra channels hold, is exactly the base model's: training starts
from the base model rather than from a perturbed one. (The diffusers example scripts build the new
convolution with a fresh random bias, so their step 0 is already off the base model; we copy it.)

Channel layouts, in the order the diffusers pipelines concatenate them:
  9      noisy latents (4) + mask (1) + masked image latents (4)  (StableDiffusionInpaintPipeline)
  4 + 4N noisy latents (4) + latents of N conditioning images (4 each); N = 1 is InstructPix2Pix
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from canvaslab.errors import InputError

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

LATENT_CHANNELS = 4
INPAINT_CHANNELS = 9


def _frames(in_channels: int) -> int | None:
    """Conditioning frames of a 4 + 4N layout (0 for plain 4), or None for 9 / unsupported counts."""
    if in_channels >= LATENT_CHANNELS and in_channels % LATENT_CHANNELS == 0:
        return in_channels // LATENT_CHANNELS - 1
    return None


def conditioning_layout(in_channels: int) -> list[str]:
    """What each block of UNet input channels holds, in order, e.g. for docs and error messages."""
    if in_channels == INPAINT_CHANNELS:
        return ["noisy latents (4)", "mask (1)", "masked image latents (4)"]
    frames = _frames(in_channels)
    if frames is None:
        raise InputError(
            f"a UNet with {in_channels} input channels has no known layout "
            "(4 = text to image, 9 = inpainting, 4+4N = editing with N conditioning images)"
        )
    if frames == 1:
        return ["noisy latents (4)", "image latents (4)"]
    return ["noisy latents (4)"] + [f"frame {i} latents (4)" for i in range(1, frames + 1)]


def _check_target(current: int, in_channels: int) -> None:
    """Refuse counts that are not a known layout, shrinking, and widenings that reinterpret channels."""
    if isinstance(in_channels, bool) or not isinstance(in_channels, int):
        raise InputError(f"in_channels must be an integer, not {in_channels!r}")
    if in_channels != INPAINT_CHANNELS and _frames(in_channels) is None:
        raise InputError(
            f"cannot expand a UNet to {in_channels} input channels: use 9 (inpainting: latents + mask + "
            "masked image) or 4+4N (editing: latents + N conditioning images, e.g. 8, 12, 16)"
        )
    if in_channels < current:
        raise InputError(
            f"cannot shrink a UNet from {current} to {in_channels} input channels; start from the plain 4-channel model"
        )
    # Widening keeps the old channels where they are, so the old layout must be a prefix of the new one:
    # 9 -> 4+4N (or back) would turn the mask channel into part of a frame's latents.
    if current != LATENT_CHANNELS and in_channels != current and (
        current == INPAINT_CHANNELS or in_channels == INPAINT_CHANNELS
    ):
        raise InputError(
            f"cannot expand a {current}-channel UNet to {in_channels} channels: the layouts "
            f"({' + '.join(conditioning_layout(current))} vs {' + '.join(conditioning_layout(in_channels))}) "
            "do not share a prefix; start from the plain 4-channel model"
        )


def expand_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """Widen `unet.conv_in` to `in_channels` in place and return `unet`.

    Existing input channels keep their weights, the new ones get zero weights, the bias is copied,
    and the config records the new count so `save_pretrained`/`from_pretrained` round-trip. Expanding
    to the current count is a no-op. Shapes, dtype, device and `requires_grad` follow the old layer.
    """
    old = unet.conv_in
    if not isinstance(old, nn.Conv2d):
        # e.g. a PEFT/LoRA wrapper: widening it would silently drop or misalign the adapter.
        raise InputError(
            f"unet.conv_in is a {type(old).__name__}, not a plain Conv2d; expand the UNet before adding adapters"
        )
    current = old.in_channels
    _check_target(current, in_channels)
    if in_channels == current:
        unet.register_to_config(in_channels=in_channels)  # keep the config honest even if it had drifted
        return unet
    if old.groups != 1:
        raise InputError(f"unet.conv_in uses {old.groups} groups; only an ungrouped convolution can be widened")

    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :current].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)  # the diffusers scripts leave a fresh random bias here
    new.weight.requires_grad_(old.weight.requires_grad)
    if old.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    new.train(old.training)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet
