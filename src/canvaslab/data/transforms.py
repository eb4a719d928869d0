"""Joint transforms: one resize, crop and flip applied alike to target, mask and every input frame.

An edit pair only teaches the edit if input and target stay aligned pixel for pixel, so the
geometry is drawn once per example and applied to all of its images. Images are resized with
Lanczos, masks with nearest neighbour (a mask stays a hard 0/1 mask).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from canvaslab.data.records import Example
from canvaslab.errors import InputError


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator for one sample's augmentation, fixed by (seed, epoch, index).

    DataLoader workers then draw the same crops and flips whatever the worker count or order.
    """
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def fit_example(
    example: Example,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    random_crop: bool = False,
    random_flip: bool = False,
) -> Example:
    """Resize `example` to cover `size` (width, height) keeping its aspect, crop to `size`, maybe flip.

    The crop is centred, or random with `random_crop`; with `random_flip` the example is mirrored
    left-right with probability 1/2. The result records `original_size` (width, height before
    resizing) and `crop_top_left` (top, left in the resized image, measured in the image as
    flipped), which SDXL takes as micro-conditioning. Deterministic given `rng`.
    """
    width, height = _check_size(size)
    _check_shapes(example)
    source_h, source_w = example.image.shape[:2]
    scaled_w, scaled_h = _cover(source_w, source_h, width, height)
    top, left = _crop_origin(rng, scaled_w - width, scaled_h - height, random_crop)
    flip = bool(random_flip and rng.random() < 0.5)

    def image_op(array: np.ndarray) -> np.ndarray:
        return _transform(array, (scaled_w, scaled_h), (left, top, width, height), flip, Image.Resampling.LANCZOS)

    mask = None
    if example.mask is not None:
        mask = _transform(example.mask, (scaled_w, scaled_h), (left, top, width, height), flip, Image.Resampling.NEAREST)
    # Mirroring moves the crop window: in the flipped image it starts at the other side.
    crop_left = scaled_w - width - left if flip else left
    return dataclasses.replace(
        example,
        image=image_op(example.image),
        mask=mask,
        inputs=[image_op(frame) for frame in example.inputs],
        original_size=(source_w, source_h),
        crop_top_left=(top, crop_left),
    )


def centre_crop_origin(source_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the centred crop `fit_example` takes from a (width, height) `source_size` image for
    `size`, without decoding it (SDXL micro-conditioning of samples whose latents are cached)."""
    width, height = _check_size(size)
    scaled_w, scaled_h = _cover(source_size[0], source_size[1], width, height)
    return (scaled_h - height) // 2, (scaled_w - width) // 2


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size):
        raise InputError(f"a training size must be (width, height) in positive pixels, not {size!r}")
    return int(size[0]), int(size[1])


def _check_shapes(example: Example) -> None:
    shape = example.image.shape[:2]
    others = ([example.mask] if example.mask is not None else []) + list(example.inputs)
    for array in others:
        if array.shape[:2] != shape:
            raise InputError(
                f"training item '{example.key}': a mask or input of {array.shape[1]}x{array.shape[0]} does not "
                f"match the target's {shape[1]}x{shape[0]}; a joint transform needs one size"
            )


def _cover(source_w: int, source_h: int, width: int, height: int) -> tuple[int, int]:
    """The smallest size with the source's aspect that covers (width, height); rounding never leaves a gap."""
    scale = max(width / source_w, height / source_h)
    return max(width, round(source_w * scale)), max(height, round(source_h * scale))


def _crop_origin(rng: np.random.Generator, spare_w: int, spare_h: int, random_crop: bool) -> tuple[int, int]:
    if random_crop:
        return int(rng.integers(0, spare_h + 1)), int(rng.integers(0, spare_w + 1))
    return spare_h // 2, spare_w // 2


def _transform(
    array: np.ndarray,
    scaled: tuple[int, int],
    box: tuple[int, int, int, int],
    flip: bool,
    resample: Image.Resampling,
) -> np.ndarray:
    is_mask = array.dtype == np.bool_
    image = Image.fromarray(array.astype(np.uint8) * 255 if is_mask else array)
    if image.size != scaled:
        image = image.resize(scaled, resample)
    left, top, width, height = box
    image = image.crop((left, top, left + width, top + height))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    result = np.asarray(image)
    return result >= 128 if is_mask else np.ascontiguousarray(result)
