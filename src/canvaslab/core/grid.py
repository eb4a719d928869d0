"""Comparison grids: original | original with the mask painted | results, one row per seed.

Restorers judge fills side by side, so this module lays images out on a background canvas:

* `make_grid` places rows of cells (rows may be ragged, ``None`` leaves a cell blank) in a common
  cell box, with optional column labels above, row labels to the left and per-cell captions below.
* `comparison_grid` builds the usual inpainting sheet from an original, its mask and the results.
* `grid_from_files` assembles images already on disk (the ``canvaslab grid FILES...`` command).

Layout (all sizes in pixels, no outer margin, so a one-cell grid is exactly that cell)::

    width  = row_label_width + columns * cell_width + (columns - 1) * h_spacing
    height = column_label_height + rows * (cell_height + caption_height) + (rows - 1) * v_spacing

where ``column_label_height`` and ``caption_height`` are `label_height(label_size)` when those
labels are given (0 otherwise) and ``row_label_width`` is the widest row label, capped at the cell
width, plus padding on both sides (`row_label_width`).

Images are HxWx3 ``uint8`` arrays; HxW ``uint8`` (grey), HxW ``bool`` (a mask, shown white on black)
and HxWx4 ``uint8`` (composited over the background) are accepted as cells too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from canvaslab.core.image import load_image
from canvaslab.core.mask import as_mask
from canvaslab.errors import InputError

Color = tuple[int, int, int]

ELLIPSIS = "\u2026"
MIN_AUTO_LABEL_SIZE = 12
MAX_AUTO_LABEL_SIZE = 48


# --------------------------------------------------------------------------------------------------
# Validation helpers


def _check_color(value: Sequence[int], name: str) -> Color:
    """`value` as an (r, g, b) tuple of ints in 0..255, or an InputError naming `name`."""
    try:
        rgb = tuple(int(c) for c in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an (r, g, b) tuple of 0-255 integers, got {value!r}") from None
    if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb):
        raise InputError(f"{name} must be an (r, g, b) tuple of 0-255 integers, got {value!r}")
    return rgb  # type: ignore[return-value]


def _check_non_negative(value: int, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_rgb(image: object, name: str) -> np.ndarray:
    """`image` if it is an HxWx3 uint8 array, else an InputError naming `name`."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"{name} must be an HxWx3 uint8 RGB array, got {_describe(image)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{name} is empty, got shape {image.shape}")
    return image


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape} dtype {value.dtype}"
    return type(value).__name__


def _cell_to_rgb(cell: object, name: str, background: Color) -> np.ndarray:
    """Any accepted cell form as an HxWx3 uint8 array (the array itself when already RGB)."""
    if not isinstance(cell, np.ndarray):
        raise InputError(f"{name} must be a numpy image array or None, got {type(cell).__name__}")
    if cell.ndim == 2 and cell.dtype == bool:
        cell = np.where(cell, np.uint8(255), np.uint8(0))
    if cell.dtype != np.uint8 or not (cell.ndim == 2 or (cell.ndim == 3 and cell.shape[2] in (3, 4))):
        raise InputError(f"{name} must be an HxWx3 uint8 image (or HxW, HxWx4), got {_describe(cell)}")
    if cell.shape[0] == 0 or cell.shape[1] == 0:
        raise InputError(f"{name} is empty, got shape {cell.shape}")
    if cell.ndim == 2:
        return np.repeat(cell[:, :, None], 3, axis=2)
    if cell.shape[2] == 4:
        return _composite(cell, background)
    return cell


def _composite(rgba: np.ndarray, background: Color) -> np.ndarray:
    # Transparent areas would otherwise show whatever colour hides under alpha 0.
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    mixed = rgba[:, :, :3] * alpha + np.asarray(background, np.float32) * (1.0 - alpha)
    return np.rint(mixed).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Overlay


def mask_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    *,
    color: Sequence[int] = (255, 255, 255),
    opacity: float = 1.0,
) -> np.ndarray:
    """A copy of `rgb` with the pixels under `mask` painted `color` at `opacity`.

    Only masked pixels change; at ``opacity=1`` they are exactly `color` (white by default: the
    mural convention for a loss). `mask` is an HxW bool array of the image's size.
    """
    rgb = _check_rgb(rgb, "rgb")
    mask = as_mask(mask, shape=rgb.shape[:2], name="mask")
    paint = np.asarray(_check_color(color, "color"), np.float64)
    opacity = float(opacity)
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"opacity must be between 0 and 1, got {opacity}")
    out = rgb.copy()
    under = rgb[mask].astype(np.float64)
    out[mask] = np.rint(under * (1.0 - opacity) + paint * opacity).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------------
# Labels


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _label_padding(label_size: int) -> int:
    return max(2, label_size // 4)


def label_height(label_size: int) -> int:
    """Height of a strip of column labels or captions drawn at `label_size`: one line plus padding."""
    ascent, descent = _font(label_size).getmetrics()
    return ascent + descent + 2 * _label_padding(label_size)


def _text_width(text: str, label_size: int) -> int:
    return math.ceil(_font(label_size).getlength(text))


def row_label_width(labels: Sequence[str], label_size: int, cell_width: int) -> int:
    """Width of the row-label strip: the widest label, capped at `cell_width`, plus padding."""
    widest = max((_text_width(label, label_size) for label in labels), default=0)
    return min(widest, cell_width) + 2 * _label_padding(label_size)


def fit_text(text: str, max_width: int, label_size: int) -> str:
    """`text`, or its longest prefix followed by an ellipsis, that fits in `max_width` pixels."""
    if _text_width(text, label_size) <= max_width:
        return text
    # Binary search on the prefix length: widths grow with the prefix, and labels can be long paths.
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if _text_width(text[:mid].rstrip() + ELLIPSIS, label_size) <= max_width:
            low = mid
        else:
            high = mid - 1
    if low == 0:
        return ELLIPSIS if _text_width(ELLIPSIS, label_size) <= max_width else ""
    return text[:low].rstrip() + ELLIPSIS


def _auto_label_size(cell_width: int, cell_height: int) -> int:
    # Text about 1/25 of the cell stays readable when a grid of large photos is viewed whole.
    size = round(min(cell_width, cell_height) / 25)
    return int(min(MAX_AUTO_LABEL_SIZE, max(MIN_AUTO_LABEL_SIZE, size)))


def _text_color(background: Color) -> Color:
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma >= 128 else (255, 255, 255)


def _draw_label(
    canvas: np.ndarray,
    text: str,
    box: tuple[int, int, int, int],
    *,
    label_size: int,
    align: str,
    background: Color,
    color: Color,
) -> None:
    """Draw `text` inside `box` = (left, top, width, height) of `canvas`, never outside it."""
    left, top, width, height = box
    pad = _label_padding(label_size)
    text = fit_text(text, max(0, width - 2 * pad), label_size)
    if not text or width <= 0 or height <= 0:
        return
    # Render into an image of exactly the box so that no glyph can spill onto a neighbouring cell.
    tile = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(tile)
    font = _font(label_size)
    text_width = _text_width(text, label_size)
    if align == "center":
        x = (width - text_width) / 2
    elif align == "right":
        x = width - pad - text_width
    else:
        x = pad
    ascent, descent = font.getmetrics()
    y = (height - (ascent + descent)) / 2
    draw.text((x, y), text, fill=color, font=font)
    canvas[top : top + height, left : left + width] = np.asarray(tile)


# --------------------------------------------------------------------------------------------------
# Grid


def _check_cells(cells: object, background: Color) -> list[list[np.ndarray | None]]:
    if isinstance(cells, np.ndarray) or isinstance(cells, (str, bytes)) or not isinstance(cells, Sequence):
        raise InputError(f"cells must be a list of rows, each a list of images or None, got {_describe(cells)}")
    rows: list[list[np.ndarray | None]] = []
    for r, row in enumerate(cells):
        if isinstance(row, np.ndarray) or not isinstance(row, Sequence):
            raise InputError(f"cells[{r}] must be a list of images or None, got {_describe(row)}")
        rows.append([None if c is None else _cell_to_rgb(c, f"cells[{r}][{i}]", background) for i, c in enumerate(row)])
    if not rows or all(len(row) == 0 for row in rows):
        raise InputError(f"cells is empty: give at least one row with one image, got {len(rows)} rows")
    return rows


def _cell_box(rows: list[list[np.ndarray | None]], cell_size: tuple[int, int] | None) -> tuple[int, int]:
    """The common (width, height) every cell is fitted into."""
    if cell_size is not None:
        try:
            width, height = (int(v) for v in cell_size)
        except (TypeError, ValueError):
            raise InputError(f"cell_size must be (width, height), got {cell_size!r}") from None
        if width < 1 or height < 1:
            raise InputError(f"cell_size must be (width, height) of at least 1 pixel, got {cell_size!r}")
        return width, height
    images = [c for row in rows for c in row if c is not None]
    if not images:
        raise InputError("cells holds only None: give at least one image or set cell_size")
    return max(c.shape[1] for c in images), max(c.shape[0] for c in images)


def fit_cell(image: np.ndarray, box: tuple[int, int], background: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """`image` scaled to fit the (width, height) `box` keeping its aspect ratio, centred on background.

    An image whose fitted size equals its own size is copied without resampling, pixel-exact.
    """
    box_w, box_h = box
    height, width = image.shape[:2]
    scale = min(box_w / width, box_h / height)
    new_w = min(box_w, max(1, round(width * scale)))
    new_h = min(box_h, max(1, round(height * scale)))
    if (new_w, new_h) != (width, height):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS))
    out = np.empty((box_h, box_w, 3), np.uint8)
    out[:] = np.asarray(background, np.uint8)
    top, left = (box_h - new_h) // 2, (box_w - new_w) // 2
    out[top : top + new_h, left : left + new_w] = image
    return out


def _check_labels(labels: Sequence[str] | None, limit: int, name: str, unit: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise InputError(f"{name} must be a list of strings, got {labels!r}")
    if len(labels) > limit:
        raise InputError(f"{name} has {len(labels)} labels but the grid has {limit} {unit}")
    return [str(label) for label in labels]


def make_grid(
    cells: Sequence[Sequence[np.ndarray | None]],
    *,
    h_spacing: int = 8,
    v_spacing: int = 8,
    background: Sequence[int] = (255, 255, 255),
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    cell_labels: Sequence[Sequence[str | None]] | None = None,
    cell_size: tuple[int, int] | None = None,
    label_size: int | None = None,
    label_color: Sequence[int] | None = None,
) -> np.ndarray:
    """Lay `cells` (a list of rows) out on one HxWx3 uint8 canvas; see the module docstring for sizes.

    * Rows may differ in length; the grid has as many columns as the longest row. ``None`` cells and
      missing cells stay background.
    * Every cell is fitted into a common box, `cell_size` = (width, height), by default the largest
      width and the largest height among the cells. Cells that already fill the box are copied
      pixel-exact; others are scaled (Lanczos) keeping their aspect ratio and centred.
    * `col_labels` go in a strip above the columns, `row_labels` in a strip to the left, and
      `cell_labels` (one list per row) in a caption strip under each row. Fewer labels than
      columns/rows is fine; too long labels are cut with an ellipsis to the cell width.
    * `label_size` is the font size in pixels (default: 1/25 of the cell's smaller side, 12 to 48);
      `label_color` defaults to black or white, whichever reads on `background`.
    """
    h_spacing = _check_non_negative(h_spacing, "h_spacing")
    v_spacing = _check_non_negative(v_spacing, "v_spacing")
    bg = _check_color(background, "background")
    rows = _check_cells(cells, bg)
    box_w, box_h = _cell_box(rows, cell_size)
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    col_names = _check_labels(col_labels, n_cols, "col_labels", "columns")
    row_names = _check_labels(row_labels, n_rows, "row_labels", "rows")
    captions = _check_captions(cell_labels, rows)
    if label_size is None:
        label_size = _auto_label_size(box_w, box_h)
    elif not isinstance(label_size, (int, np.integer)) or isinstance(label_size, bool) or label_size < 1:
        raise InputError(f"label_size must be a positive integer, got {label_size!r}")
    text_color = _text_color(bg) if label_color is None else _check_color(label_color, "label_color")

    col_strip = label_height(label_size) if col_names is not None else 0
    caption_strip = label_height(label_size) if captions is not None else 0
    row_strip = row_label_width(row_names, label_size, box_w) if row_names is not None else 0
    row_pitch = box_h + caption_strip + v_spacing
    col_pitch = box_w + h_spacing
    width = row_strip + n_cols * box_w + (n_cols - 1) * h_spacing
    height = col_strip + n_rows * (box_h + caption_strip) + (n_rows - 1) * v_spacing

    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = np.asarray(bg, np.uint8)
    label = dict(label_size=label_size, background=bg, color=text_color)
    for c, text in enumerate(col_names or []):
        _draw_label(canvas, text, (row_strip + c * col_pitch, 0, box_w, col_strip), align="center", **label)
    for r, row in enumerate(rows):
        top = col_strip + r * row_pitch
        if row_names is not None and r < len(row_names):
            _draw_label(canvas, row_names[r], (0, top, row_strip, box_h), align="right", **label)
        for c, cell in enumerate(row):
            left = row_strip + c * col_pitch
            if cell is not None:
                canvas[top : top + box_h, left : left + box_w] = fit_cell(cell, (box_w, box_h), bg)
            caption = captions[r][c] if captions is not None and c < len(captions[r]) else None
            if caption:
                _draw_label(canvas, caption, (left, top + box_h, box_w, caption_strip), align="center", **label)
    return canvas


def _check_captions(
    cell_labels: Sequence[Sequence[str | None]] | None, rows: list[list[np.ndarray | None]]
) -> list[list[str | None]] | None:
    if cell_labels is None:
        return None
    if isinstance(cell_labels, (str, bytes)) or not isinstance(cell_labels, Sequence):
        raise InputError(f"cell_labels must be a list of rows of strings, got {cell_labels!r}")
    if len(cell_labels) > len(rows):
        raise InputError(f"cell_labels has {len(cell_labels)} rows but the grid has {len(rows)} rows")
    captions: list[list[str | None]] = []
    for r, row in enumerate(cell_labels):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise InputError(f"cell_labels[{r}] must be a list of strings, got {row!r}")
        captions.append([None if text is None else str(text) for text in row])
    captions += [[] for _ in range(len(rows) - len(captions))]
    return captions


# --------------------------------------------------------------------------------------------------
# Comparison sheet


def comparison_grid(
    original: np.ndarray,
    mask: np.ndarray,
    rows: Sequence[Sequence[np.ndarray]],
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    h_spacing: int = 8,
    v_spacing: int = 8,
    overlay_color: Sequence[int] = (255, 255, 255),
    overlay_opacity: float = 1.0,
    include_original: bool = True,
    include_overlay: bool = True,
    background: Sequence[int] = (255, 255, 255),
    cell_size: tuple[int, int] | None = None,
    label_size: int | None = None,
) -> np.ndarray:
    """One row per entry of `rows` (e.g. per seed): [original | original with mask painted | results].

    `col_labels` name every column shown, including the original and overlay columns. An empty
    `rows` gives a single row of original and overlay (a preview of the mask).
    """
    original = _check_rgb(original, "original")
    mask = as_mask(mask, shape=original.shape[:2], name="mask")
    if isinstance(rows, np.ndarray) or not isinstance(rows, Sequence):
        raise InputError(f"rows must be a list of rows of result images, got {_describe(rows)}")
    lead: list[np.ndarray] = []
    if include_original:
        lead.append(original)
    if include_overlay:
        lead.append(mask_overlay(original, mask, color=overlay_color, opacity=overlay_opacity))
    results = list(rows) or [[]]
    cells = []
    for r, row in enumerate(results):
        if isinstance(row, np.ndarray) or not isinstance(row, Sequence):
            raise InputError(f"rows[{r}] must be a list of result images, got {_describe(row)}")
        cells.append([*lead, *row])
    return make_grid(
        cells,
        h_spacing=h_spacing,
        v_spacing=v_spacing,
        background=background,
        col_labels=col_labels,
        row_labels=row_labels,
        cell_size=cell_size,
        label_size=label_size,
    )


# --------------------------------------------------------------------------------------------------
# Grids of files


def grid_shape(n: int, columns: int | None = None, rows: int | None = None) -> tuple[int, int]:
    """(rows, columns) for `n` images: columns default to ceil(sqrt(n)), or to ceil(n / rows)."""
    if columns is not None and (not isinstance(columns, (int, np.integer)) or columns < 1):
        raise InputError(f"columns must be a positive integer, got {columns!r}")
    if rows is not None and (not isinstance(rows, (int, np.integer)) or rows < 1):
        raise InputError(f"rows must be a positive integer, got {rows!r}")
    if columns is None:
        columns = math.ceil(n / rows) if rows is not None else math.ceil(math.sqrt(n))
    if rows is None:
        rows = math.ceil(n / columns)
    if rows * columns < n:
        raise InputError(f"rows x columns = {rows} x {columns} holds {rows * columns} images, not {n}")
    return int(rows), int(columns)


def grid_from_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    columns: int | None = None,
    rows: int | None = None,
    labels: bool | Sequence[str] = False,
    h_spacing: int = 8,
    v_spacing: int = 8,
    background: Sequence[int] = (255, 255, 255),
    cell_size: tuple[int, int] | None = None,
    label_size: int | None = None,
) -> np.ndarray:
    """Existing images in reading order (left to right, top to bottom) on a rows x columns grid.

    `labels=True` captions each image with its file stem; a list gives one caption per file.
    Images of different sizes are letterboxed into the common cell box (see `make_grid`).
    """
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Sequence):
        raise InputError(f"paths must be a list of image files, got {paths!r}")
    if not paths:
        raise InputError("paths is empty: give at least one image file")
    n_rows, n_cols = grid_shape(len(paths), columns, rows)
    captions = _file_labels(paths, labels)
    images = [load_image(path).rgb for path in paths]
    cells: list[list[np.ndarray | None]] = [[None] * n_cols for _ in range(n_rows)]
    cell_labels: list[list[str | None]] = [[None] * n_cols for _ in range(n_rows)]
    for i, image in enumerate(images):
        cells[i // n_cols][i % n_cols] = image
        if captions is not None:
            cell_labels[i // n_cols][i % n_cols] = captions[i]
    return make_grid(
        cells,
        h_spacing=h_spacing,
        v_spacing=v_spacing,
        background=background,
        cell_labels=cell_labels if captions is not None else None,
        cell_size=cell_size,
        label_size=label_size,
    )


def _file_labels(paths: Sequence[str | os.PathLike[str]], labels: bool | Sequence[str]) -> list[str] | None:
    if labels is True:
        return [Path(path).stem for path in paths]
    if labels is False or labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise InputError(f"labels must be True, False or a list of strings, got {labels!r}")
    if len(labels) != len(paths):
        raise InputError(f"labels has {len(labels)} entries but there are {len(paths)} images")
    return [str(label) for label in labels]
