"""XYZ-style parameter grids: one labelled grid of results over one or two request fields.

    --grid-x steps=10,20,30 --grid-y guidance_scale=3,5,7

Any request field can be an axis (a few short names people type are accepted: guidance, cfg,
sampler, denoise). Every cell is a full, validated request. Cells run in an order where the
expensive switches (loading another model or engine) happen as rarely as possible, then are laid
out in the grid as asked.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from canvaslab.core.grid import make_grid
from canvaslab.core.image import save_image
from canvaslab.errors import InputError
from canvaslab.tasks.common import ImageInput, open_image, resolve_seed
from canvaslab.tasks.render import OutputSpec, run_task
from canvaslab.tasks.requests import TaskRequest, build_request
from canvaslab.tasks.result import Result

ALIASES = {"guidance": "guidance_scale", "cfg": "guidance_scale", "sampler": "scheduler", "denoise": "strength"}
# Changing these reloads weights or switches back ends: keep them in the outer loop.
EXPENSIVE = ("engine", "model", "dtype", "device", "offload", "lora")


@dataclass(frozen=True)
class Axis:
    field: str
    values: tuple[str, ...]

    def label(self, value: str) -> str:
        return f"{self.field}={value}"


def parse_axis(text: str, model: type[TaskRequest]) -> Axis:
    """"steps=10,20,30" -> Axis("steps", ("10", "20", "30")); the field must exist in `model`."""
    name, sep, raw = text.partition("=")
    name = ALIASES.get(name.strip(), name.strip().replace("-", "_"))
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not sep or not values:
        raise InputError(f"a grid axis looks like FIELD=V1,V2,..., got {text!r}")
    if name not in model.model_fields:
        raise InputError(f"unknown grid axis field {name!r}: use a request field such as steps, guidance_scale, scheduler")
    return Axis(name, values)


def cell_requests(request: TaskRequest, x: Axis, y: Axis | None) -> dict[tuple[int, int], TaskRequest]:
    """(column, row) -> the validated request of that cell (bad values fail before anything runs)."""
    base = request.model_dump(mode="json")
    rows = y.values if y is not None else ("",)
    cells = {}
    for (col, x_value), (row, y_value) in itertools.product(enumerate(x.values), enumerate(rows)):
        values = {**base, x.field: _value(x_value, x.field, base)}
        if y is not None:
            values[y.field] = _value(y_value, y.field, base)
        cells[(col, row)] = build_request(type(request), values)
    return cells


def _value(raw: str, field: str, base: dict[str, Any]) -> Any:
    if isinstance(base.get(field), list):
        return [raw]
    return None if raw.lower() in ("none", "default") else raw


def run_order(cells: dict[tuple[int, int], TaskRequest], x: Axis, y: Axis | None) -> list[tuple[int, int]]:
    """Cell order with the expensive axis outermost, so a model is loaded once per value, not per cell."""
    x_costly = x.field in EXPENSIVE
    y_costly = y is not None and y.field in EXPENSIVE
    if x_costly and not y_costly:
        return sorted(cells, key=lambda cell: (cell[0], cell[1]))
    return sorted(cells, key=lambda cell: (cell[1], cell[0]))


def render_xyz(
    task: str,
    image: ImageInput,
    mask: ImageInput | None,
    request: TaskRequest,
    x: Axis,
    y: Axis | None,
    grid_path: Path,
    spec: OutputSpec,
) -> tuple[Path, dict[tuple[int, int], Result]]:
    """Run every cell with the same seed and write one labelled grid (x across, y down)."""
    source = open_image(image, spec.max_pixels)
    seed = resolve_seed(request.seed)
    cells = cell_requests(request.model_copy(update={"seed": seed}), x, y)
    results = {cell: run_task(task, source, mask, cells[cell], spec.max_pixels) for cell in run_order(cells, x, y)}
    columns, rows = len(x.values), len(y.values) if y is not None else 1
    layout: list[list[np.ndarray | None]] = [[results[(c, r)].image for c in range(columns)] for r in range(rows)]
    grid = make_grid(
        layout,
        h_spacing=spec.h_spacing,
        v_spacing=spec.v_spacing,
        col_labels=[x.label(v) for v in x.values],
        row_labels=[y.label(v) for v in y.values] if y is not None else None,
    )
    recipe = {"canvaslab_xyz": {"x": x.field, "y": y.field if y else None, "cells": [r.recipe for r in results.values()]}}
    return save_image(grid_path, grid, recipe=recipe), results
