"""Behaviour of canvaslab.core.image: loading every kind of image and mask, and saving atomically."""

from __future__ import annotations

import io
import logging
import os
import struct
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canvaslab.core import image as image_module
from canvaslab.core.image import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    atomic_write_bytes,
    encode_image,
    load_image,
    load_mask,
    mask_from_alpha,
    save_image,
)
from canvaslab.errors import InputError

# --- helpers ----------------------------------------------------------------------------------


def png_bytes(im: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "PNG", **options)
    return buffer.getvalue()


def raw_png(array: np.ndarray, color_type: int, *, bit_depth: int = 16, idat: bool = True) -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit RGB, headers without data)."""
    height, width = array.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunks = chunk(b"IHDR", header)
    if idat:
        rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))
        chunks += chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + chunks + chunk(b"IEND", b"")


def jpeg_with_orientation(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def left_red_right_blue(width: int = 32, height: int = 16) -> Image.Image:
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(array)


def is_red(pixel: np.ndarray) -> bool:
    return pixel[0] > 200 and pixel[2] < 60


def is_blue(pixel: np.ndarray) -> bool:
    return pixel[2] > 200 and pixel[0] < 60


# --- modes ------------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    loaded = load_image(path)
    assert isinstance(loaded, LoadedImage)
    assert np.array_equal(loaded.rgb, pixels)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.flags.c_contiguous
    assert loaded.rgb.flags.writeable
    assert loaded.alpha is None
    assert loaded.size == (7, 5)
    assert loaded.format == "PNG"
    assert loaded.source == str(path)


def test_rgba_keeps_alpha() -> None:
    pixels = np.zeros((2, 3, 4), np.uint8)
    pixels[..., :3] = (10, 20, 30)
    pixels[..., 3] = [[0, 128, 255], [255, 1, 0]]
    loaded = load_image(png_bytes(Image.fromarray(pixels)))
    assert loaded.source == "<bytes>"
    assert np.array_equal(loaded.rgb[0, 0], [10, 20, 30])
    assert loaded.alpha is not None and loaded.alpha.flags.c_contiguous
    assert np.array_equal(loaded.alpha, pixels[..., 3])


@pytest.mark.parametrize(
    ("mode", "value", "expected_rgb"),
    [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255)), ("1", 0, (0, 0, 0))],
)
def test_grayscale_modes_become_replicated_rgb(mode: str, value: int, expected_rgb: tuple) -> None:
    loaded = load_image(png_bytes(Image.new(mode, (3, 2), value)))
    assert loaded.rgb.shape == (2, 3, 3)
    assert (loaded.rgb == expected_rgb).all()
    assert loaded.alpha is None


def test_la_gives_gray_rgb_and_alpha() -> None:
    loaded = load_image(png_bytes(Image.new("LA", (2, 2), (90, 40))))
    assert (loaded.rgb == 90).all()
    assert loaded.alpha is not None and (loaded.alpha == 40).all()


def palette_image(transparent_index: int | None) -> Image.Image:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    if transparent_index is not None:
        im.info["transparency"] = transparent_index
    return im


def test_palette_without_transparency_has_no_alpha() -> None:
    loaded = load_image(png_bytes(palette_image(None)))
    assert np.array_equal(loaded.rgb[0], [[255, 0, 0], [0, 255, 0]])
    assert loaded.alpha is None


@pytest.mark.parametrize("file_format", ["PNG", "GIF"])
def test_palette_with_transparency_keeps_alpha(file_format: str) -> None:
    im = palette_image(1)
    buffer = io.BytesIO()
    im.save(buffer, file_format, transparency=1)
    loaded = load_image(buffer.getvalue())
    assert np.array_equal(loaded.rgb[0, 0], [255, 0, 0])
    assert loaded.alpha is not None
    assert list(loaded.alpha[0]) == [255, 0]


def test_gray_and_rgb_with_trns_colour_key_keep_alpha() -> None:
    gray = Image.new("L", (2, 1), 0)
    gray.putpixel((1, 0), 9)
    loaded = load_image(png_bytes(gray, transparency=9))
    assert loaded.alpha is not None and list(loaded.alpha[0]) == [255, 0]

    rgb = Image.new("RGB", (2, 1), (1, 2, 3))
    rgb.putpixel((0, 0), (4, 5, 6))
    loaded = load_image(png_bytes(rgb, transparency=(1, 2, 3)))
    assert loaded.alpha is not None and list(loaded.alpha[0]) == [255, 0]


def test_cmyk_white_and_black() -> None:
    im = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 0, 255))
    buffer = io.BytesIO()
    im.save(buffer, "TIFF")
    loaded = load_image(buffer.getvalue())
    assert np.array_equal(loaded.rgb[0], [[255, 255, 255], [0, 0, 0]])
    assert loaded.alpha is None


def test_cmyk_jpeg_white() -> None:
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(buffer, "JPEG", quality=95)
    loaded = load_image(buffer.getvalue())
    assert loaded.rgb.min() >= 250


def test_16bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    loaded = load_image(png_bytes(Image.fromarray(values)))
    assert list(loaded.rgb[0, :, 0]) == [0, 1, 128, 255]
    assert (loaded.rgb[..., 0] == loaded.rgb[..., 2]).all()


def test_16bit_rgb_png() -> None:
    values = np.array([[[65535, 0, 32896], [257, 65535, 0]]], dtype=np.uint16)
    loaded = load_image(raw_png(values, color_type=2))
    assert np.abs(loaded.rgb.astype(int) - np.rint(values / 257)).max() <= 1
    assert loaded.alpha is None


def test_float_grayscale_in_unit_range_is_scaled() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(buffer, "TIFF")
    loaded = load_image(buffer.getvalue())
    assert list(loaded.rgb[0, :, 0]) == [0, 128, 255]


def test_float_and_int32_outside_the_usual_range_are_stretched() -> None:
    for values in (np.array([[-1.0, 1.0, 3.0]], np.float32), np.array([[-5, 30000, 70000]], np.int32)):
        buffer = io.BytesIO()
        Image.fromarray(values).save(buffer, "TIFF")
        gray = load_image(buffer.getvalue()).rgb[0, :, 0]
        assert gray[0] == 0 and gray[2] == 255 and 0 < gray[1] < 255


def test_int32_in_16bit_range_is_scaled_like_16bit() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0, 32896, 65535]], np.int32)).save(buffer, "TIFF")
    assert list(load_image(buffer.getvalue()).rgb[0, :, 0]) == [0, 128, 255]


# --- EXIF orientation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "shape", "first", "last"),
    [
        (3, (16, 32, 3), is_blue, is_red),  # 180 degrees: red moves to the right
        (6, (32, 16, 3), is_red, is_blue),  # 90 degrees clockwise: the left edge becomes the top
        (8, (32, 16, 3), is_blue, is_red),  # 90 degrees counter-clockwise: the left edge goes down
    ],
)
def test_exif_orientation_is_applied(orientation: int, shape: tuple, first, last) -> None:  # noqa: ANN001
    loaded = load_image(jpeg_with_orientation(left_red_right_blue(), orientation))
    assert loaded.rgb.shape == shape
    # Colours along the long side: left to right when landscape, top to bottom when portrait.
    along = loaded.rgb[8, :] if shape[1] > shape[0] else loaded.rgb[:, 8]
    assert first(along[2]) and last(along[-3])


def test_pillow_image_input_is_oriented_but_not_modified() -> None:
    original = Image.open(io.BytesIO(jpeg_with_orientation(left_red_right_blue(), 6)))
    loaded = load_image(original)
    assert loaded.rgb.shape == (32, 16, 3)
    assert original.size == (32, 16)
    assert loaded.source == "<image>"


# --- pixel limit ------------------------------------------------------------------------------


def one_bit_bomb(width: int, height: int) -> bytes:
    """A black 1-bit PNG: a few KB on disk, width x height pixels once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height, 9))
    return b"\x89PNG\r\n\x1a\n" + data + chunk(b"IEND", b"")


def test_default_limit_refuses_a_small_file_that_decodes_to_144_megapixels(tmp_path: Path) -> None:
    """Issue 10: a 17 KB PNG of 12000x12000 passed the old default (179 MP) and cost 29 s and 2.75 GB."""
    path = tmp_path / "bomb.png"
    path.write_bytes(one_bit_bomb(12000, 12000))
    assert path.stat().st_size < 20_000
    with pytest.raises(InputError, match="12000x12000") as caught:
        load_image(path)
    assert "--max-pixels" in str(caught.value)
    with pytest.raises(InputError, match="12000x12000"):
        load_mask(path)


def test_default_limit_takes_every_full_frame_camera_photo() -> None:
    assert 9504 * 6336 <= DEFAULT_MAX_PIXELS < 12000 * 12000  # 61 MP (Sony A7R V) in, the bomb above out


def test_over_the_limit_is_a_one_line_input_error(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 60)).save(path)
    with pytest.raises(InputError) as caught:
        load_image(path, max_pixels=5000)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and "100x60" in message
    assert "6,000" in message and "5,000" in message and "--max-pixels" in message


def test_limit_is_checked_from_the_header_before_decoding() -> None:
    # Claims 100000x100000 but holds no pixel data: decoding would fail, so only a header
    # check can produce the limit error.
    header_only = raw_png(np.zeros((1, 1), np.uint16), color_type=0, idat=False)
    header_only = header_only.replace(struct.pack(">II", 1, 1), struct.pack(">II", 100_000, 100_000), 1)
    header_only = _fix_ihdr_crc(header_only)
    with pytest.raises(InputError, match="100000x100000"):
        load_image(header_only)


def _fix_ihdr_crc(png: bytes) -> bytes:
    start = 8 + 4  # signature, length
    data = png[start : start + 4 + 13]
    return png[: start + 17] + struct.pack(">I", zlib.crc32(data)) + png[start + 21 :]


def test_pillows_global_limit_neither_blocks_nor_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    data = png_bytes(Image.new("RGB", (40, 40)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(data).size == (40, 40)
        with pytest.raises(InputError, match="--max-pixels"):
            load_image(data, max_pixels=100)


def test_pillows_own_guard_still_works_outside_canvaslab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png_bytes(Image.new("RGB", (40, 40)))))


def test_pixel_limit_context_for_direct_pillow_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    data = png_bytes(Image.new("RGB", (40, 40)))
    with image_module.pixel_limit(100), pytest.raises(InputError, match="40x40"):
        Image.open(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with image_module.pixel_limit(None):
            assert Image.open(io.BytesIO(data)).size == (40, 40)


def test_limit_is_per_thread() -> None:
    data = png_bytes(Image.new("RGB", (40, 40)))
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def run(name: str, max_pixels: int) -> None:
        barrier.wait()
        for _ in range(20):
            try:
                outcomes[name] = load_image(data, max_pixels=max_pixels).size
            except InputError as exc:
                outcomes[name] = exc
                return

    threads = [
        threading.Thread(target=run, args=("strict", 100)),
        threading.Thread(target=run, args=("lenient", 10_000)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert isinstance(outcomes["strict"], InputError)
    assert outcomes["lenient"] == (40, 40)


def test_bad_limit_is_rejected() -> None:
    with pytest.raises(InputError, match="positive"):
        load_image(np.zeros((2, 2), np.uint8), max_pixels=0)


# --- paths and errors -------------------------------------------------------------------------


def test_unicode_path(tmp_path: Path) -> None:
    path = tmp_path / "фото 画像.png"
    Image.new("RGB", (3, 2), (1, 2, 3)).save(path)
    loaded = load_image(path)
    assert loaded.size == (3, 2)
    assert loaded.source == str(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(InputError, match=r"cannot read image '.*nope\.png': no such file"):
        load_image(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read image .*: it is a directory"):
        load_image(tmp_path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("just some text")
    with pytest.raises(InputError, match="cannot read image .*: not an image"):
        load_image(path)


def test_truncated_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read image .*cut.png"):
        load_image(path)


def test_corrupt_image_data() -> None:
    data = bytearray(png_bytes(Image.new("RGB", (8, 8), (9, 9, 9))))
    idat = data.index(b"IDAT")
    data[idat + 6 : idat + 12] = b"\xff" * 6  # garble the compressed pixels
    with pytest.raises(InputError, match="cannot read image '<bytes>'"):
        load_image(bytes(data))


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError):
        load_image(42)  # type: ignore[arg-type]


# --- arrays -----------------------------------------------------------------------------------


def test_array_inputs() -> None:
    gray = np.array([[0, 200]], np.uint8)
    assert (load_image(gray).rgb[0, 1] == 200).all()
    assert (load_image(gray[..., np.newaxis]).rgb[0, 1] == 200).all()
    assert list(load_image(np.array([[True, False]])).rgb[0, :, 0]) == [255, 0]

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 7
    loaded = load_image(rgba)
    assert loaded.source == "<array>" and loaded.format is None
    assert loaded.alpha is not None and (loaded.alpha == 7).all()


def test_array_result_does_not_alias_the_input() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    loaded = load_image(rgb)
    loaded.rgb[:] = 9
    assert (rgb == 0).all()


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 2), np.float32),
        np.zeros((2, 2, 2), np.uint8),
        np.zeros(4, np.uint8),
        np.zeros((2, 2, 3), bool),
    ],
)
def test_bad_arrays_are_input_errors(array: np.ndarray) -> None:
    with pytest.raises(InputError, match="HxW"):
        load_image(array)


# --- masks ------------------------------------------------------------------------------------


GRAY_STEPS = np.array([[0, 127, 128, 255]], np.uint8)


def test_white_mode_and_threshold() -> None:
    assert list(load_mask(GRAY_STEPS)[0]) == [False, False, True, True]
    assert list(load_mask(GRAY_STEPS, threshold=127)[0]) == [False, True, True, True]


def test_black_mode() -> None:
    assert list(load_mask(GRAY_STEPS, mode="black")[0]) == [True, True, False, False]
    assert list(load_mask(GRAY_STEPS, mode="black", threshold=127)[0]) == [True, False, False, False]


def test_alpha_mode_fills_transparent_pixels() -> None:
    rgba = np.full((1, 4, 4), 255, np.uint8)
    rgba[0, :, 3] = GRAY_STEPS[0]
    mask = load_mask(png_bytes(Image.fromarray(rgba)), mode="alpha")
    assert mask.dtype == np.bool_ and mask.shape == (1, 4)
    assert list(mask[0]) == [True, True, False, False]


def test_alpha_mode_without_alpha_explains(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("L", (2, 2)).save(path)
    with pytest.raises(InputError, match="mask mode 'alpha' needs .*transparency"):
        load_mask(path, mode="alpha")


def test_rgba_mask_is_composited_over_black() -> None:
    # A web painter's export: white strokes on a transparent (but white) background.
    rgba = np.full((1, 3, 4), 255, np.uint8)
    rgba[0, :, 3] = [255, 0, 100]
    mask = load_mask(png_bytes(Image.fromarray(rgba)))
    assert list(mask[0]) == [True, False, False]


def test_mask_from_alpha() -> None:
    assert list(mask_from_alpha(GRAY_STEPS)[0]) == [True, True, False, False]
    assert list(mask_from_alpha(GRAY_STEPS, threshold=1)[0]) == [True, False, False, False]


def test_unknown_mask_mode_lists_the_allowed_ones() -> None:
    with pytest.raises(InputError, match="white, black, alpha"):
        load_mask(GRAY_STEPS, mode="grey")


@pytest.mark.parametrize("threshold", [-1, 256, 1.5, True])
def test_bad_threshold(threshold: object) -> None:
    with pytest.raises(InputError, match="threshold"):
        load_mask(GRAY_STEPS, threshold=threshold)  # type: ignore[arg-type]


def test_mask_is_resized_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    checker = np.array([[255, 0], [0, 255]], np.uint8)
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        mask = load_mask(checker, size=(4, 6))
    assert mask.shape == (6, 4)
    expected = np.kron(np.array([[1, 0], [0, 1]]), np.ones((3, 2))).astype(bool)
    assert np.array_equal(mask, expected)
    messages = [r.getMessage() for r in caplog.records if r.name == "canvaslab"]
    assert messages == ["mask <array> is 2x2 but the image is 4x6: resized it (nearest neighbour)"]


def test_mask_of_the_right_size_gives_no_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        load_mask(GRAY_STEPS, size=(4, 1))
    assert not [r for r in caplog.records if r.name == "canvaslab"]


def test_mask_orientation_is_applied() -> None:
    mask = load_mask(jpeg_with_orientation(left_red_right_blue(), 6), mode="black", threshold=50)
    assert mask.shape == (32, 16)


def test_mask_errors_say_mask(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read mask"):
        load_mask(tmp_path / "missing.png")


def test_mask_pixel_limit_can_be_raised() -> None:
    big = np.zeros((10, 10), np.uint8)
    with pytest.raises(InputError, match="mask '<array>'"):
        load_mask(big, max_pixels=50)
    assert load_mask(big, max_pixels=100).shape == (10, 10)


# --- saving -----------------------------------------------------------------------------------


RGB = np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)
ALPHA = np.tile(np.arange(0, 250, 25, dtype=np.uint8), (12, 1))


def test_save_png_with_alpha_round_trips(tmp_path: Path) -> None:
    path = save_image(tmp_path / "out.png", RGB, alpha=ALPHA)
    assert path == tmp_path / "out.png"
    loaded = load_image(path)
    assert np.array_equal(loaded.rgb, RGB) and np.array_equal(loaded.alpha, ALPHA)


def test_save_webp_keeps_alpha(tmp_path: Path) -> None:
    flat = np.full((16, 16, 3), 120, np.uint8)
    alpha = np.full((16, 16), 255, np.uint8)
    alpha[:, :8] = 0
    loaded = load_image(save_image(tmp_path / "out.webp", flat, alpha=alpha, quality=90))
    assert loaded.format == "WEBP"
    assert loaded.alpha is not None and np.array_equal(loaded.alpha, alpha)


def test_save_jpeg_drops_alpha_with_a_notice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        path = save_image(tmp_path / "out.JPG", RGB, alpha=ALPHA)
    assert any("alpha" in r.getMessage() for r in caplog.records)
    loaded = load_image(path)
    assert loaded.format == "JPEG" and loaded.alpha is None


def test_explicit_format_wins_over_the_suffix(tmp_path: Path) -> None:
    path = save_image(tmp_path / "out.png", RGB, format="jpeg")
    assert path.read_bytes()[:2] == b"\xff\xd8"


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.bmp"):
        save_image(tmp_path / "out.bmp", RGB)
    with pytest.raises(InputError, match="'gif'"):
        save_image(tmp_path / "out.png", RGB, format="gif")
    assert not list(tmp_path.iterdir())


def test_save_creates_parent_directories(tmp_path: Path) -> None:
    path = save_image(tmp_path / "a" / "b" / "out.png", RGB)
    assert path.is_file()


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_image(tmp_path / "out.png", RGB)
    save_image(tmp_path / "out.png", RGB)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_failed_encoding_does_not_touch_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(b"old")
    with pytest.raises(ValueError):
        save_image(path, RGB, recipe={"bad": object()})
    with pytest.raises(InputError):
        save_image(path, RGB, quality=0)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_failed_write_removes_the_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(b"old")

    def failing_replace(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_module.os, "replace", failing_replace)
    with pytest.raises(InputError, match="cannot write .*No space left"):
        save_image(path, RGB)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_interrupted_write_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(descriptor: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(image_module.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert not list(tmp_path.iterdir())


def test_writing_over_a_directory_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "out.png").mkdir()
    with pytest.raises(InputError, match="cannot write"):
        save_image(tmp_path / "out.png", RGB)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_write_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = atomic_write_bytes(tmp_path / "x.bin", b"data")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"data"
    assert path.stat().st_mode & 0o777 == 0o640


def test_encode_image_formats() -> None:
    assert encode_image(RGB).startswith(b"\x89PNG\r\n\x1a\n")
    assert encode_image(RGB, format="jpg").startswith(b"\xff\xd8")
    assert encode_image(RGB, format="WebP")[8:12] == b"WEBP"


def test_encode_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError):
        encode_image(RGB.astype(np.float32))
    with pytest.raises(ValueError):
        encode_image(RGB, alpha=np.zeros((3, 3), np.uint8))


def test_stale_temporaries_are_only_old_unlocked_files_of_our_pattern(tmp_path: Path) -> None:
    past = 1_000_000_000
    names = [".out.png.0123abcd.tmp", ".out.png.89abcdef.tmp", "out.png.0123abcd.tmp", ".out.png.tmp", "keep.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (past, past))
    (tmp_path / ".other.png.00000000.tmp").write_bytes(b"just created: maybe not locked yet")
    removed = image_module.remove_stale_temporaries(tmp_path, target="out.png")
    assert sorted(p.name for p in removed) == [".out.png.0123abcd.tmp", ".out.png.89abcdef.tmp"]
    assert image_module.remove_stale_temporaries(tmp_path) == []  # the young one stays
    assert image_module.remove_stale_temporaries(tmp_path / "missing") == []
