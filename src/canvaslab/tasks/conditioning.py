"""Control images and IP-Adapter images of a request: loaded once, fitted to the canvas, and carried
through the same geometry as the input image until the engine gets them.

A control image describes the task's canvas (inpaint: the input image; outpaint: the extended canvas;
generate: width x height). One of another size is first fitted to it as the unit's `resize` says,
A1111's resize modes: `crop` (scale to cover, centre crop: "Crop and Resize"), `resize` (stretch: "Just
Resize") or `fill` (scale to fit, centred, the margin edge-extended: "Resize and Fill"). From then on it is
cropped, scaled and aligned exactly as the input image is (`--area masked`, windows, working size,
the engine's multiple), so at the engine each control pixel still sits on its image pixel. A unit without
an image uses the engine's input image. IP-Adapter images are references, not maps: they go as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from canvaslab.core.geometry import Alignment, AlignMode, Box, resize_rgb
from canvaslab.core.image import DEFAULT_MAX_PIXELS, load_image
from canvaslab.engines import Generation
from canvaslab.engines.base import ControlUnit, ImagePrompt
from canvaslab.errors import InputError


@dataclass(frozen=True)
class Conditioning:
    """The request's control units with their images at the current canvas (None: the input image), and its
    IP-Adapters with their reference images."""

    control: tuple[ControlUnit, ...] = ()
    ip_adapters: tuple[ImagePrompt, ...] = ()

    def _mapped(self, change: Any) -> Conditioning:
        return dataclasses.replace(self, control=tuple(
            unit if unit.image is None else dataclasses.replace(unit, image=change(unit.image)) for unit in self.control
        ))

    def cropped(self, box: Box) -> Conditioning:
        return self._mapped(lambda image: np.ascontiguousarray(image[box.slices]))

    def resized(self, size: tuple[int, int]) -> Conditioning:
        return self._mapped(lambda image: resize_rgb(image, size))

    def aligned(self, info: Alignment) -> Conditioning:
        return self._mapped(lambda image: align_rgb(image, info))

    def given(self, generation: Generation) -> Generation:
        """`generation` with these units and adapters (images included)."""
        return dataclasses.replace(generation, control=self.control, ip_adapters=self.ip_adapters)


def align_rgb(rgb: np.ndarray, info: Alignment) -> np.ndarray:
    """An image of the original size brought to `info`'s aligned size as `align` brought the input image."""
    width, height = info.aligned_size
    if (rgb.shape[1], rgb.shape[0]) == (width, height):
        return rgb
    if info.mode == AlignMode.pad:
        pad_y, pad_x = height - rgb.shape[0], width - rgb.shape[1]
        mode = "symmetric" if pad_y <= rgb.shape[0] and pad_x <= rgb.shape[1] else "edge"
        return np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), mode=mode)
    return resize_rgb(rgb, (width, height))


def fit(rgb: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """`rgb` brought to `size` (width, height) by resize mode `crop`, `resize` or `fill` (see the module)."""
    width, height = size
    have_w, have_h = rgb.shape[1], rgb.shape[0]
    if (have_w, have_h) == (width, height):
        return rgb
    if mode == "resize":
        return resize_rgb(rgb, size)
    scale = (max if mode == "crop" else min)(width / have_w, height / have_h)
    inner = (max(1, round(have_w * scale)), max(1, round(have_h * scale)))
    scaled = np.asarray(Image.fromarray(rgb).resize(inner, Image.Resampling.LANCZOS))
    if mode == "crop":
        left, top = (inner[0] - width) // 2, (inner[1] - height) // 2
        return np.ascontiguousarray(scaled[top:top + height, left:left + width])
    left, top = (width - inner[0]) // 2, (height - inner[1]) // 2
    pads = ((top, height - inner[1] - top), (left, width - inner[0] - left), (0, 0))
    return np.pad(scaled, pads, mode="edge")


def load_conditioning(request: Any, canvas: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> Conditioning | None:
    """The request's units and adapters with their images loaded (control images fitted to `canvas`,
    width x height); None when it has neither."""
    generation = request.generation()
    control = getattr(request, "control", None) or []
    ip_adapters = getattr(request, "ip_adapter", None) or []
    if not control and not ip_adapters:
        return None
    units = tuple(
        dataclasses.replace(unit, image=None if spec.image is None else
                            fit(_load(spec.image, f"control unit {index} image", max_pixels), canvas, spec.resize.value))
        for index, (unit, spec) in enumerate(zip(generation.control, control))
    )
    adapters = tuple(
        dataclasses.replace(adapter, images=tuple(_load(path, f"IP-Adapter {index} image {number}", max_pixels)
                                                  for number, path in enumerate(spec.images)))
        for index, (adapter, spec) in enumerate(zip(generation.ip_adapters, ip_adapters))
    )
    return Conditioning(units, adapters)


def _load(source: Any, what: str, max_pixels: int) -> np.ndarray:
    """A control or reference image; its error names which one ("control unit 1 image: cannot read ...")."""
    try:
        return load_image(source, max_pixels=max_pixels).rgb
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None


def conditioning_inputs(request: Any) -> dict[str, Any]:
    """The recipe's record of control and reference images: path and sha256, like every input."""
    from canvaslab.tasks.common import describe_input

    inputs: dict[str, Any] = {}
    for index, spec in enumerate(getattr(request, "control", None) or []):
        if spec.image is not None:
            inputs[f"control_{index}"] = describe_input(spec.image)
    for index, spec in enumerate(getattr(request, "ip_adapter", None) or []):
        for number, path in enumerate(spec.images):
            inputs[f"ip_adapter_{index}_{number}"] = describe_input(path)
    return inputs


def control_preview(image: Any, preprocessor: str, *, mask: Any = None, threshold_a: float | None = None,
                    threshold_b: float | None = None, size: int | None = None, seed: int = 0,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The map preprocessor `preprocessor` makes of `image` (at `size` on the long side, else its own size),
    what a ControlNet would get; `mask` (white = fill) for the inpaint preprocessor."""
    from canvaslab.core.image import load_mask
    from canvaslab.engines.diffusion import preprocessors

    rgb = load_image(image, max_pixels=max_pixels).rgb
    if size is not None:
        scale = size / max(rgb.shape[:2])
        rgb = resize_rgb(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))))
    hole = None if mask is None else load_mask(mask, size=(rgb.shape[1], rgb.shape[0]), max_pixels=max_pixels)
    return preprocessors.run(preprocessor, rgb, mask=hole, threshold_a=threshold_a, threshold_b=threshold_b, seed=seed)
