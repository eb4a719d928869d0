"""Image-folder layouts: an inpainting folder (images + captions + optional masks) and an edit folder
(`input/` + `edited/`). Indexing lists files and reads text only; no image is opened.

Problems that do not stop training of the other items (an input without its edited image, a mask
without its image) are returned as `Problem`s for `data check` instead of raising.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from canvaslab.data.records import Problem, Record, is_image_file, natural_key
from canvaslab.errors import InputError

MASKS_DIR = "masks"
MASK_SUFFIX = "_mask"
METADATA = "metadata.jsonl"
CAPTION_FIELDS = ("text", "caption")
INSTRUCTION_FIELDS = ("edit_prompt", "instruction", "text")
INPUT_DIR = "input"
TARGET_DIRS = ("edited", "target")


# --- shared -----------------------------------------------------------------------------------


def image_files(root: Path) -> list[Path]:
    """Image files under `root`, recursively, skipping hidden files and folders; sorted naturally."""
    found = [path for path in walk_files(root) if is_image_file(path)]
    return sorted(found, key=lambda path: natural_key(path.relative_to(root).as_posix()))


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under `root`, skipping hidden files and folders (.git, .cache, temporary files)."""
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from walk_files(entry)
        elif entry.is_file():
            yield entry


def stem_key(relative: PurePosixPath | Path) -> str:
    """'a/b.png' -> 'a/b': how images, masks and captions are matched."""
    return PurePosixPath(relative).with_suffix("").as_posix()


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(f"'{path}' is not UTF-8 text: save captions and instructions as UTF-8") from None


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file; a bad line is one InputError naming the line."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {number} is not valid JSON ({exc.msg}): write one object per line") from None
        if not isinstance(row, dict):
            raise InputError(f"{path} line {number} is not a JSON object: write one object per line")
        rows.append(row)
    return rows


def _metadata_texts(root: Path, fields: tuple[str, ...], strip_dirs: tuple[str, ...] = ()) -> dict[str, str]:
    """Stem key -> text from a root metadata.jsonl (`file_name` + the first of `fields` present)."""
    path = root / METADATA
    if not path.is_file():
        return {}
    texts = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        name = row.get("file_name")
        if not isinstance(name, str):
            raise InputError(f"{path} row {number} has no 'file_name': each row names its image file")
        relative = PurePosixPath(name)
        if relative.parts and relative.parts[0] in strip_dirs:
            relative = PurePosixPath(*relative.parts[1:])
        texts[stem_key(relative)] = _first_text(row, fields)
    return texts


def _first_text(row: dict, fields: tuple[str, ...]) -> str:
    for name in fields:
        if name in row and row[name] is not None:
            return str(row[name]).strip()
    return ""


def _caption(texts: dict[str, str], stem: str, sidecar: Path) -> str:
    """metadata.jsonl first, then the `<stem>.txt` sidecar, else empty."""
    if stem in texts:
        return texts[stem]
    return read_text(sidecar) if sidecar.is_file() else ""


# --- inpaint ----------------------------------------------------------------------------------


def index_inpaint_folder(root: Path) -> tuple[list[Record], list[Problem]]:
    """Images anywhere under `root` (not under masks/, not *_mask.*) with captions and stem-matched masks."""
    images, folder_masks, sidecar_masks = _split_masks(root)
    texts = _metadata_texts(root, CAPTION_FIELDS)
    problems: list[Problem] = []
    records = []
    stems = set()
    for path in images:
        relative = path.relative_to(root)
        stem = stem_key(relative)
        stems.add(stem)
        mask = _pick_mask(stem, folder_masks, sidecar_masks, problems)
        caption = _caption(texts, stem, path.with_suffix(".txt"))
        records.append(Record(key=relative.as_posix(), caption=caption, target=path, mask=mask))
    problems += _orphans(root, folder_masks, stems, "mask", "has no image with the same name (stem)")
    problems += _orphans(root, sidecar_masks, stems, "mask", "has no image with the same name (stem)")
    problems += _captions_without_images(texts, stems)
    return records, problems


def _split_masks(root: Path) -> tuple[list[Path], dict[str, Path], dict[str, Path]]:
    images, folder_masks, sidecar_masks = [], {}, {}
    for path in image_files(root):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if relative.parts[0] == MASKS_DIR and len(relative.parts) > 1:
            folder_masks[stem_key(PurePosixPath(*relative.parts[1:]))] = path
        elif relative.stem.endswith(MASK_SUFFIX):
            sidecar_masks[stem_key(relative)[: -len(MASK_SUFFIX)]] = path
        else:
            images.append(path)
    return images, folder_masks, sidecar_masks


def _pick_mask(stem: str, folder_masks: dict, sidecar_masks: dict, problems: list[Problem]) -> Path | None:
    in_folder, sidecar = folder_masks.get(stem), sidecar_masks.get(stem)
    if in_folder is not None and sidecar is not None:
        problems.append(
            Problem("error", "ambiguous-mask", stem, f"two masks: {in_folder} and {sidecar}; keep one (using the first)")
        )
    return in_folder if in_folder is not None else sidecar


def _orphans(root: Path, found: dict[str, Path], stems: set[str], what: str, why: str) -> list[Problem]:
    return [
        Problem("error", "missing-pair", path.relative_to(root).as_posix(), f"{what} {path} {why}")
        for stem, path in found.items()
        if stem not in stems
    ]


def _captions_without_images(texts: dict[str, str], stems: set[str]) -> list[Problem]:
    return [
        Problem("error", "missing-pair", stem, f"{METADATA} names '{stem}' but there is no such image")
        for stem in texts
        if stem not in stems
    ]


# --- edit -------------------------------------------------------------------------------------


def is_edit_folder(root: Path) -> bool:
    return (root / INPUT_DIR).is_dir() and any((root / name).is_dir() for name in TARGET_DIRS)


def index_edit_folder(root: Path) -> tuple[list[Record], list[Problem]]:
    """Pairs `input/<name>` + `edited/<name>` (or `target/`), matched by relative path without extension."""
    target_dir = _target_dir(root)
    inputs, input_problems = _by_stem(root / INPUT_DIR)
    targets, target_problems = _by_stem(target_dir)
    texts = _metadata_texts(root, INSTRUCTION_FIELDS, strip_dirs=(INPUT_DIR, *TARGET_DIRS))
    problems = input_problems + target_problems
    records = []
    for stem in sorted(set(inputs) & set(targets), key=natural_key):
        target = targets[stem]
        caption = _caption(texts, stem, target.with_suffix(".txt"))
        key = target.relative_to(target_dir).as_posix()
        records.append(Record(key=key, caption=caption, target=target, inputs=(inputs[stem],)))
    problems += _orphans(root, inputs, set(targets), "input", f"has no edited image in {target_dir.name}/")
    problems += _orphans(root, targets, set(inputs), "edited image", f"has no input image in {INPUT_DIR}/")
    return records, problems


def _target_dir(root: Path) -> Path:
    present = [root / name for name in TARGET_DIRS if (root / name).is_dir()]
    if len(present) > 1:
        raise InputError(f"{root} has both edited/ and target/: keep one folder of edited images")
    return present[0]


def _by_stem(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    found: dict[str, Path] = {}
    problems = []
    for path in image_files(folder):
        stem = stem_key(path.relative_to(folder))
        if stem in found:
            problems.append(
                Problem("error", "duplicate-key", stem, f"{found[stem]} and {path} have the same name; rename one")
            )
            continue
        found[stem] = path
    return found, problems
