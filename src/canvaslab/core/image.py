"""Loading images and masks, and saving results atomically with their recipe embedded.

Everything that enters canvaslab as pixels comes through `load_image` / `load_mask`: EXIF
orientation applied, every Pillow mode (palette, CMYK, 16-bit and float grayscale, ...) turned into
8-bit RGB plus an alpha channel when the source really had transparency, and a pixel limit checked
from the header before anything is decoded.

Pixel limit. ``max_pixels`` guards against decompression bombs (a small file that decodes to
gigabytes). Pillow has its own guard, driven by the process-wide ``PIL.Image.MAX_IMAGE_PIXELS``,
which warns above ~89 MP and raises above ~179 MP, including from inside plugins (GIF frames, TIFF
tiles, WebP). canvaslab replaces it with its own limit per call: on import this module wraps
Pillow's check once; the wrapper applies the limit set by `pixel_limit` in the current thread and
otherwise calls Pillow's original, so other Pillow users in the process see no change and no global
is touched per call. Pillow's DecompressionBombError/Warning therefore never reach our callers.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from canvaslab.core import metadata
from canvaslab.core.notices import notice
from canvaslab.errors import InputError

ImageSource = Union[str, "os.PathLike[str]", bytes, Image.Image, np.ndarray]

# 8192 x 8192 (67.1 MP): every full-frame camera photo (<= 61 MP) and the largest --size/--tile fit.
# Pillow's own error threshold (179 MP) let a 17 KB PNG of 12000 x 12000 in: decoding it alone takes
# ~1.4 GB and 4.5 s, and an engine filling it many times more. At this limit a bomb decodes in ~0.7 GB
# and 2 s. Bigger files (100 MP medium format, 200 MP phone modes, scans) need the limit raised:
# --max-pixels or CANVASLAB_MAX_PIXELS for the CLI, max_pixels= in Python.
DEFAULT_MAX_PIXELS = 8192 * 8192

MASK_MODES = ("white", "black", "alpha")

_SAVE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HIGH_DEPTH_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
# JPEG holds EXIF in one APP1 segment: 65535 bytes minus the 2-byte length field.
_JPEG_MAX_EXIF_BYTES = 65533

# Temporary files of `atomic_write_bytes`: ".<target name>.<8 hex>.tmp" beside the target.
_TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{8}\.tmp")
# A temporary file younger than this is never taken for a dead writer's: it may have been created a
# moment ago by a writer that has not locked it yet.
_STALE_AFTER_SECONDS = 2.0

try:  # POSIX: writers hold an flock on their temporary file, which the system drops when they die
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted, which protects live writers instead
    fcntl = None  # type: ignore[assignment]

# What Pillow raises for a file it can parse but not decode (corrupt, truncated, odd mode).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


@dataclass(eq=False)  # arrays do not compare to a single bool
class LoadedImage:
    """An image as canvaslab works on it."""

    rgb: np.ndarray  # HxWx3 uint8, C-contiguous
    alpha: np.ndarray | None  # HxW uint8, only when the source had transparency
    source: str  # the path, or "<bytes>", "<array>", "<image>"
    format: str | None  # Pillow's format name ("PNG", "JPEG", ...) when read from a file

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return self.rgb.shape[1], self.rgb.shape[0]


# --- pixel limit ------------------------------------------------------------------------------


class _PixelLimitExceeded(InputError):
    """Raised from inside Pillow; `load_image` re-raises it naming the file."""

    def __init__(self, size: tuple[int, int], max_pixels: int) -> None:
        super().__init__(_too_large_message("an image", size, max_pixels))
        self.size = size


_limit_state = threading.local()
_NO_LIMIT_SET = object()


def _make_bomb_check(pillow_check: Callable[..., None]) -> Callable[..., None]:
    def bomb_check(size: tuple[int, int], *args: Any, **kwargs: Any) -> None:
        limit = getattr(_limit_state, "max_pixels", _NO_LIMIT_SET)
        if limit is _NO_LIMIT_SET:
            pillow_check(size, *args, **kwargs)
        elif limit is not None and _pixel_count(size) > limit:
            raise _PixelLimitExceeded(size, limit)

    bomb_check.canvaslab_wrapper = True  # type: ignore[attr-defined]
    return bomb_check


def _install_bomb_check() -> None:
    pillow_check = getattr(Image, "_decompression_bomb_check", None)
    # Absent in some future Pillow: our own header check below still applies, and Pillow's errors
    # are still translated; only its warning could then slip through.
    if pillow_check is not None and not getattr(pillow_check, "canvaslab_wrapper", False):
        Image._decompression_bomb_check = _make_bomb_check(pillow_check)


_install_bomb_check()


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Within the block, Pillow in this thread refuses images over `max_pixels` (None: no limit).

    Use it around any direct ``Image.open`` (`load_image` does): over the limit, Pillow then
    raises InputError instead of its DecompressionBombError or warning.
    """
    previous = getattr(_limit_state, "max_pixels", _NO_LIMIT_SET)
    _limit_state.max_pixels = max_pixels
    try:
        yield
    finally:
        if previous is _NO_LIMIT_SET:
            del _limit_state.max_pixels
        else:
            _limit_state.max_pixels = previous


def _pixel_count(size: tuple[int, int]) -> int:
    return int(size[0]) * int(size[1])


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"the pixel limit must be a positive whole number, not {max_pixels!r}")


def _too_large(what: str, name: str, size: tuple[int, int], max_pixels: int) -> InputError:
    return InputError(_too_large_message(f"{what} '{name}'", size, max_pixels))


def _too_large_message(subject: str, size: tuple[int, int], max_pixels: int) -> str:
    return (
        f"{subject} is {size[0]}x{size[1]} = {_pixel_count(size):,} pixels, more than the limit "
        f"of {max_pixels:,} that guards against decompression bombs; if you trust the file, raise "
        "it with --max-pixels (max_pixels= in Python)"
    )


def _check_size(what: str, name: str, size: tuple[int, int], max_pixels: int) -> None:
    if _pixel_count(size) > max_pixels:
        raise _too_large(what, name, size, max_pixels)
    if size[0] < 1 or size[1] < 1:
        raise InputError(f"cannot read {what} '{name}': it is empty ({size[0]}x{size[1]})")


# --- loading ----------------------------------------------------------------------------------


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image as 8-bit RGB (+ alpha when the source had transparency).

    `source` is a path, encoded file bytes, a Pillow image or an array (HxW, HxWx1, HxWx3, HxWx4
    uint8, or HxW bool). EXIF orientation is applied. Over `max_pixels` (checked from the header,
    before decoding), or unreadable: InputError.
    """
    return _load(source, max_pixels, what="image")


def _load(source: ImageSource, max_pixels: int, *, what: str) -> LoadedImage:
    _check_max_pixels(max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels, what)
    if isinstance(source, Image.Image):
        with _reading(what, "<image>", max_pixels):
            _check_size(what, "<image>", source.size, max_pixels)
            rgb, alpha = _decode(source, may_modify=False)
        return LoadedImage(rgb, alpha, "<image>", source.format)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_file(io.BytesIO(bytes(source)), "<bytes>", max_pixels, what)
    if isinstance(source, (str, os.PathLike)):
        return _from_file(os.fspath(source), os.fspath(source), max_pixels, what)
    raise TypeError(f"cannot load an image from {type(source).__name__}")


def _from_file(file: str | io.BytesIO, name: str, max_pixels: int, what: str) -> LoadedImage:
    with _reading(what, name, max_pixels):
        if isinstance(file, str) and os.path.isdir(file):
            raise IsADirectoryError(file)
        with Image.open(file) as im:
            # Redundant while the wrapper is installed; kept so the limit holds without it.
            _check_size(what, name, im.size, max_pixels)
            image_format = im.format
            rgb, alpha = _decode(im, may_modify=True)
    return LoadedImage(rgb, alpha, name, image_format)


@contextlib.contextmanager
def _reading(what: str, name: str, max_pixels: int) -> Iterator[None]:
    """Apply the pixel limit, and turn any failure to read into a one-line InputError."""
    try:
        with pixel_limit(max_pixels):
            yield
    except _PixelLimitExceeded as exc:
        raise _too_large(what, name, exc.size, max_pixels) from None
    except Image.DecompressionBombError as exc:  # only if the wrapper could not be installed
        raise InputError(f"cannot read {what} '{name}': {_one_line(exc)}") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"cannot read {what} '{name}': {_read_failure(exc)}") from exc


def _read_failure(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if "truncated" in str(exc):
        return "the file is truncated"
    return f"corrupt or unsupported image ({_one_line(exc)})"


def _decode(im: Image.Image, *, may_modify: bool) -> tuple[np.ndarray, np.ndarray | None]:
    im.load()
    if may_modify:
        ImageOps.exif_transpose(im, in_place=True)
    else:
        im = ImageOps.exif_transpose(im)  # a copy: a caller's Image is left as it was
    return _to_rgb_alpha(im)


def _to_rgb_alpha(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    if im.mode in _HIGH_DEPTH_GRAY_MODES:
        return _high_depth_gray(im)
    # Transparency is kept only when the source has it: an alpha band, or a tRNS/GIF colour key.
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = np.asarray(im if im.mode == "RGBA" else im.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    # convert() covers L, 1, P, CMYK, YCbCr, RGBX, ...; LAB without a colour engine fails here.
    rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    return np.array(rgb, dtype=np.uint8, order="C"), None


def _high_depth_gray(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    values = np.asarray(im)
    gray = _scale_to_8bit(values, im.mode)
    alpha = None
    key = im.info.get("transparency")
    if isinstance(key, int):  # PNG tRNS on 16-bit grayscale: one fully transparent value
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
    return _gray_to_rgb(gray), alpha


def _scale_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit and float grayscale to 0..255 by scaling, never by clipping."""
    if mode.startswith("I;16"):
        return _scale_16bit(values)
    if mode == "I":
        # Pillow gives 16-bit PNG/PPM data as "I" too: those fit 0..65535. Other ranges are stretched.
        if values.min() >= 0 and values.max() <= 65535:
            return _scale_16bit(values)
        return _stretch(values.astype(np.float64))
    floats = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if floats.min() >= 0.0 and floats.max() <= 1.0:  # the usual float convention
        return np.rint(floats * 255.0).astype(np.uint8)
    return _stretch(floats)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    # round(v * 255 / 65535) in integers: 65535 -> 255, 32896 -> 128, 0 -> 0.
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def _from_array(array: np.ndarray, max_pixels: int, what: str) -> LoadedImage:
    if array.ndim in (2, 3):
        _check_size(what, "<array>", (array.shape[1], array.shape[0]), max_pixels)
    # Copies throughout: the caller's array must not change when the result is edited.
    if array.ndim == 2 and array.dtype == np.bool_:
        return LoadedImage(_gray_to_rgb(array.astype(np.uint8) * 255), None, "<array>", None)
    if array.dtype == np.uint8 and array.ndim == 2:
        return LoadedImage(_gray_to_rgb(array), None, "<array>", None)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] in (1, 3, 4):
        channels = array.shape[2]
        if channels == 1:
            return LoadedImage(_gray_to_rgb(array[:, :, 0]), None, "<array>", None)
        rgb = np.array(array[:, :, :3], order="C")
        alpha = np.array(array[:, :, 3], order="C") if channels == 4 else None
        return LoadedImage(rgb, alpha, "<array>", None)
    raise InputError(
        f"cannot use an array of shape {array.shape} and dtype {array.dtype} for the {what}: "
        "expected HxW, HxWx1, HxWx3 or HxWx4 uint8, or HxW bool"
    )


# --- masks ------------------------------------------------------------------------------------


def load_mask(
    source: ImageSource,
    *,
    mode: str = "white",
    size: tuple[int, int] | None = None,
    threshold: int = 128,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a mask as an HxW bool array, True where the image is to be filled.

    ``white``: luminance >= threshold is filled (the usual convention); ``black``: luminance <
    threshold (mural restoration); ``alpha``: alpha < threshold, i.e. transparent pixels. In
    white/black mode a mask with transparency is first composited over black, because web mask
    painters export strokes on a transparent background. With `size` (width, height) given and
    different, the mask is resized nearest-neighbour, with a notice.
    """
    _check_mask_mode(mode)
    _check_threshold(threshold)

    def fill(loaded: LoadedImage) -> np.ndarray:
        if mode == "alpha":
            return mask_from_alpha(loaded.alpha, threshold)  # type: ignore[arg-type]
        luminance = _luminance_over_black(loaded.rgb, loaded.alpha)
        return luminance >= threshold if mode == "white" else luminance < threshold

    return _read_mask(source, mode, size, max_pixels, fill)


def load_mask_levels(
    source: ImageSource,
    *,
    mode: str = "white",
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a mask as grey levels (soft inpainting): HxW float32 in [0, 1], how much each pixel may change.

    The same polarity as `load_mask`, without a threshold: ``white``: luminance / 255; ``black``: 1 -
    luminance / 255; ``alpha``: 1 - alpha / 255. A 0/255 mask gives exactly `load_mask`'s pixels as
    0 and 1. Resizing to `size` is nearest neighbour, with a notice, as there.
    """
    _check_mask_mode(mode)

    def level(loaded: LoadedImage) -> np.ndarray:
        if mode == "alpha":
            return levels_from_alpha(loaded.alpha)  # type: ignore[arg-type]
        luminance = _luminance_over_black(loaded.rgb, loaded.alpha).astype(np.float32) / np.float32(255)
        return luminance if mode == "white" else np.float32(1) - luminance

    return np.ascontiguousarray(_read_mask(source, mode, size, max_pixels, level), dtype=np.float32)


def levels_from_alpha(alpha: np.ndarray) -> np.ndarray:
    """Soft-mask levels of an alpha channel: transparent (0) changes fully, opaque (255) not at all."""
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise InputError(f"an alpha channel must be HxW uint8, not {alpha.shape} {alpha.dtype}")
    return np.float32(1) - alpha.astype(np.float32) / np.float32(255)


def mask_from_alpha(alpha: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Fill where alpha < threshold: transparent pixels are the ones to fill."""
    _check_threshold(threshold)
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise InputError(f"an alpha channel must be HxW uint8, not {alpha.shape} {alpha.dtype}")
    return np.ascontiguousarray(alpha < threshold)


def _read_mask(
    source: ImageSource, mode: str, size: tuple[int, int] | None, max_pixels: int,
    values: Callable[[LoadedImage], np.ndarray],
) -> np.ndarray:
    """A mask file's `values` (thresholded or levels), its alpha checked for mode alpha, resized to `size`
    (width, height) nearest-neighbour with a notice when it differs."""
    loaded = _load(source, max_pixels, what="mask")
    if mode == "alpha" and loaded.alpha is None:
        raise InputError(
            f"mask mode 'alpha' needs a mask with transparency (a PNG or WebP with an alpha "
            f"channel), and '{loaded.source}' has none: use mask mode white or black"
        )
    mask = values(loaded)
    if size is not None and tuple(size) != loaded.size:
        width, height = _checked_size(size)
        notice(
            f"mask {loaded.source} is {loaded.size[0]}x{loaded.size[1]} but the image is "
            f"{width}x{height}: resized it (nearest neighbour)"
        )
        mask = _resize_nearest(mask, width, height)
    return mask


def _check_mask_mode(mode: str) -> None:
    if mode not in MASK_MODES:
        raise InputError(f"unknown mask mode {mode!r}: use one of {', '.join(MASK_MODES)}")


def _check_threshold(threshold: int) -> None:
    valid = isinstance(threshold, (int, np.integer)) and not isinstance(threshold, bool)
    if not valid or not 0 <= threshold <= 255:
        raise InputError(f"the mask threshold must be a whole number from 0 to 255, not {threshold!r}")


def _checked_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise InputError(f"a size must be (width, height) in positive pixels, not {size!r}")
    return int(size[0]), int(size[1])


def _luminance_over_black(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    # ITU-R 601 weights (Pillow's "L"), in integers so gray values come out unchanged.
    luminance = rgb[:, :, 0].astype(np.uint32) * 299
    luminance += rgb[:, :, 1].astype(np.uint32) * 587
    luminance += rgb[:, :, 2].astype(np.uint32) * 114
    luminance = (luminance + 500) // 1000
    if alpha is not None:
        # Over black, every channel is scaled by alpha; luminance is linear, so scale it once.
        luminance = (luminance * alpha + 127) // 255
    return luminance


def _resize_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    # Sample each target pixel's centre, as Pillow's NEAREST does.
    rows = ((2 * np.arange(height) + 1) * mask.shape[0]) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * mask.shape[1]) // (2 * width)
    return np.ascontiguousarray(mask[rows[:, np.newaxis], cols[np.newaxis, :]])


# --- saving -----------------------------------------------------------------------------------


def encode_image(
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    format: str = "png",
    quality: int = 95,
    parameters: str | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> bytes:
    """Encode to PNG, JPEG or WebP bytes with the infotext and recipe embedded (see metadata.py).

    Alpha is kept for PNG and WebP; JPEG drops it with a notice.
    """
    pillow_format = _pillow_format(format)
    _check_quality(quality)
    if pillow_format == "JPEG" and alpha is not None:
        notice("JPEG cannot store transparency: dropped the alpha channel (save as PNG or WebP to keep it)")
        alpha = None
    im = Image.fromarray(_pixels(rgb, alpha))
    options = _metadata_options(pillow_format, parameters, recipe)
    if pillow_format != "PNG":
        options["quality"] = quality
    buffer = io.BytesIO()
    im.save(buffer, pillow_format, **options)
    return buffer.getvalue()


def save_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    format: str | None = None,
    quality: int = 95,
    parameters: str | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> Path:
    """Encode and write atomically; the format comes from `format` or else the path's suffix.

    The image is fully encoded before the file system is touched, so an encoding failure leaves
    an existing file at `path` as it was.
    """
    target = Path(path)
    chosen = format if format is not None else _format_from_suffix(target)
    data = encode_image(
        rgb, alpha=alpha, format=chosen, quality=quality, parameters=parameters, recipe=recipe
    )
    return atomic_write_bytes(target, data)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never a partial one.

    Writes a hidden temporary file in the same directory (same file system, so the final rename is
    atomic) and renames it over `path`; parent directories are created. On failure the temporary
    file is removed, `path` is untouched, and OSErrors become InputError. A process killed mid-write
    leaves its temporary file behind: `remove_stale_temporaries` removes it (the writer holds a lock
    on it until the rename, so a live writer's file is never taken).
    """
    with atomic_writer(path) as file:
        file.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[io.BufferedWriter]:
    """A binary file to write `path` through, as `atomic_write_bytes` does: it becomes `path` when the
    block ends, and is removed (leaving `path` as it was) when the block raises. For writers that
    stream, such as a video encoder, rather than hand over bytes."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = _create_temporary(target)
    except OSError as exc:
        raise InputError(f"cannot write '{target}': {_write_failure(exc)}") from exc
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # the rename must not land before the data on a crash
            if fcntl is not None:
                os.replace(temporary, target)  # still locked, so no clean-up can take the file first
        if fcntl is None:
            os.replace(temporary, target)  # Windows cannot rename an open file
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write '{target}': {_write_failure(exc)}") from exc
        raise


def _create_temporary(target: Path) -> tuple[int, Path]:
    # os.open with 0o666 lets the umask decide permissions, like an ordinary new file; mkstemp
    # would leave the result readable by its owner only. The dot and ".tmp" keep globs such as
    # "*.png" from picking up a file that is still being written.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temporary = target.with_name(f".{target.name[:200]}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            with contextlib.suppress(OSError):  # a file system without locks: age alone then tells
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return descriptor, temporary
    raise FileExistsError(f"no free temporary name next to {target}")


def remove_stale_temporaries(folder: str | os.PathLike[str], *, target: str | None = None) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in `folder`; return their paths.

    Only `atomic_write_bytes`' own names are considered (of `target`'s writes when given, else of
    any), and only files no live process is writing: unlocked (POSIX) or deletable (Windows), and
    untouched for a couple of seconds. So it is safe while other processes write to the same folder.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed  # no folder yet: nothing was left in it
    for entry in entries:
        match = _TEMPORARY_NAME.fullmatch(entry.name)
        if match is None or (target is not None and match["target"] != target[:200]):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and _remove_if_stale(Path(entry.path)):
                removed.append(Path(entry.path))
    return removed


def _remove_if_stale(path: Path) -> bool:
    if time.time() - path.stat().st_mtime < _STALE_AFTER_SECONDS:
        return False
    if fcntl is None:
        os.unlink(path)  # fails while a writer still has it open
        return True
    descriptor = os.open(path, os.O_RDWR)  # read-write: NFS emulates flock with locks that need it
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        os.unlink(path)
        return True
    finally:
        os.close(descriptor)


def _write_failure(exc: OSError) -> str:
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or _one_line(exc)


def _pillow_format(format: str) -> str:
    pillow_format = _SAVE_FORMATS.get(str(format).lower().lstrip("."))
    if pillow_format is None:
        raise InputError(f"unknown image format {format!r}: use png, jpeg (jpg) or webp")
    return pillow_format


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in _SAVE_FORMATS:
        shown = path.suffix or "no extension"
        raise InputError(
            f"cannot save '{path}': unknown image format ({shown}): use .png, .jpg/.jpeg or .webp"
        )
    return suffix


def _check_quality(quality: int) -> None:
    valid = isinstance(quality, (int, np.integer)) and not isinstance(quality, bool)
    if not valid or not 1 <= quality <= 100:
        raise InputError(f"quality must be a whole number from 1 to 100, not {quality!r}")


def _pixels(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    # Arrays come from engines, not users: a wrong one is a bug, hence ValueError.
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be an HxWx3 uint8 array, not {getattr(rgb, 'shape', rgb)!r}")
    if alpha is None:
        return np.ascontiguousarray(rgb)
    if alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha must be an HxW uint8 array matching rgb {rgb.shape[:2]}, not {alpha.shape}")
    return np.dstack((rgb, alpha))


def _metadata_options(
    pillow_format: str, parameters: str | None, recipe: Mapping[str, Any] | None
) -> dict[str, Any]:
    if parameters is None and recipe is None:
        return {}
    if pillow_format == "PNG":
        return {"pnginfo": metadata.embed_png_info(parameters, recipe)}
    exif = metadata.exif_for(parameters, recipe)
    if pillow_format == "JPEG" and len(exif) > _JPEG_MAX_EXIF_BYTES and recipe is not None:
        notice("the recipe does not fit in JPEG's 64 KiB EXIF: saved without it (PNG keeps it)")
        exif = metadata.exif_for(parameters, None)
    if pillow_format == "JPEG" and len(exif) > _JPEG_MAX_EXIF_BYTES:
        notice("the prompt does not fit in JPEG's 64 KiB EXIF: saved without it (PNG keeps it)")
        exif = b""
    return {"exif": exif} if exif else {}


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
