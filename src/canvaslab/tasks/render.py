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
from canvaslab.core.image import DEFAULT_MAX_PIXELS, save_image
from canvaslab.errors import InputError
from canvaslab.tasks.common import ImageInput, open_image, resolve_seed, step_seed
from canvaslab.tasks.inpaint import inpaint
from canvaslab.tasks.outpaint import outpaint
from canvaslab.tasks.requests import REQUESTS, TaskRequest
from canvaslab.tasks.result import Result


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

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise InputError(f"--rows must be >= 1, got {self.rows}")
        if not 1 <= self.quality <= 100:
            raise InputError(f"--quality must be within 1..100, got {self.quality}")


def run_task(task: str, image: ImageInput, mask: ImageInput | None, request: TaskRequest, max_pixels: int) -> Result:
    if task == "inpaint":
        return inpaint(image, mask, request=request, max_pixels=max_pixels)
    if task == "outpaint":
        return outpaint(image, request=request, max_pixels=max_pixels)
    raise InputError(f"unknown task {task!r}: choose one of {', '.join(REQUESTS)}")


def row_output(output: Path, seed: int, index: int) -> Path:
    """Where row `index` goes: the main output for row 0, `<stem>-seed<N><suffix>` after that."""
    return output if index == 0 else output.with_name(f"{output.stem}-seed{seed}{output.suffix}")


def render(
    task: str, image: ImageInput, mask: ImageInput | None, request: TaskRequest, output: Path, spec: OutputSpec
) -> list[tuple[Result, Path]]:
    """Run `spec.rows` seeds (seed, seed+1, ...), save each, then the grid, then the main output."""
    source = open_image(image, spec.max_pixels)
    base_seed = resolve_seed(request.seed)
    results: list[Result] = []
    for index in range(spec.rows):
        row_request = request.model_copy(update={"seed": step_seed(base_seed, index)})
        result = run_task(task, source, mask, row_request, spec.max_pixels)
        results.append(result)
    saved = [(r, row_output(output, r.seed, i)) for i, r in enumerate(results)]
    for result, path in saved[1:]:
        result.save(path, format=spec.format, quality=spec.quality)
    if spec.grid is not None:
        write_grid(spec.grid, source.rgb, results, spec)
    results[0].save(output, format=spec.format, quality=spec.quality)
    return saved


def write_grid(path: Path, original: np.ndarray, results: list[Result], spec: OutputSpec) -> Path:
    """original | original with the generated area painted white | result, one row per seed."""
    overlay = mask_overlay(results[0].image, results[0].mask)
    grid = make_grid(
        [[original, overlay, result.image] for result in results],
        h_spacing=spec.h_spacing,
        v_spacing=spec.v_spacing,
        row_labels=[f"seed {r.seed}" for r in results] if spec.labels else None,
        col_labels=["original", "mask", "result"] if spec.labels else None,
    )
    return save_image(path, grid, recipe={"canvaslab_grid": [r.recipe for r in results]})
