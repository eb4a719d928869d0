"""What every dataset layout is reduced to: records (references, no pixels) and examples (pixels).

A layout (image folder, metadata.jsonl, parquet, Arrow, a `datasets` folder) only has to say, for
each item, where its images are: a `Record` holds a key, a caption and `ImageRef`s (a path, or the
encoded bytes of an embedded image). Decoding a record into an `Example`, reading sizes from image
headers, and the size rules between target, mask and inputs live here once for all layouts.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image

from canvaslab.core.image import DEFAULT_MAX_PIXELS, load_image, load_mask, pixel_limit
from canvaslab.errors import InputError

KINDS = ("inpaint", "edit", "frames")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# A path to an image file, or the encoded bytes of an image stored inside a table.
ImageRef = Union[Path, bytes]

# EXIF orientations 5-8 rotate by 90 degrees: the decoded image has width and height swapped.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(eq=False)  # arrays do not compare to a single bool
class Example:
    """One decoded training item."""

    key: str  # stable id, unique in the dataset (e.g. the target's relative path)
    image: np.ndarray  # target, HxWx3 uint8 RGB
    caption: str  # inpaint: caption ("" allowed); edit/frames: the instruction
    mask: np.ndarray | None = None  # inpaint only: the user's mask, HxW bool, True = fill
    inputs: list[np.ndarray] = field(default_factory=list)  # [] inpaint, [input] edit, N frames
    # Set by `transforms.fit_example` for SDXL micro-conditioning. original_size is (width, height),
    # the project's order; crop_top_left is (top, left) in the resized image, as its name says.
    original_size: tuple[int, int] | None = None
    crop_top_left: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Record:
    """Where one item's images are; nothing decoded."""

    key: str
    caption: str
    target: ImageRef | None  # None: the row names no target (reported when decoded)
    mask: ImageRef | None = None
    inputs: tuple[ImageRef | None, ...] = ()


@dataclass(frozen=True)
class Problem:
    """Something wrong (or worth knowing) about a dataset, found while indexing or decoding it."""

    severity: str  # "error" | "warning" | "note"
    kind: str  # e.g. "missing-pair", "unreadable", "size-mismatch" (see docs/data.md)
    key: str  # the item (or file) it concerns
    message: str


class ItemError(InputError):
    """One item cannot be decoded; `kind` says why, in `Problem.kind` terms."""

    def __init__(self, kind: str, key: str, message: str) -> None:
        super().__init__(f"training item '{key}': {message}")
        self.kind = kind
        self.key = key
        self.detail = message


# --- naming -----------------------------------------------------------------------------------


def natural_key(name: str) -> tuple[list[object], str]:
    """Sort key putting '9.jpg' before '10.jpg' (digit runs compare as numbers, the rest case-insensitively).

    The name itself breaks ties ('1.png' vs '01.png'), so the order never depends on the file system.
    """
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)], name


def describe_ref(ref: ImageRef | None) -> str:
    """How a reference is named in messages."""
    if ref is None:
        return "(none)"
    return str(ref) if isinstance(ref, Path) else f"<{len(ref)} embedded bytes>"


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


# --- headers ----------------------------------------------------------------------------------


def read_header(ref: ImageRef, *, what: str, key: str) -> tuple[tuple[int, int], str]:
    """(width, height) as decoded (EXIF rotation applied) and Pillow's mode, without decoding pixels."""
    try:
        with pixel_limit(DEFAULT_MAX_PIXELS), Image.open(_openable(ref)) as im:
            width, height = im.size
            if _orientation(im) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            return (width, height), im.mode
    except InputError as exc:  # over the pixel limit
        raise ItemError("unreadable", key, f"{what} {describe_ref(ref)}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else "not a readable image"
        raise ItemError("unreadable", key, f"cannot read the {what} {describe_ref(ref)}: {reason}") from None


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except (OSError, SyntaxError, ValueError, TypeError):  # a broken EXIF block: load_image ignores it too
        return 1


def _openable(ref: ImageRef) -> object:
    return io.BytesIO(ref) if isinstance(ref, (bytes, bytearray)) else ref


# --- decoding ---------------------------------------------------------------------------------


def decode_record(record: Record, kind: str, frames: int) -> Example:
    """Decode a record and enforce the size rules: inputs/frames share the target's size.

    The user's mask is resized to the target (nearest neighbour) when its size differs; the checker
    reports that as a note, so training logs are not flooded with one notice per item and epoch.
    """
    key = record.key
    target = decode_image(record.target, what="target image", key=key)
    size = (target.shape[1], target.shape[0])
    mask = None if record.mask is None else decode_mask(record.mask, size, key=key)
    _check_input_count(record, kind, frames)
    inputs = [decode_image(ref, what=_input_name(kind, n), key=key) for n, ref in enumerate(record.inputs)]
    _check_input_sizes(key, kind, size, inputs)
    return Example(key=key, image=target, caption=record.caption, mask=mask, inputs=inputs)


def decode_image(ref: ImageRef | None, *, what: str, key: str) -> np.ndarray:
    """HxWx3 uint8 RGB through `core.image.load_image` (EXIF, modes, 16-bit, pixel limit); alpha dropped."""
    if ref is None:
        raise ItemError("missing-pair", key, f"the row names no {what}")
    try:
        return load_image(ref).rgb
    except InputError as exc:
        raise ItemError("unreadable", key, f"{what} {describe_ref(ref)}: {exc}") from None


def decode_mask(ref: ImageRef, size: tuple[int, int], *, key: str) -> np.ndarray:
    """HxW bool, white = fill, resized nearest-neighbour to `size` (width, height) when it differs."""
    try:
        mask = load_mask(ref, mode="white")
    except InputError as exc:
        raise ItemError("unreadable", key, f"mask {describe_ref(ref)}: {exc}") from None
    if (mask.shape[1], mask.shape[0]) != size:
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST), dtype=bool)
    return mask


def _input_name(kind: str, index: int) -> str:
    return f"frame {index + 1}" if kind == "frames" else "input image"


def _check_input_count(record: Record, kind: str, frames: int) -> None:
    if len(record.inputs) != frames:
        noun = "input frames" if kind == "frames" else "input images"
        raise ItemError(
            "frame-count",
            record.key,
            f"has {len(record.inputs)} {noun} but the dataset's rows have {frames}; every row needs the same number",
        )


def _check_input_sizes(key: str, kind: str, size: tuple[int, int], inputs: list[np.ndarray]) -> None:
    # Frames are compared with the first frame (so the message names the odd one), the first with the target.
    for index, image in enumerate(inputs):
        found = (image.shape[1], image.shape[0])
        if index == 0:
            reference, against, rule = size, "the target", "inputs must have the target's size"
        else:
            reference, against, rule = _size_of(inputs[0]), "frame 1", "the frames of a row must share one size"
        if found != reference:
            raise ItemError(
                "size-mismatch",
                key,
                f"{_input_name(kind, index)} is {found[0]}x{found[1]} but {against} is "
                f"{reference[0]}x{reference[1]}; {rule}",
            )


def _size_of(image: np.ndarray) -> tuple[int, int]:
    return image.shape[1], image.shape[0]
