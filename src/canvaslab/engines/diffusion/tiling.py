"""Seamless (tileable) output from diffusion pipelines: what `--tiling` does.

An image tiles when its right edge continues into its left one (axis x) and its bottom edge into its
top one (axis y). Two mechanisms, by how the denoiser sees space:

- **Circular padding** (UNet families: SD 1.x/2.x, SDXL, and every VAE). A convolution's zero padding
  is where an image "knows" it has an edge; padding from the opposite side instead makes every conv a
  convolution on a torus. SD's UNet has no positional embedding (attention and GroupNorm see the
  whole map whatever its order), so with every Conv2d of UNet and VAE padded this way the whole
  network commutes with wrapping shifts and its output has no edge to show. The VAE encoder's
  stride-2 downsamplers pad themselves on the right and bottom before their (unpadded) conv; that
  pad is made a wrapped copy too, so inpainting's encoded image wraps as well.
- **Latent rolling** (transformer families). A DiT has no padding to change: it sees patches at absolute
  positions (SD3's sin-cos embedding, FLUX's RoPE), so an edge is wherever the latent's first and last
  rows are. Rolling the latent by a random offset between steps (and back after the last) moves that
  edge every step: most steps denoise the wrapped-around rows as neighbours, which makes them agree.
  The VAE decodes with circular padding. This needs a sampler without history (each step a function
  of the current latent only), and pipelines whose loop reads no other latent-shaped tensor that would
  have to roll along (an inpainting pipeline's init latents and mask, a Fill or Kontext model's
  conditioning tokens). Supported, by pipeline class (`ROLLING_LAYOUTS`): text to image on SD3/3.5 and
  Z-Image (latents B x C x H x W) and on FLUX.1 and FLUX.2 Klein (B x tokens x 4C, packed 2x2). Not:
  inpainting, Fill and Kontext pipelines (other latent-shaped tensors in the loop), Qwen-Image (its VAE
  is made of causal 3D convolutions, which `seamless` does not pad); they are refused in one line, so
  nothing silently comes out with a seam.

Patching is per thread: `seamless` gives each Conv2d of the pipeline a `_conv_forward` that pads
circularly only in a thread (context) that asked for it and is torch's own code everywhere else, so a
request without --tiling running at the same time on the same cached modules gets exactly its usual
pixels. The last `seamless` to leave removes the override: the modules are then exactly as loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from canvaslab.errors import InputError

# --tiling value -> (wrap x, wrap y)
AXES: dict[str, tuple[bool, bool]] = {"none": (False, False), "x": (True, False), "y": (False, True), "both": (True, True)}

# Pipeline components whose Conv2d layers see the picture (text and image encoders do not produce it).
PICTURE_COMPONENTS = ("unet", "transformer", "vae", "controlnet")

# Transformer pipelines whose latents can roll between steps, by class name -> the layout of the
# `latents` their `callback_on_step_end` receives: "plain" (B, C, H, W) or "packed" (B, H/2 * W/2, 4C).
ROLLING_LAYOUTS: dict[str, str] = {
    "StableDiffusion3Pipeline": "plain",
    "ZImagePipeline": "plain",
    "FluxPipeline": "packed",
    "Flux2KleinPipeline": "packed",
}

_wrap: contextvars.ContextVar[tuple[bool, bool] | None] = contextvars.ContextVar("canvaslab_tiling", default=None)
_lock = threading.Lock()
_patched: dict[int, list[Any]] = {}  # id(conv) -> [conv, number of `seamless` blocks using it]


def axes_of(tiling: str) -> tuple[bool, bool]:
    """(wrap x, wrap y) for a --tiling value (none, x, y, both)."""
    if tiling not in AXES:
        raise InputError(f"tiling must be one of {', '.join(AXES)}, got {tiling!r}")
    return AXES[tiling]


def mechanism(pipe: Any) -> str:
    """How `pipe` tiles: "circular" (a UNet pipeline) or "rolling" (a transformer pipeline in
    `ROLLING_LAYOUTS`); InputError naming the pipeline otherwise."""
    if getattr(pipe, "unet", None) is not None:
        return "circular"
    name = type(pipe).__name__
    if getattr(pipe, "transformer", None) is not None and name in ROLLING_LAYOUTS:
        return "rolling"
    raise InputError(
        f"--tiling is not supported for {name}: it works with SD 1.x/2.x/SDXL (any task) and with text to image "
        "on SD3/3.5, FLUX.1, FLUX.2 Klein and Z-Image; leave --tiling out for this model"
    )


@contextlib.contextmanager
def seamless(pipe: Any, tiling: str) -> Iterator[None]:
    """While inside, every Conv2d of `pipe`'s UNet/transformer/VAE/ControlNet pads circularly along the
    `tiling` axes, in this thread only. `tiling="none"` does nothing."""
    wrap = axes_of(tiling)
    if not any(wrap):
        yield
        return
    convs = _picture_convs(pipe)
    _install(convs)
    token = _wrap.set(wrap)
    try:
        yield
    finally:
        _wrap.reset(token)
        _uninstall(convs)


def with_tiling(pipe: Any, tiling: str, *, seed: int) -> Callable[..., Any]:
    """`pipe` as a callable that runs with `tiling`: circular padding, plus latent rolling for
    transformer pipelines (chained before any `callback_on_step_end` the caller passes). `seed` draws
    the roll offsets. With `tiling="none"` this is `pipe` itself."""
    if not any(axes_of(tiling)):
        return pipe
    rolling = mechanism(pipe) == "rolling"

    def call(**kwargs: Any) -> Any:
        if rolling:
            size = (int(kwargs["height"]), int(kwargs["width"]))
            kwargs["callback_on_step_end"] = rolling_callback(
                pipe, tiling, seed=seed, size=size, then=kwargs.get("callback_on_step_end")
            )
        with seamless(pipe, tiling):
            return pipe(**kwargs)

    return call


def rolling_callback(
    pipe: Any, tiling: str, *, seed: int, size: tuple[int, int], then: Callable[..., Any] | None = None
) -> Callable[..., dict[str, Any]]:
    """A `callback_on_step_end` that rolls `latents` by a random offset after each step and back after
    the last, for a transformer pipeline of `ROLLING_LAYOUTS` making a `size` (height, width) image.

    `then` (another callback, e.g. progress) runs first and sees the latents as the step left them.
    Offsets are whole latent pixels (packed layouts: whole tokens), drawn from `seed` alone.
    """
    layout = ROLLING_LAYOUTS.get(type(pipe).__name__)
    if layout is None or getattr(pipe, "transformer", None) is None:
        raise InputError(f"latent rolling does not know the latent layout of {type(pipe).__name__}")
    _check_stateless(pipe.scheduler)
    wrap = axes_of(tiling)
    grid = _latent_grid(pipe, size, layout)
    rng = np.random.default_rng([seed, 0x711E])  # its own stream: the sampler's noise is unchanged
    offset = [0, 0]  # (rows, columns) the latents are rolled by now

    def on_step_end(pipeline: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if then is not None:
            kwargs = then(pipeline, index, timestep, kwargs)
        last = index + 1 >= (getattr(pipeline, "num_timesteps", None) or 0)
        target = [0, 0] if last else [int(rng.integers(n)) if on else 0 for n, on in zip(grid, (wrap[1], wrap[0]))]
        shift = ((target[0] - offset[0]) % grid[0], (target[1] - offset[1]) % grid[1])
        offset[:] = target
        if shift != (0, 0):
            kwargs["latents"] = _roll(kwargs["latents"], shift, grid, layout)
        return kwargs

    return on_step_end


# -- circular convolutions -------------------------------------------------------------------------


def _picture_convs(pipe: Any) -> list[tuple[Any, bool]]:
    """(conv, prepadded) for every Conv2d that pads: its own zero padding, or (prepadded) the unpadded
    stride-2 conv of diffusers' `Downsample2D(padding=0)`, whose forward zero-pads its input by one
    pixel on the right and bottom first (the SD VAE encoder's downsamplers)."""
    import torch

    convs: list[tuple[Any, bool]] = []
    for name in PICTURE_COMPONENTS:
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        prepadded = {
            id(block.conv) for block in module.modules()
            if type(block).__name__ == "Downsample2D" and getattr(block, "padding", None) == 0 and block.use_conv
        }
        for conv in module.modules():
            if isinstance(conv, torch.nn.Conv2d) and not isinstance(conv.padding, str):  # no picture model uses "same"
                if id(conv) in prepadded or any(conv.padding):
                    convs.append((conv, id(conv) in prepadded))
    return convs


def _install(convs: list[tuple[Any, bool]]) -> None:
    with _lock:
        for conv, prepadded in convs:
            entry = _patched.setdefault(id(conv), [conv, 0])
            if entry[1] == 0:
                conv._conv_forward = _circular_forward(conv, prepadded)
            entry[1] += 1


def _uninstall(convs: list[tuple[Any, bool]]) -> None:
    with _lock:
        for conv, _ in convs:
            entry = _patched[id(conv)]
            entry[1] -= 1
            if entry[1] == 0:
                del conv._conv_forward  # torch's own method again: the module is as it was loaded
                del _patched[id(conv)]


def _circular_forward(conv: Any, prepadded: bool) -> Callable[..., Any]:
    import torch.nn.functional as F

    own = type(conv)._conv_forward
    pad_y, pad_x = conv.padding

    def conv_forward(x: Any, weight: Any, bias: Any) -> Any:
        wrap = _wrap.get()
        if wrap is None or conv.padding_mode != "zeros":
            return own(conv, x, weight, bias)
        wrap_x, wrap_y = wrap
        if prepadded:  # the block padded the last column and row with zeros: make them the first ones
            x = x.clone()
            if wrap_x:
                x[..., :, -1] = x[..., :, 0]  # columns first, so the corner becomes pixel (0, 0)
            if wrap_y:
                x[..., -1, :] = x[..., 0, :]
        else:
            x = F.pad(x, (pad_x, pad_x, 0, 0), mode="circular" if wrap_x else "constant")
            x = F.pad(x, (0, 0, pad_y, pad_y), mode="circular" if wrap_y else "constant")
        return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return conv_forward


# -- latent rolling ----------------------------------------------------------------------------


def _check_stateless(scheduler: Any) -> None:
    """Rolling moves the latent between steps; a sampler that remembers earlier steps (multistep, Heun,
    ...) would combine them unrolled."""
    remembers = getattr(scheduler, "order", 1) != 1 or hasattr(scheduler, "model_outputs")
    if remembers:
        raise InputError(
            f"--tiling on a transformer model rolls the latents between steps, which {type(scheduler).__name__} "
            "cannot follow (it remembers earlier steps): use a one-step sampler such as euler"
        )


def _latent_grid(pipe: Any, size: tuple[int, int], layout: str) -> tuple[int, int]:
    """(rows, columns) of what rolls: latent pixels, or 2x2 tokens for a packed layout."""
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    height, width = size
    if layout == "packed":
        return height // (2 * factor), width // (2 * factor)
    return height // factor, width // factor


def _roll(latents: Any, shift: tuple[int, int], grid: tuple[int, int], layout: str) -> Any:
    if layout == "plain":
        return latents.roll(shifts=shift, dims=(-2, -1))
    batch, tokens, channels = latents.shape
    if tokens != grid[0] * grid[1]:
        raise InputError(f"packed latents of {tokens} tokens do not make a {grid[0]}x{grid[1]} grid")
    grid_latents = latents.reshape(batch, grid[0], grid[1], channels).roll(shifts=shift, dims=(1, 2))
    return grid_latents.reshape(batch, tokens, channels)
