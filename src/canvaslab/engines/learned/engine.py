"""The learned erasers as engines: `lama` (big-LaMa) and `migan` (MI-GAN), one forward pass each, no prompt.

Both networks were trained at 256-512 px, so big pictures go through one of IOPaint's strategies
(`--opt strategy=...`):
- `crop` (default): each group of masked pixels is filled in a crop around it with `crop_margin` px of
  context (boxes whose crops overlap are merged); LaMa crops only pictures whose long side is above
  `crop_trigger` px and works on the whole smaller ones, MI-GAN crops whatever does not fit its
  square and scales each crop down to it. Detail stays at full resolution, time grows with the holes.
- `resize`: the whole picture scaled down (long side `resize_limit` for LaMa, the model's size for
  MI-GAN), filled, scaled back; the task keeps every unmasked pixel, only the fill is softer.
- `original`: the whole picture as it is (LaMa: any size, memory grows with it; MI-GAN: only pictures
  that fit its square).
Masks are shrunk conservatively (a pixel of the small mask is a hole when any pixel under it is), so no
masked pixel is ever left to its old content.

Pre- and post-processing follow the references exactly (tests/engines/test_learned_parity.py):
LaMa takes the image in [0, 1], the hole as 1, symmetric padding to a multiple of 8, and its [0, 1]
output is cut back and truncated to uint8 (as LaMa's predict.py and IOPaint do); MI-GAN takes
[known - 0.5, image * known] with the image in [-1, 1], the picture padded symmetrically to its square,
and its output is rounded to uint8 (as IOPaint does).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field
from scipy import ndimage

from canvaslab.core.geometry import resize_rgb
from canvaslab.core.progress import check_cancelled, report_progress
from canvaslab.engines.base import Engine, EngineOptions, Generation
from canvaslab.engines.learned.files import find_known, known, resolve_model
from canvaslab.errors import InputError

Strategy = Literal["crop", "resize", "original"]


class LamaOptions(EngineOptions):
    strategy: Strategy = Field("crop", description="big pictures: crop around the mask, resize, or original size")
    crop_trigger: int = Field(800, ge=64, le=16384, description="crop only pictures whose long side is above PX")
    crop_margin: int = Field(128, ge=0, le=4096, description="context (px) kept around the mask in each crop")
    resize_limit: int = Field(1280, ge=64, le=16384, description="resize: the long side (px) the picture is filled at")


class MiganOptions(EngineOptions):
    strategy: Strategy = Field("crop", description="pictures larger than the model: crop around the mask, resize, or "
                               "original (only pictures that fit the model's square)")
    crop_margin: int = Field(128, ge=0, le=4096, description="context (px) kept around the mask in each crop")


class _LearnedEngine(Engine):
    needs_context: ClassVar[bool] = True  # it fills from the known pixels; an all-hole input has nothing to go on
    deterministic: ClassVar[bool] = True  # one forward pass, no sampling (MI-GAN's noise maps are part of its weights)

    def describe_sampling(self, generation: Generation, options: dict[str, Any] | None = None) -> dict[str, object]:
        if generation.model is not None:
            return {}  # a local file is named (with its hash) by the request itself
        found = next((entry for entry in known(self.name) if find_known(entry) is not None), None)
        return {"Model": found.name} if found is not None else {}

    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int, options: EngineOptions, generation: Generation
    ) -> np.ndarray:
        check_cancelled()
        path = resolve_model(self.name, generation.model)
        return self.fill(image, mask, path, options, generation.device)

    def fill(self, image: np.ndarray, mask: np.ndarray, path: Any, options: EngineOptions, device: str) -> np.ndarray:
        raise NotImplementedError


class LamaEngine(_LearnedEngine):
    name: ClassVar[str] = "lama"
    description: ClassVar[str] = (
        "big-LaMa (Fourier convolutions): one pass, removes objects and continues structure; --model best.ckpt folder "
        "or IOPaint's big-lama.pt [default: found in torch hub's cache]"
    )
    Options: ClassVar[type[EngineOptions]] = LamaOptions

    def fill(self, image: np.ndarray, mask: np.ndarray, path: Any, options: EngineOptions, device: str) -> np.ndarray:
        from canvaslab.engines.learned.loading import load_lama

        network = load_lama(path, device)
        assert isinstance(options, LamaOptions)
        long_side = max(image.shape[:2])
        if options.strategy == "crop" and long_side > options.crop_trigger:
            return fill_in_crops(image, mask, options.crop_margin, lambda rgb, hole: lama_forward(network, rgb, hole))
        if options.strategy == "resize" and long_side > options.resize_limit:
            return fill_resized(image, mask, options.resize_limit, lambda rgb, hole: lama_forward(network, rgb, hole))
        return _once(lama_forward(network, image, mask))


class MiganEngine(_LearnedEngine):
    name: ClassVar[str] = "migan"
    description: ClassVar[str] = (
        "MI-GAN (mobile GAN): one fast pass at 256/512 px, for small objects; --model .pt, ONNX or IOPaint's "
        "migan_traced.pt [default: found in torch hub's cache]"
    )
    Options: ClassVar[type[EngineOptions]] = MiganOptions

    def fill(self, image: np.ndarray, mask: np.ndarray, path: Any, options: EngineOptions, device: str) -> np.ndarray:
        from canvaslab.engines.learned.loading import load_migan

        network = load_migan(path, device)
        assert isinstance(options, MiganOptions)
        if network.pipeline is not None:
            if options.model_fields_set & {"strategy", "crop_margin"}:
                raise InputError(f"{path.name} is MI-GAN's ONNX pipeline, which crops around the mask itself: leave "
                                 "out --opt strategy and crop_margin")
            return _once(migan_pipeline_forward(network, image, mask))
        size = network.resolution
        run = lambda rgb, hole: migan_forward(network, rgb, hole)  # noqa: E731
        fits = max(image.shape[:2]) <= size
        if options.strategy == "original" or fits:
            if not fits:
                raise InputError(f"--opt strategy=original needs a picture of at most {size} px for this MI-GAN model "
                                 f"(got {image.shape[1]}x{image.shape[0]}): use crop or resize")
            return _once(run(image, mask))
        if options.strategy == "resize":
            return fill_resized(image, mask, size, run)
        return fill_in_crops(image, mask, options.crop_margin, lambda rgb, hole: fill_resized(rgb, hole, size, run))


def _once(result: np.ndarray) -> np.ndarray:
    report_progress(1, 1)
    return result


# -- the networks' own pre- and post-processing ------------------------------------------------------

def pad_symmetric(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mirror the bottom/right edges out to (height, width), as numpy's "symmetric" (edge pixel repeated)."""
    pads = [(0, height - array.shape[0]), (0, width - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pads, mode="symmetric")


def lama_forward(network: Any, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    import torch

    height, width = hole.shape
    m = network.multiple
    padded_h, padded_w = -(-height // m) * m, -(-width // m) * m
    image = pad_symmetric(rgb, padded_h, padded_w).astype(np.float32).transpose(2, 0, 1) / 255.0
    holes = pad_symmetric(hole, padded_h, padded_w).astype(np.float32)
    with torch.inference_mode():
        out = network.predict(torch.from_numpy(image)[None].to(network.device),
                              torch.from_numpy(holes)[None, None].to(network.device))
    out = out[0].permute(1, 2, 0).float().cpu().numpy()[:height, :width]
    return np.clip(out * 255, 0, 255).astype(np.uint8)  # truncation, as the references do


def migan_input(rgb: np.ndarray, hole: np.ndarray, size: int) -> np.ndarray:
    """(1, 4, size, size) float32: [known - 0.5, image in [-1, 1] * known] of the picture padded to the square."""
    image = pad_symmetric(rgb, size, size).astype(np.float32).transpose(2, 0, 1) / 255.0 * 2 - 1
    holes = pad_symmetric(hole, size, size).astype(np.float32)[None]
    return np.concatenate([0.5 - holes, image * (1 - holes)])[None]


def migan_forward(network: Any, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    import torch

    height, width = hole.shape
    x = torch.from_numpy(migan_input(rgb, hole, network.resolution)).to(network.device)
    with torch.inference_mode():
        out = network.predict(x)
    out = (out[0].permute(1, 2, 0).float() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    return out.cpu().numpy()[:height, :width]


def migan_pipeline_forward(network: Any, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    import torch

    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    known_mask = torch.from_numpy(np.where(hole, 0, 255).astype(np.uint8))[None, None]
    return network.pipeline(image, known_mask)[0].permute(1, 2, 0).numpy().astype(np.uint8)


# -- strategies for pictures larger than the network's training size ----------------------------------

def shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mask at (width, height), a hole wherever any pixel under a small pixel is one (box filter > 0)."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask.copy()
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0


def fill_resized(image: np.ndarray, mask: np.ndarray, long_side: int, run: Any) -> np.ndarray:
    """Scale the long side down to `long_side` (never up), fill, scale back."""
    height, width = mask.shape
    scale = long_side / max(height, width)
    if scale >= 1:
        return run(image, mask)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = run(resize_rgb(image, size), shrink_mask(mask, size))
    return resize_rgb(small, (width, height))


def crop_boxes(mask: np.ndarray, margin: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) crops: each connected group of holes with `margin` px around it, moved
    inside the picture at its borders (IOPaint's rule: the crop keeps its size there), overlaps merged."""
    height, width = mask.shape
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    boxes = []
    for rows, cols in ndimage.find_objects(labels)[:count]:
        boxes.append(_widened(rows.start, rows.stop, height, margin) + _widened(cols.start, cols.stop, width, margin))
    boxes = [(t, l, b, r) for (t, b, l, r) in boxes]
    merged = True
    while merged:  # union boxes that overlap until none do
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes)


def _widened(start: int, stop: int, limit: int, margin: int) -> tuple[int, int]:
    length = min(limit, stop - start + 2 * margin)
    start = max(0, min(start - margin, limit - length))
    return start, start + length


def fill_in_crops(image: np.ndarray, mask: np.ndarray, margin: int, run: Any) -> np.ndarray:
    """Fill each crop from `crop_boxes` with `run` and paste its hole pixels back (the rest is the input)."""
    out = image.copy()
    boxes = crop_boxes(mask, margin)
    for index, (top, left, bottom, right) in enumerate(boxes):
        check_cancelled()
        hole = mask[top:bottom, left:right]
        filled = run(image[top:bottom, left:right], hole)
        out[top:bottom, left:right][hole] = filled[hole]
        report_progress(index + 1, len(boxes))
    return out


def learned_fill(engine: str, image: np.ndarray, mask: np.ndarray, *, model: str | None, device: str = "auto") -> np.ndarray:
    """The masked pixels filled by `engine` (lama or migan) with its default options: the diffusion engine's
    `--masked-content lama|migan` start (Krita's LaMa pre-fill), unmasked pixels kept."""
    from canvaslab.engines import get_engine

    eraser = get_engine(engine)
    assert isinstance(eraser, _LearnedEngine)
    eraser.check_mask(mask)
    filled = eraser.fill(image, mask, resolve_model(engine, model), eraser.parse_options({}), device)
    return np.where(mask[..., None], filled, image)
