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
from canvaslab.core.notices import notice
from canvaslab.errors import InputError
from canvaslab.tasks.common import ImageInput, open_image, resolve_seed
from canvaslab.tasks.render import OutputSpec, run_task
from canvaslab.tasks.requests import TaskRequest, build_request, engine_for_model
from canvaslab.tasks.result import Result

ALIASES = {"guidance": "guidance_scale", "cfg": "guidance_scale", "sampler": "scheduler", "denoise": "strength"}
# Changing these reloads weights or switches back ends: keep them in the outer loop.
EXPENSIVE = ("engine", "model", "dtype", "device", "offload", "lora")
# Axes that can change which engine a cell runs on.
ENGINE_AXES = ("engine", "model")


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


def base_request(model: type[TaskRequest], values: dict[str, Any], x: Axis, y: Axis | None) -> TaskRequest:
    """The request a grid's cells vary. An engine or model axis stands in for a missing --engine/--model:
    the first of its values under which `values` validate (so --prompt with --grid-x model=A,B, or with
    --grid-x engine=patchmatch,diffusion, is not refused for the task's default engine)."""
    axes = [a for a in (x, y) if a is not None and a.field in ENGINE_AXES and values.get(a.field) in (None, "")]
    if not axes:
        return build_request(model, values)
    first_error: InputError | None = None
    for choice in itertools.product(*(a.values for a in axes)):
        trial = {**values, **{a.field: _value(v, a.field, values) for a, v in zip(axes, choice)}}
        try:
            return build_request(model, trial)
        except InputError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def cell_requests(request: TaskRequest, x: Axis, y: Axis | None) -> dict[tuple[int, int], TaskRequest]:
    """(column, row) -> the validated request of that cell (bad values fail before anything runs)."""
    base = request.model_dump(mode="json")
    rows = y.values if y is not None else ("",)
    engine_axis = x.field in ENGINE_AXES or (y is not None and y.field in ENGINE_AXES)
    if engine_axis and _engine_was_inferred(request):
        base["engine"] = None  # each cell's model picks its engine (--grid-x model=sd15,show-o)
    cells = {}
    for (col, x_value), (row, y_value) in itertools.product(enumerate(x.values), enumerate(rows)):
        values = {**base, x.field: _value(x_value, x.field, base)}
        if y is not None:
            values[y.field] = _value(y_value, y.field, base)
        if engine_axis:
            # Comparing engines: a prompt is for the cells whose engine reads one, not an error in the others.
            values, dropped = type(request).drop_unused(values)
            if dropped:
                label = ", ".join(a.label(v) for a, v in ((x, x_value), (y, y_value)) if a is not None)
                notice(f"grid cell {label}: its engine does not read {', '.join(dropped)}, left out there")
        cells[(col, row)] = build_request(type(request), values)
    return cells


def _engine_was_inferred(request: TaskRequest) -> bool:
    """Whether the request's engine is the one its model (or the task default) implies, i.e. not a choice
    that should hold for every cell."""
    default = type(request).model_fields["engine"].default
    return request.engine == (engine_for_model(request.model) if request.model else default)


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
