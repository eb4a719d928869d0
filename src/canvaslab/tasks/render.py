"""Run a task for one input and write its outputs: one image per seed row, and optionally a grid.

Used by the CLI for single images and by the batch runner for folders. The main output file is
written last, atomically, so its existence means the whole item (rows, grid) is complete: that is
what lets an interrupted batch resume by skipping existing outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from canvaslab.core.grid import make_grid, mask_overlay
from canvaslab.core.image import DEFAULT_MAX_PIXELS, remove_stale_temporaries, save_image
from canvaslab.errors import InputError
from canvaslab.tasks.common import ImageInput, open_image, resolve_seed, step_seed
from canvaslab.tasks.edit import edit
from canvaslab.tasks.generate import generate
from canvaslab.tasks.inpaint import inpaint
from canvaslab.tasks.outpaint import outpaint
from canvaslab.tasks.requests import RECIPE_TASKS, TaskRequest
from canvaslab.tasks.result import MetadataMode, Result, recipe_to_write
from canvaslab.tasks.texture import texture_seamless


@dataclass(frozen=True)
class OutputSpec:
    """How to write results: format, seed rows, and the comparison grid."""

    format: str | None = None  # None: from the output file's suffix
    quality: int = 95
    rows: int = 1
    grid: Path | None = None
    h_spacing: int = 8
    v_spacing: int = 8
    labels: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    metadata: MetadataMode = MetadataMode.full  # what outputs and grids remember

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MetadataMode(self.metadata))
        if self.rows < 1:
            raise InputError(f"--rows must be >= 1, got {self.rows}")
        if not 1 <= self.quality <= 100:
            raise InputError(f"--quality must be within 1..100, got {self.quality}")


# The comparison grid's columns for each task (one row per seed).
GRID_COLUMNS: dict[str, tuple[str, ...]] = {
    "inpaint": ("original", "mask", "result"),
    "outpaint": ("original", "mask", "result"),
    "edit": ("original", "result"),
    "generate": ("result",),
    "texture": ("original", "result"),
}


def run_task(
    task: str, image: ImageInput | None, mask: ImageInput | None, request: TaskRequest, max_pixels: int
) -> Result:
    if task not in RECIPE_TASKS:
        raise InputError(f"unknown task {task!r}: choose one of {', '.join(RECIPE_TASKS)}")
    if task not in ("inpaint", "edit") and mask is not None:
        raise InputError(f"{task} takes no mask")
    if task == "generate":
        if image is not None:
            raise InputError("generate takes no input image (edit changes an existing one)")
        return generate(request=request, max_pixels=max_pixels)  # type: ignore[arg-type]
    if image is None and not (task == "edit" and getattr(request, "frames", None)):
        raise InputError(f"{task} needs an input image")
    if task == "inpaint":
        return inpaint(image, mask, request=request, max_pixels=max_pixels)  # type: ignore[arg-type]
    if task == "outpaint":
        return outpaint(image, request=request, max_pixels=max_pixels)  # type: ignore[arg-type]
    if task == "texture":
        return texture_seamless(image, request=request, max_pixels=max_pixels)  # type: ignore[arg-type]
    return edit(image, request=request, mask=mask, max_pixels=max_pixels)  # type: ignore[arg-type]


def row_output(output: Path, seed: int, index: int) -> Path:
    """Where row `index` goes: the main output for row 0, `<stem>-seed<N><suffix>` after that."""
    return output if index == 0 else output.with_name(f"{output.stem}-seed{seed}{output.suffix}")


def render(
    task: str, image: ImageInput | None, mask: ImageInput | None, request: TaskRequest, output: Path, spec: OutputSpec,
    *, original: np.ndarray | None = None, tidy: bool = True,
) -> list[tuple[Result, Path]]:
    """Run `spec.rows` seeds (seed, seed+1, ...), save each, then the grid, then the main output.

    `image` is None for tasks that start from nothing (generate) or from a request's own inputs
    (edit --frames); `original` is then what the grid shows as the original (e.g. the last frame).
    With `tidy`, temporary files that an earlier, killed run left for these outputs are removed
    (the batch runner does that once per folder instead).
    """
    source = open_image(image, spec.max_pixels) if image is not None else None
    base_seed = resolve_seed(request.seed)
    results: list[Result] = []
    for index in range(spec.rows):
        row_request = request.model_copy(update={"seed": step_seed(base_seed, index)})
        result = run_task(task, source, mask, row_request, spec.max_pixels)
        results.append(result)
    saved = [(r, row_output(output, r.seed, i)) for i, r in enumerate(results)]
    for result, path in saved[1:]:
        result.save(path, format=spec.format, quality=spec.quality, metadata=spec.metadata)
    if spec.grid is not None:
        write_grid(spec.grid, original if source is None else source.rgb, results, spec, GRID_COLUMNS[task])
    results[0].save(output, format=spec.format, quality=spec.quality, metadata=spec.metadata)
    if tidy:
        for path in [*(path for _, path in saved), *([spec.grid] if spec.grid is not None else [])]:
            remove_stale_temporaries(path.parent, target=path.name)
    return saved


def write_grid(
    path: Path,
    original: np.ndarray | None,
    results: list[Result],
    spec: OutputSpec,
    columns: tuple[str, ...] = GRID_COLUMNS["inpaint"],
) -> Path:
    """One row per seed; columns among original | original with the generated area painted white | result."""
    overlay = mask_overlay(results[0].image, results[0].mask) if "mask" in columns else None
    grid = make_grid(
        [[{"original": original, "mask": overlay, "result": r.image}[name] for name in columns] for r in results],
        h_spacing=spec.h_spacing,
        v_spacing=spec.v_spacing,
        row_labels=[f"seed {r.seed}" for r in results] if spec.labels else None,
        col_labels=list(columns) if spec.labels else None,
    )
    recipes = [recipe_to_write(r.recipe, spec.metadata) for r in results]
    return save_image(path, grid, recipe=None if spec.metadata == MetadataMode.none else {"canvaslab_grid": recipes})
