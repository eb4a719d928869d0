"""`write_mini`: tiny synthetic datasets in every supported layout, for smoke runs of the trainer.

The pictures carry structure a tiny model can learn and overfit: one or two coloured shapes on a
plain background, described by the caption; inpainting masks cover a named shape; an edit target
is a fixed colour operation of its input named by the instruction ("invert the colors"); a clip
shows one shape moving in a straight line and its target is the next position. Sizes alternate
between square, wide and tall (multiples of 8), so aspect buckets get used too.

The unified kind writes the three row kinds of the unified (Show-o style) trainer as parquet files in
one folder: t2i (a square picture of one class "<colour> <shape>", its caption, label and class name),
lm (short true sentences about the shapes) and mmu (a picture, a question about it and its answer).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from canvaslab.core.image import atomic_write_bytes
from canvaslab.data.frames import INSTRUCTION_FILE, frames_to_dataset
from canvaslab.errors import InputError

LAYOUTS = {
    "inpaint": ("inpaint-folder", "inpaint-parquet"),
    "edit": ("edit-jsonl", "edit-folder", "edit-parquet"),
    "frames": ("frames-parquet",),
    "unified": ("unified-t2i", "unified-lm", "unified-mmu"),
}
MINI_KINDS = (*LAYOUTS, "all")
# Layouts that share a folder (default: a folder named after the layout).
LAYOUT_FOLDERS = {"unified-t2i": "unified", "unified-lm": "unified", "unified-mmu": "unified"}

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("square", "circle", "triangle")
# Directions a clip's shape moves in: name -> (dx, dy) in steps.
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def _gray(rgb: np.ndarray) -> np.ndarray:
    luminance = (rgb.astype(np.uint32) @ np.array([299, 587, 114], np.uint32) + 500) // 1000
    return np.repeat(luminance.astype(np.uint8)[..., None], 3, axis=2)


# Instruction -> the exact pixel operation that makes the target from the input.
EDITS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "invert the colors": lambda rgb: 255 - rgb,
    "swap red and blue": lambda rgb: np.ascontiguousarray(rgb[..., ::-1]),
    "make it grayscale": _gray,
    "make it darker": lambda rgb: rgb // 2,
}


@dataclass(frozen=True)
class MiniDataset:
    kind: str  # what to pass to open_dataset as `kind`
    layout: str
    path: Path  # what to pass to open_dataset as `source`
    items: int


@dataclass(frozen=True)
class _Shape:
    name: str
    colour: str
    box: tuple[int, int, int, int]  # left, top, right, bottom


def write_mini(
    out: str | Path, *, kind: str = "all", count: int = 8, size: int = 64, seed: int = 0, frames: int = 3
) -> list[MiniDataset]:
    """Write `count` items of each layout of `kind` under the new or empty folder `out`."""
    out = Path(out)
    _check_options(kind, count, size, frames)
    _prepare_empty(out)
    kinds = list(LAYOUTS) if kind == "all" else [kind]
    written = []
    for chosen in kinds:
        for layout in LAYOUTS[chosen]:
            rng = np.random.default_rng([seed, len(written)])  # each layout's own stream
            path = _WRITERS[layout](out / LAYOUT_FOLDERS.get(layout, layout), rng, count, size, frames)
            written.append(MiniDataset(chosen, layout, path, count))
    return written


def _check_options(kind: str, count: int, size: int, frames: int) -> None:
    if kind not in MINI_KINDS:
        raise InputError(f"unknown kind {kind!r}: use one of {', '.join(MINI_KINDS)}")
    if not 1 <= count <= 10_000:
        raise InputError(f"count must be from 1 to 10000, not {count}")
    if not 16 <= size <= 2048:
        raise InputError(f"size must be from 16 to 2048 pixels, not {size}")
    if not 1 <= frames <= 64:
        raise InputError(f"frames must be from 1 to 64, not {frames}")


def _prepare_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty: choose a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or exc}") from None


# --- pictures ---------------------------------------------------------------------------------


def item_size(index: int, size: int) -> tuple[int, int]:
    """Square, wide, tall, in turn; sides are multiples of 8."""
    long_side = (size * 3 // 2) // 8 * 8
    return [(size, size), (long_side, size), (size, long_side)][index % 3]


def draw_scene(rng: np.random.Generator, width: int, height: int, shapes: int = 2) -> tuple[np.ndarray, str, list[_Shape]]:
    """One or `shapes` coloured shapes on a plain background, and a caption naming them."""
    names = list(COLOURS)
    background = names[int(rng.integers(len(names)))]
    others = [name for name in names if name != background]
    colours = rng.choice(others, size=shapes, replace=False)
    placed = [_random_shape(rng, width, height, str(colour)) for colour in colours[: int(rng.integers(1, shapes + 1))]]
    image = _render(width, height, background, placed)
    caption = " and ".join(f"a {s.colour} {s.name}" for s in placed) + f" on a {background} background"
    return image, caption, placed


def _random_shape(rng: np.random.Generator, width: int, height: int, colour: str) -> _Shape:
    side = int(rng.integers(min(width, height) // 5, min(width, height) // 3 + 1))
    left, top = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    return _Shape(SHAPES[int(rng.integers(len(SHAPES)))], colour, (left, top, left + side, top + side))


def _render(width: int, height: int, background: str, shapes: list[_Shape]) -> np.ndarray:
    image = Image.new("RGB", (width, height), COLOURS[background])
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        left, top, right, bottom = shape.box
        fill = COLOURS[shape.colour]
        if shape.name == "square":
            draw.rectangle((left, top, right - 1, bottom - 1), fill=fill)
        elif shape.name == "circle":
            draw.ellipse((left, top, right - 1, bottom - 1), fill=fill)
        else:
            draw.polygon([((left + right) // 2, top), (right - 1, bottom - 1), (left, bottom - 1)], fill=fill)
    return np.asarray(image).copy()


def _shape_mask(width: int, height: int, shape: _Shape, margin: int = 2) -> np.ndarray:
    """White (True) over the shape's box, grown a little: the region the model learns to fill."""
    mask = np.zeros((height, width), bool)
    left, top, right, bottom = shape.box
    mask[max(0, top - margin) : bottom + margin, max(0, left - margin) : right + margin] = True
    return mask


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8) * 255 if array.dtype == np.bool_ else array).save(buffer, "PNG")
    return buffer.getvalue()


def _save(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, _png(array))


def _save_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    # Small row groups so even 8 rows span several: readers' row-group paths get exercised.
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)


# --- layouts ----------------------------------------------------------------------------------


def _inpaint_items(rng: np.random.Generator, count: int, size: int) -> list[tuple[np.ndarray, str, np.ndarray]]:
    items = []
    for index in range(count):
        width, height = item_size(index, size)
        image, caption, shapes = draw_scene(rng, width, height)
        items.append((image, caption, _shape_mask(width, height, shapes[0])))
    return items


def _write_inpaint_folder(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """shapes/NNN.png + NNN.txt; masks in masks/shapes/NNN.png (even items) or shapes/NNN_mask.png (odd)."""
    for index, (image, caption, mask) in enumerate(_inpaint_items(rng, count, size)):
        name = f"{index:03d}"
        _save(root / "shapes" / f"{name}.png", image)
        _save_text(root / "shapes" / f"{name}.txt", caption)
        mask_path = root / "masks" / "shapes" / f"{name}.png" if index % 2 == 0 else root / "shapes" / f"{name}_mask.png"
        _save(mask_path, mask)
    return root


def _write_inpaint_parquet(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """Hugging Face's image struct ({bytes, path}) for images, plain bytes for masks."""
    rows = [
        {"image": {"bytes": _png(image), "path": f"{index:03d}.png"}, "text": caption, "mask": _png(mask)}
        for index, (image, caption, mask) in enumerate(_inpaint_items(rng, count, size))
    ]
    path = root / "train.parquet"
    _write_parquet(path, rows)
    return path


def _edit_items(rng: np.random.Generator, count: int, size: int) -> list[tuple[np.ndarray, str, np.ndarray]]:
    instructions = list(EDITS)
    items = []
    for index in range(count):
        width, height = item_size(index, size)
        source, _, _ = draw_scene(rng, width, height)
        instruction = instructions[int(rng.integers(len(instructions)))]
        items.append((source, instruction, EDITS[instruction](source)))
    return items


def _write_edit_jsonl(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """metadata.jsonl with input_image / edited_image / edit_prompt, images under images/."""
    lines = []
    for index, (source, instruction, target) in enumerate(_edit_items(rng, count, size)):
        name = f"{index:03d}"
        _save(root / "images" / f"{name}_input.png", source)
        _save(root / "images" / f"{name}_edited.png", target)
        row = {
            "input_image": f"images/{name}_input.png",
            "edited_image": f"images/{name}_edited.png",
            "edit_prompt": instruction,
        }
        lines.append(json.dumps(row))
    _save_text(root / "metadata.jsonl", "\n".join(lines))
    return root


def _write_edit_folder(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """input/NNN.png, edited/NNN.png and the instruction in edited/NNN.txt."""
    for index, (source, instruction, target) in enumerate(_edit_items(rng, count, size)):
        name = f"{index:03d}"
        _save(root / "input" / f"{name}.png", source)
        _save(root / "edited" / f"{name}.png", target)
        _save_text(root / "edited" / f"{name}.txt", instruction)
    return root


def _write_edit_parquet(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """The public InstructPix2Pix column names with embedded PNG bytes."""
    rows = [
        {"input_image": _png(source), "edit_prompt": instruction, "edited_image": _png(target)}
        for source, instruction, target in _edit_items(rng, count, size)
    ]
    path = root / "train.parquet"
    _write_parquet(path, rows)
    return path


def _write_frames(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """clips/clipNNN/00.png ... (frames + 1 images, the last is the target) + instruction.txt, then frames.parquet."""
    for index in range(count):
        width, height = item_size(index, size)
        images, instruction = draw_clip(rng, width, height, frames + 1)
        clip = root / "clips" / f"clip{index:03d}"
        for number, image in enumerate(images):
            _save(clip / f"{number:02d}.png", image)
        _save_text(clip / INSTRUCTION_FILE, instruction)
    return frames_to_dataset(root / "clips", root / "frames.parquet").path


def draw_clip(rng: np.random.Generator, width: int, height: int, length: int) -> tuple[list[np.ndarray], str]:
    """`length` frames of one shape moving in a straight line; the instruction names shape and direction."""
    names = list(COLOURS)
    background, colour = (str(c) for c in rng.choice(names, size=2, replace=False))
    direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    dx, dy = DIRECTIONS[direction]
    side = max(4, min(width, height) // 4)
    travel_x, travel_y = width - side, height - side
    # At most half a side per frame, and the whole path inside the frame when there is room.
    step = max(1, min((travel_x if dx else travel_y) // max(1, length - 1), side // 2))
    span = step * (length - 1)
    start_x, start_y = _path_start(rng, travel_x, dx, span), _path_start(rng, travel_y, dy, span)
    shape_name = SHAPES[int(rng.integers(len(SHAPES)))]
    images = []
    for t in range(length):
        left, top = start_x + dx * step * t, start_y + dy * step * t
        shape = _Shape(shape_name, colour, (left, top, left + side, top + side))
        images.append(_render(width, height, background, [shape]))
    return images, f"move the {colour} {shape_name} {direction}"


def _path_start(rng: np.random.Generator, travel: int, direction: int, span: int) -> int:
    low, high = {1: (0, travel - span), -1: (span, travel), 0: (0, travel)}[direction]
    return int(rng.integers(low, max(low, high) + 1))


# --- unified: t2i, lm and mmu rows --------------------------------------------------------------

# One class per (shape colour, shape): the label is the index, the name what a caption calls it.
CLASS_NAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
CORNERS = {"square": "four", "triangle": "three", "circle": "no"}
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def draw_class_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int, str]:
    """A square picture of one big shape on a plain background: (pixels, label, background colour)."""
    label = int(rng.integers(len(CLASS_NAMES)))
    colour, shape_name = CLASS_NAMES[label].split(" ")
    background = str(rng.choice([name for name in COLOURS if name != colour]))
    side = int(rng.integers(size // 3, size // 2 + 1))  # big enough to read at 16x16 image tokens
    left, top = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
    shape = _Shape(shape_name, colour, (left, top, left + side, top + side))
    return _render(size, size, background, [shape]), label, background


def _unified_parquet(path: Path, rows: list[dict], schema: object) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    # Small row groups so even 8 rows span several: the streaming reader's row-group sharding gets used.
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=4)
    return path


def _write_unified_t2i(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """t2i.parquet: key, image (PNG bytes), caption, label (int), class_name; class names in the HF features."""
    import pyarrow as pa

    rows = []
    for index in range(count):
        image, label, background = draw_class_image(rng, size)
        name = CLASS_NAMES[label]
        rows.append({"key": f"t2i{index:04d}", "image": _png(image), "caption": f"a {name} on a {background} background",
                     "label": label, "class_name": name})
    string = {"dtype": "string", "_type": "Value"}
    features = {"key": string, "image": {"dtype": "binary", "_type": "Value"}, "caption": string,
                "label": {"names": list(CLASS_NAMES), "_type": "ClassLabel"}, "class_name": string}
    schema = pa.schema([("key", pa.string()), ("image", pa.binary()), ("caption", pa.string()),
                        ("label", pa.int64()), ("class_name", pa.string())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    return _unified_parquet(root / "t2i.parquet", rows, schema)


def _write_unified_lm(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """lm.parquet: key, text: short sentences that are true in the shapes' world."""
    import pyarrow as pa

    rows = []
    for index in range(count):
        shapes = rng.choice(len(CLASS_NAMES), size=2, replace=False)
        first, second = CLASS_NAMES[int(shapes[0])], CLASS_NAMES[int(shapes[1])]
        relation = str(rng.choice(list(RELATIONS)))
        corners = first.split(" ")[1]
        text = (f"the {first} is {relation} the {second}, so the {second} is {RELATIONS[relation]} the {first}. "
                f"a {corners} has {CORNERS[corners]} corners.")
        rows.append({"key": f"lm{index:04d}", "text": text})
    return _unified_parquet(root / "lm.parquet", rows, pa.schema([("key", pa.string()), ("text", pa.string())]))


def _write_unified_mmu(root: Path, rng: np.random.Generator, count: int, size: int, frames: int) -> Path:
    """mmu.parquet: key, image (PNG bytes), question, answer: what the picture shows."""
    import pyarrow as pa

    rows = []
    for index in range(count):
        image, label, background = draw_class_image(rng, size)
        colour, shape = CLASS_NAMES[label].split(" ")
        questions = {
            "what colour is the shape?": colour,
            "what shape is in the picture?": f"a {shape}",
            "what colour is the background?": background,
            "what is in the picture?": f"a {colour} {shape} on a {background} background",
        }
        question = str(rng.choice(list(questions)))
        rows.append({"key": f"mmu{index:04d}", "image": _png(image), "question": question, "answer": questions[question]})
    schema = pa.schema([("key", pa.string()), ("image", pa.binary()), ("question", pa.string()), ("answer", pa.string())])
    return _unified_parquet(root / "mmu.parquet", rows, schema)


_WRITERS: dict[str, Callable[[Path, np.random.Generator, int, int, int], Path]] = {
    "inpaint-folder": _write_inpaint_folder,
    "inpaint-parquet": _write_inpaint_parquet,
    "edit-jsonl": _write_edit_jsonl,
    "edit-folder": _write_edit_folder,
    "edit-parquet": _write_edit_parquet,
    "frames-parquet": _write_frames,
    "unified-t2i": _write_unified_t2i,
    "unified-lm": _write_unified_lm,
    "unified-mmu": _write_unified_mmu,
}
