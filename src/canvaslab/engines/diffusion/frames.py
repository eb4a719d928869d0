"""Multi-frame instruction editing: N input frames + an instruction -> one output frame.

A multi-frame editing model is an InstructPix2Pix model whose UNet takes 4 + 4N input channels:

    noisy latents (4) | frame 1 latents (4) | frame 2 latents (4) | ... | frame N latents (4)

Each frame's latents are `vae.encode(x).latent_dist.mode()` of the frame in [-1, 1], not multiplied
by the VAE scaling factor: exactly what InstructPix2Pix does with its single image, and what
canvaslab's trainer feeds the UNet. Guidance is InstructPix2Pix's three-way scheme (text + frames,
frames only, neither), with all N frames zeroed in the unconditional branch.

The pipeline below is diffusers' `StableDiffusionInstructPix2PixPipeline` with one method replaced:
`prepare_image_latents` folds the N frames (passed as `image=[frame_1, ..., frame_N]`, all one size)
into one (B, 4N, h, w) conditioning tensor. Everything else (prompt encoding, the denoising loop, the
guidance formula, the channel check `4 + 4N == unet.config.in_channels`, decoding) is the parent's, so
with N = 1 the result is bit for bit the stock pipeline's. SD 1.x/2.x only: SDXL's pipeline prepares
its image latents differently and is not covered.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline


class StableDiffusionFrameEditPipeline(StableDiffusionInstructPix2PixPipeline):
    """InstructPix2Pix conditioned on N frames instead of one image.

    Components are the parent's (vae, text_encoder, tokenizer, unet with 4 + 4N input channels,
    scheduler, optional safety checker). Call it like the parent with `image` the list of the N frames,
    in order (PIL images, arrays or a (N, 3, H, W) tensor in [-1, 1]; or (N, 4, h, w) latents, used as given).
    """

    @property
    def condition_frames(self) -> int:
        """N, the number of frames the UNet is conditioned on (read from its input channels)."""
        latent = self.vae.config.latent_channels
        return (self.unet.config.in_channels - latent) // latent

    def prepare_image_latents(
        self, image, batch_size, num_images_per_prompt, dtype, device, do_classifier_free_guidance, generator=None
    ) -> torch.Tensor:
        """The N frames -> (3B or B, 4N, h, w): frame latents side by side in channels, zeros for the
        unconditional branch (the last third under guidance, as in the parent)."""
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            kind = type(image).__name__
            raise ValueError(f"`image` must reach prepare_image_latents as one (N, C, H, W) tensor, not {kind}")
        frames = image.to(device=device, dtype=dtype)
        self.check_frame_count(frames.shape[0])
        # split(1), not frame[None]: it keeps the batch's memory layout (the image processor's tensor is
        # channels-last strided), so the VAE runs the same kernels as on the stock pipeline's image.
        condition = torch.cat([self.encode_frame(frame) for frame in frames.split(1)], dim=1)  # (1, 4N, h, w)
        condition = condition.repeat(batch_size * num_images_per_prompt, 1, 1, 1)  # every prompt sees the same frames
        if do_classifier_free_guidance:
            condition = torch.cat([condition, condition, torch.zeros_like(condition)], dim=0)
        return condition

    def encode_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """One frame (1, 3, H, W) in [-1, 1] -> its unscaled latent mode (1, 4, h, w).

        Frames are encoded one at a time, as the single-image pipeline encodes its image: the VAE's
        memory stays that of one frame however many there are, and N = 1 matches the parent exactly.
        """
        if frame.shape[1] == self.vae.config.latent_channels:
            return frame  # already latents
        return self.vae.encode(frame).latent_dist.mode()

    def check_frame_count(self, count: int) -> None:
        expected = self.condition_frames
        if count != expected:
            raise ValueError(
                f"this model takes {expected} input frames ({self.unet.config.in_channels}-channel UNet), got {count}"
            )


__all__ = ["StableDiffusionFrameEditPipeline"]
