"""Behaviour of comparison grids: layout arithmetic, exact placement, letterboxing, labels, files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageFont
from skimage import data

from canvaslab.core.grid import (
    ELLIPSIS,
    comparison_grid,
    fit_text,
    grid_from_files,
    grid_shape,
    label_height,
    make_grid,
    mask_overlay,
    row_label_width,
)
from canvaslab.errors import InputError

WHITE = (255, 255, 255)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random RGB in 1..254 so that it never equals a white or black background by accident."""
    return np.random.default_rng(seed).integers(1, 255, (height, width, 3), dtype=np.uint8)


def is_background(block: np.ndarray, color=WHITE) -> bool:
    return bool(np.all(block == np.asarray(color, np.uint8)))


# --------------------------------------------------------------------------------------------------
# Dimensions


@pytest.mark.parametrize(
    ("sizes", "h_spacing", "v_spacing", "expected_hw"),
    [
        ([[(10, 20)]], 8, 8, (10, 20)),  # one cell: exactly that cell, no margin
        ([[(10, 20), (10, 20), (10, 20)]], 5, 7, (10, 3 * 20 + 2 * 5)),
        ([[(10, 20)], [(10, 20)]], 5, 7, (2 * 10 + 7, 20)),
        ([[(10, 20), (30, 15)], [(5, 5)]], 3, 4, (2 * 30 + 4, 2 * 20 + 3)),  # box = max h, max w
        ([[(12, 12)], [(12, 12), (12, 12), (12, 12)]], 0, 0, (24, 36)),  # ragged rows
        ([[(6, 9), (6, 9)], [(6, 9), (6, 9)]], 1, 2, (6 + 2 + 6, 9 + 1 + 9)),
    ],
)
def test_grid_size_follows_cells_and_spacing(sizes, h_spacing, v_spacing, expected_hw):
    cells = [[noise(h, w) for h, w in row] for row in sizes]
    grid = make_grid(cells, h_spacing=h_spacing, v_spacing=v_spacing)
    assert grid.shape == (*expected_hw, 3)
    assert grid.dtype == np.uint8


def test_cell_size_overrides_the_box():
    grid = make_grid([[noise(10, 10), noise(50, 50)]], h_spacing=2, cell_size=(30, 20))
    assert grid.shape == (20, 2 * 30 + 2, 3)


def test_label_strips_add_exact_sizes():
    size = 14
    cells = [[noise(40, 60), noise(40, 60)], [noise(40, 60)]]
    base = make_grid(cells, h_spacing=4, v_spacing=6, label_size=size)
    strip = label_height(size)
    with_cols = make_grid(cells, h_spacing=4, v_spacing=6, label_size=size, col_labels=["a", "b"])
    assert with_cols.shape == (base.shape[0] + strip, base.shape[1], 3)

    row_names = ["seed 1", "seed 22"]
    with_rows = make_grid(cells, h_spacing=4, v_spacing=6, label_size=size, row_labels=row_names)
    expected_strip = row_label_width(row_names, size, 60)
    assert with_rows.shape == (base.shape[0], base.shape[1] + expected_strip, 3)

    with_captions = make_grid(cells, h_spacing=4, v_spacing=6, label_size=size, cell_labels=[["x"], ["y"]])
    assert with_captions.shape == (base.shape[0] + 2 * strip, base.shape[1], 3)


def test_label_metrics_are_sane_and_follow_the_font():
    size = 16
    font = ImageFont.load_default(size=size)
    assert size < label_height(size) < 3 * size
    text_width = math.ceil(font.getlength("seed 42"))
    pad = (row_label_width(["seed 42"], size, 500) - text_width) / 2
    assert pad >= 2 and pad == int(pad)
    # A row label wider than the cell is capped at the cell width (then truncated when drawn).
    assert row_label_width(["x" * 200], size, 50) == 50 + 2 * int(pad)


# --------------------------------------------------------------------------------------------------
# Placement


def test_cells_are_copied_pixel_exact_at_their_offsets_with_background_in_gaps():
    h, w, hs, vs = 12, 17, 5, 3
    cells = [[noise(h, w, seed=3 * r + c) for c in range(3)] for r in range(2)]
    grid = make_grid(cells, h_spacing=hs, v_spacing=vs, background=(0, 128, 255))
    for r in range(2):
        for c in range(3):
            top, left = r * (h + vs), c * (w + hs)
            np.testing.assert_array_equal(grid[top : top + h, left : left + w], cells[r][c])
    for c in range(2):
        gap = grid[:, c * (w + hs) + w : (c + 1) * (w + hs)]
        assert is_background(gap, (0, 128, 255))
    assert is_background(grid[h : h + vs, :], (0, 128, 255))


def test_none_and_missing_cells_stay_blank():
    a, b = noise(8, 8, 1), noise(8, 8, 2)
    grid = make_grid([[a, None, b], [None]], h_spacing=2, v_spacing=2)
    assert grid.shape == (18, 28, 3)
    np.testing.assert_array_equal(grid[0:8, 0:8], a)
    assert is_background(grid[0:8, 10:18])
    np.testing.assert_array_equal(grid[0:8, 20:28], b)
    assert is_background(grid[10:18, :])


def test_different_aspect_cell_is_letterboxed_and_centred():
    wide = noise(20, 40, 1)
    square = np.full((10, 10, 3), (200, 30, 60), np.uint8)
    grid = make_grid([[wide, square]], h_spacing=0, background=(0, 0, 0))
    assert grid.shape == (20, 80, 3)
    cell = grid[:, 40:80]
    # 10x10 in a 40x20 box scales to 20x20 and sits in the middle: 10 columns of border each side.
    assert is_background(cell[:, :10], (0, 0, 0)) and is_background(cell[:, 30:], (0, 0, 0))
    np.testing.assert_array_equal(cell[:, 10:30], np.full((20, 20, 3), (200, 30, 60), np.uint8))


def test_cell_that_fits_without_scaling_is_not_resampled():
    big, narrow = noise(20, 40, 1), noise(20, 30, 2)
    grid = make_grid([[big, narrow]], h_spacing=0)
    # Fitted size of `narrow` is its own size (scale 1): copied as is, centred with 5 columns each side.
    np.testing.assert_array_equal(grid[:, 40 + 5 : 40 + 35], narrow)
    assert is_background(grid[:, 40:45]) and is_background(grid[:, 75:80])


def test_accepted_cell_forms():
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4)
    mask = np.eye(4, dtype=bool)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    grid = make_grid([[grey, mask, rgba]], h_spacing=0, background=(0, 0, 255))
    np.testing.assert_array_equal(grid[:, 0:4, 1], grey)
    np.testing.assert_array_equal(grid[:, 4:8, 0], np.where(mask, 255, 0))
    assert is_background(grid[:2, 8:12], (200, 0, 0)) and is_background(grid[2:, 8:12], (0, 0, 255))


# --------------------------------------------------------------------------------------------------
# Labels


def test_column_labels_change_only_their_strip():
    cells = [[noise(30, 50, 1), noise(30, 50, 2)], [noise(30, 50, 3)]]
    size = 12
    plain = make_grid(cells, h_spacing=6, v_spacing=6, label_size=size)
    labelled = make_grid(cells, h_spacing=6, v_spacing=6, label_size=size, col_labels=["", "result"])
    strip = label_height(size)
    np.testing.assert_array_equal(labelled[strip:], plain)
    assert is_background(labelled[:strip, :56])  # empty label for column 0
    assert not is_background(labelled[:strip, 56:106])  # text drawn over column 1
    assert is_background(labelled[:strip, 50:56])  # nothing in the spacing


def test_row_labels_change_only_their_strip():
    cells = [[noise(30, 50, 1)], [noise(30, 50, 2)]]
    size = 12
    plain = make_grid(cells, v_spacing=6, label_size=size)
    labelled = make_grid(cells, v_spacing=6, label_size=size, row_labels=["seed 7"])
    strip = labelled.shape[1] - plain.shape[1]
    assert strip > 0
    np.testing.assert_array_equal(labelled[:, strip:], plain)
    assert not is_background(labelled[:30, :strip])
    assert is_background(labelled[30:, :strip])  # second row has no label


def test_captions_go_under_their_cell():
    cells = [[noise(30, 50, 1), noise(30, 50, 2)]]
    size = 12
    grid = make_grid(cells, h_spacing=4, label_size=size, cell_labels=[[None, "b.png"]])
    strip = label_height(size)
    assert grid.shape == (30 + strip, 104, 3)
    np.testing.assert_array_equal(grid[:30, :50], cells[0][0])
    assert is_background(grid[30:, :54]) and not is_background(grid[30:, 54:])


def test_long_labels_are_truncated_with_an_ellipsis():
    size = 14
    long = "a rather long label that cannot possibly fit in a small cell"
    short = fit_text(long, 60, size)
    assert short.endswith(ELLIPSIS) and long.startswith(short[:-1])
    assert ImageFont.load_default(size=size).getlength(short) <= 60
    assert fit_text("ok", 60, size) == "ok"
    assert fit_text(long, 1, size) == ""
    # Drawn, the label stays inside its own column strip.
    grid = make_grid([[noise(20, 60), noise(20, 60)]], h_spacing=10, label_size=size, col_labels=[long])
    strip = label_height(size)
    assert not is_background(grid[:strip, :60])
    assert is_background(grid[:strip, 60:])


def test_label_colour_reads_on_a_dark_background():
    grid = make_grid([[noise(20, 60)]], background=(0, 0, 0), label_size=12, col_labels=["x"])
    strip = grid[: label_height(12)]
    assert strip.max() > 128  # light text on black


# --------------------------------------------------------------------------------------------------
# Overlay and comparison sheet


def test_overlay_paints_exactly_the_mask():
    rgb = noise(30, 40, 5)
    mask = np.zeros((30, 40), bool)
    mask[5:12, 7:30] = True
    mask[20, 3] = True
    out = mask_overlay(rgb, mask)
    changed = np.any(out != rgb, axis=2)
    np.testing.assert_array_equal(changed, mask)
    assert is_background(out[mask].reshape(-1, 1, 3))
    assert mask_overlay(rgb, mask, opacity=0.0).tobytes() == rgb.tobytes()


def test_overlay_blends_at_opacity():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[True, False], [False, False]])
    out = mask_overlay(rgb, mask, color=(200, 0, 50), opacity=0.5)
    np.testing.assert_array_equal(out[0, 0], [150, 50, 75])
    np.testing.assert_array_equal(out[1, 1], [100, 100, 100])


def test_comparison_grid_rows_are_original_overlay_results():
    original = data.chelsea()[::4, ::4]  # 75x113, keeps the test fast
    h, w = original.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[20:40, 30:60] = True
    results = [[noise(h, w, 1), noise(h, w, 2)], [noise(h, w, 3)]]
    grid = comparison_grid(original, mask, results, h_spacing=3, v_spacing=5)
    assert grid.shape == (2 * h + 5, 4 * w + 3 * 3, 3)
    for r in range(2):
        top = r * (h + 5)
        np.testing.assert_array_equal(grid[top : top + h, :w], original)
        np.testing.assert_array_equal(grid[top : top + h, w + 3 : 2 * w + 3], mask_overlay(original, mask))
    np.testing.assert_array_equal(grid[:h, 2 * (w + 3) : 3 * w + 6], results[0][0])
    np.testing.assert_array_equal(grid[h + 5 :, 2 * (w + 3) : 3 * w + 6], results[1][0])
    assert is_background(grid[h + 5 :, 3 * (w + 3) :])


def test_comparison_grid_can_leave_out_columns():
    original = noise(10, 10, 1)
    mask = np.ones((10, 10), bool)
    result = noise(10, 10, 2)
    only_results = comparison_grid(original, mask, [[result]], include_original=False, include_overlay=False)
    np.testing.assert_array_equal(only_results, result)
    preview = comparison_grid(original, mask, [], h_spacing=0, include_original=False)
    assert is_background(preview)  # a full mask painted white


# --------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(cells=[[np.zeros((4, 4, 3), np.uint8)]], h_spacing=-1), ["h_spacing", "-1"]),
        (dict(cells=[[np.zeros((4, 4, 3), np.uint8)]], v_spacing=-3), ["v_spacing", "-3"]),
        (dict(cells=[]), ["cells", "empty"]),
        (dict(cells=[[], []]), ["cells", "empty"]),
        (dict(cells=[[None]]), ["cells", "None"]),
        (dict(cells=[[np.zeros((4, 4, 2), np.uint8)]]), ["cells[0][0]", "(4, 4, 2)"]),
        (dict(cells=[[np.zeros((4, 4, 3), np.float32)]]), ["cells[0][0]", "float32"]),
        (dict(cells=np.zeros((1, 4, 4, 3), np.uint8)), ["cells", "(1, 4, 4, 3)"]),
        (dict(cells=[[np.zeros((4, 4, 3), np.uint8)]], col_labels=["a", "b"]), ["col_labels", "2"]),
        (dict(cells=[[np.zeros((4, 4, 3), np.uint8)]], background=(0, 0, 300)), ["background", "300"]),
        (dict(cells=[[np.zeros((4, 4, 3), np.uint8)]], cell_size=(0, 5)), ["cell_size", "(0, 5)"]),
        (dict(cells=[[np.zeros((4, 4, 3), np.uint8)]], label_size=0), ["label_size", "0"]),
    ],
)
def test_bad_arguments_raise_one_line_input_errors(kwargs, words):
    with pytest.raises(InputError) as info:
        make_grid(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_overlay_and_comparison_validate_inputs():
    rgb = noise(10, 10)
    with pytest.raises(InputError, match="mask"):
        mask_overlay(rgb, np.zeros((10, 11), bool))
    with pytest.raises(InputError, match="opacity"):
        mask_overlay(rgb, np.zeros((10, 10), bool), opacity=1.5)
    with pytest.raises(InputError, match="original"):
        comparison_grid(rgb[..., 0], np.zeros((10, 10), bool), [[rgb]])


# --------------------------------------------------------------------------------------------------
# Files


@pytest.mark.parametrize(
    ("n", "columns", "rows", "expected"),
    [(1, None, None, (1, 1)), (5, None, None, (2, 3)), (9, None, None, (3, 3)), (10, None, None, (3, 4)),
     (5, 5, None, (1, 5)), (5, None, 5, (5, 1)), (7, 2, None, (4, 2)), (4, 3, 3, (3, 3))],
)
def test_grid_shape(n, columns, rows, expected):
    assert grid_shape(n, columns, rows) == expected


@pytest.fixture
def image_files(tmp_path):
    sizes = [(30, 40), (20, 20), (40, 30), (30, 40), (10, 40)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = tmp_path / f"img_{i}.png"
        Image.fromarray(noise(h, w, i)).save(path)
        paths.append(path)
    return paths


def test_grid_from_files_mixed_sizes_in_reading_order(image_files):
    grid = grid_from_files(image_files, h_spacing=2, v_spacing=3)
    # 5 images -> 3 columns x 2 rows; box = 40 wide x 40 tall.
    assert grid.shape == (2 * 40 + 3, 3 * 40 + 2 * 2, 3)
    first = np.asarray(Image.open(image_files[0]))
    np.testing.assert_array_equal(grid[5:35, 0:40], first)  # 40x30 letterboxed vertically, no scaling
    fourth = np.asarray(Image.open(image_files[3]))
    np.testing.assert_array_equal(grid[43 + 5 : 43 + 35, 0:40], fourth)
    assert is_background(grid[43:, 2 * 42 :])  # sixth cell is empty


def test_grid_from_files_rows_and_columns(image_files):
    one_row = grid_from_files(image_files, rows=1, h_spacing=0)
    assert one_row.shape == (40, 5 * 40, 3)
    tall = grid_from_files(image_files, columns=1, v_spacing=0)
    assert tall.shape == (5 * 40, 40, 3)
    spare = grid_from_files(image_files, rows=3, columns=3, h_spacing=0, v_spacing=0)
    assert spare.shape == (120, 120, 3)
    with pytest.raises(InputError, match="2 x 2"):
        grid_from_files(image_files, rows=2, columns=2)
    with pytest.raises(InputError, match="columns"):
        grid_from_files(image_files, columns=0)
    with pytest.raises(InputError, match="rows"):
        grid_from_files(image_files, rows=-1)


def test_grid_from_files_labels(image_files):
    size = 12
    plain = grid_from_files(image_files, label_size=size)
    named = grid_from_files(image_files, labels=True, label_size=size)
    assert named.shape == (plain.shape[0] + 2 * label_height(size), plain.shape[1], 3)
    custom = grid_from_files(image_files[:2], labels=["left", "right"], label_size=size)
    assert custom.shape[0] == 30 + label_height(size)  # box of the first two: 40 wide x 30 tall
    with pytest.raises(InputError, match="labels"):
        grid_from_files(image_files, labels=["only one"])


def test_grid_from_files_bad_files(tmp_path, image_files):
    with pytest.raises(InputError, match="cannot read image"):
        grid_from_files([tmp_path / "missing.png"])
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    with pytest.raises(InputError, match="junk.png"):
        grid_from_files([image_files[0], junk])
    with pytest.raises(InputError, match="paths"):
        grid_from_files([])


def test_grid_from_files_applies_exif_orientation(tmp_path):
    pixels = noise(10, 30, 9)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    path = tmp_path / "sideways.png"
    image.save(path, exif=exif)
    grid = grid_from_files([path])
    np.testing.assert_array_equal(grid, np.rot90(pixels, k=-1))
