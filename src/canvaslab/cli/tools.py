"""`canvaslab grid`, `info`, `replay` and `engines`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.table import Table

from canvaslab.cli import console
from canvaslab.core.grid import grid_from_files
from canvaslab.core.image import DEFAULT_MAX_PIXELS, encode_image, load_image, save_image
from canvaslab.core.metadata import read_metadata
from canvaslab.engines import engine_class, engine_names
from canvaslab.errors import InputError
from canvaslab.tasks.requests import REQUESTS, build_request
from canvaslab.tasks.render import run_task


def grid(
    files: Annotated[list[Path], typer.Argument(help="images, in reading order", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="grid image to write")] = Path("grid.png"),
    columns: Annotated[Optional[int], typer.Option("--columns", "-c", min=1, help="images per row [default: about square]")] = None,
    rows: Annotated[Optional[int], typer.Option("--rows", "-r", min=1, help="number of rows")] = None,
    labels: Annotated[bool, typer.Option("--labels/--no-labels", help="write each file's name under it")] = False,
    h_spacing: Annotated[int, typer.Option("--h-spacing", min=0, help="pixels between columns")] = 8,
    v_spacing: Annotated[int, typer.Option("--v-spacing", min=0, help="pixels between rows")] = 8,
) -> None:
    """Assemble existing images into one grid."""
    with console.friendly_errors():
        image = grid_from_files(files, columns=columns, rows=rows, labels=labels, h_spacing=h_spacing, v_spacing=v_spacing)
        print(save_image(output, image))


def info(
    image: Annotated[Path, typer.Argument(help="an image written by canvaslab (or by AUTOMATIC1111)", show_default=False)],
) -> None:
    """Print the recipe stored in an output image."""
    with console.friendly_errors():
        meta = read_metadata(image)
        if meta.parameters is None and meta.recipe is None:
            raise InputError(f"{image} carries no recipe (no A1111 parameters, no canvaslab JSON)")
        if console.settings.json:
            console.emit_json({"parameters": meta.parameters, "recipe": meta.recipe})
            return
        if meta.parameters:
            console.out.rule("parameters (AUTOMATIC1111 format)")
            console.out.print(meta.parameters, markup=False)
        if meta.recipe:
            console.out.rule("recipe (canvaslab JSON)")
            console.out.print(json.dumps(meta.recipe, indent=2, ensure_ascii=False), markup=False)


def replay(
    image: Annotated[Path, typer.Argument(help="an image written by canvaslab", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="where to write [default: <name>-replay.png]")] = None,
    source: Annotated[Optional[Path], typer.Option("--image", help="use this input image instead of the recorded path")] = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="use this mask instead of the recorded path")] = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 unless the replay reproduces the pixels exactly")] = False,
) -> None:
    """Re-run the recipe stored in an output image; deterministic engines reproduce the same pixels."""
    with console.friendly_errors():
        recipe = read_metadata(image).recipe
        if not recipe or recipe.get("task") not in REQUESTS:
            raise InputError(f"{image} has no canvaslab recipe to replay")
        task = recipe["task"]
        values, ignored = REQUESTS[task].drop_unused(recipe["request"])
        if ignored:  # recorded by versions that let engines ignore them: they did not shape the pixels
            console.info(f"[yellow]notice:[/] the {values.get('engine')} engine does not read "
                         f"{', '.join(ignored)}; replaying without")
        request = build_request(REQUESTS[task], values)
        inputs = recipe.get("inputs", {})
        # generate has no input image to reopen
        image_in = source or (_recorded(inputs.get("image"), "image", "--image") if "image" in inputs else None)
        mask_in = mask or (_recorded(inputs["mask"], "mask", "--mask") if inputs.get("mask") else None)
        result = run_task(task, image_in, mask_in, request, max_pixels=_pixels_limit(recipe))
        target = output or image.with_name(f"{image.stem}-replay.png")
        print(result.save(target))
        if not engine_class(request.engine).deterministic:
            console.info(f"engine {request.engine} is not deterministic: the pixels will differ")
            return
        original = load_image(image)
        same = np.array_equal(original.rgb, _as_saved(result, original.format, recipe))
        console.info("[green]identical pixels[/]" if same else "[red]the pixels differ from the original output[/]")
        if check and not same:
            raise typer.Exit(1)


def _as_saved(result: Any, original_format: str | None, recipe: dict) -> np.ndarray:
    """The replayed pixels as the original file stores them: JPEG/WebP go through the same lossy encoding."""
    if original_format not in ("JPEG", "WEBP"):
        return result.image
    quality = int(recipe.get("output", {}).get("quality", 95))
    encoded = encode_image(result.image, alpha=result.alpha, format=original_format.lower(), quality=quality)
    return load_image(encoded).rgb


def _recorded(entry: dict | None, what: str, flag: str) -> Path:
    path = Path(entry["path"]) if entry and entry.get("path") else None
    if path is None or not path.is_file():
        raise InputError(f"the recorded {what} {path or '(not a file)'} is not available: pass {flag} FILE")
    return path


def _pixels_limit(recipe: dict) -> int:
    width, height = recipe.get("size", (0, 0))
    return max(DEFAULT_MAX_PIXELS, int(width) * int(height))


def engines() -> None:
    """List the engines and their options."""
    with console.friendly_errors():
        rows = []
        for name in engine_names():
            cls = engine_class(name)
            options = {k: {"default": f.default, "help": f.description} for k, f in cls.Options.model_fields.items()}
            rows.append({"name": name, "description": cls.description, "deterministic": cls.deterministic, "options": options})
        if console.settings.json:
            console.emit_json(rows)
            return
        table = Table("engine", "what it does", "options (--opt KEY=VALUE)")
        for row in rows:
            opts = ", ".join(f"{k}={v['default']}" for k, v in row["options"].items())
            table.add_row(row["name"], row["description"], opts)
        console.out.print(table)


def register(app: typer.Typer) -> None:
    app.command("grid", rich_help_panel="Tools")(grid)
    app.command("info", rich_help_panel="Tools")(info)
    app.command("replay", rich_help_panel="Tools")(replay)
    app.command("engines", rich_help_panel="Tools")(engines)
