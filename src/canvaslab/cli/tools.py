"""`canvaslab grid`, `info`, `replay` and `engines`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.table import Table

from canvaslab.cli import console
from canvaslab.core.grid import grid_from_files
from canvaslab.core.image import DEFAULT_MAX_PIXELS, encode_image, load_image, save_image
from canvaslab.core.metadata import find_by_sha256, lora_sha256, model_sha256, read_metadata
from canvaslab.engines import engine_class, engine_names
from canvaslab.errors import InputError
from canvaslab.tasks.render import run_task
from canvaslab.tasks.requests import RECIPE_TASKS, build_request, display_name, local_path, parse_lora
from canvaslab.tasks.result import MetadataMode


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
    image: Annotated[Path, typer.Argument(help="an image written by canvaslab (or by AUTOMATIC1111), a video / frames folder written by `video inpaint`, or a mask folder written by `video track`", show_default=False)],
) -> None:
    """Print the recipe stored in an output image (or video, or tracked mask folder)."""
    with console.friendly_errors():
        if _is_video_output(image):
            meta = _video_metadata(image)
        else:
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
    image: Annotated[Path, typer.Argument(help="an image written by canvaslab (or a video / frames folder written by `video inpaint`, or a mask folder written by `video track`)", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="where to write [default: <name>-replay.png; a video's: <name>-replay.<its suffix>; a folder's: <name>-replay]")] = None,
    source: Annotated[Optional[Path], typer.Option("--image", help="use this input image (of a video output: this clip) instead of the recorded one")] = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="use this mask instead of the recorded one")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="use this model (file, folder, alias) instead of the recorded one")] = None,
    lora: Annotated[Optional[list[str]], typer.Option("--lora", metavar="PATH[:WEIGHT]", help="use these LoRAs instead of the recorded ones, repeatable")] = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 unless the replay reproduces the pixels exactly")] = False,
) -> None:
    """Re-run the recipe stored in an output image; deterministic engines reproduce the same pixels.

    Inputs are found at their recorded path, else by name and sha256 beside the image or in the current
    folder; local models and LoRAs at their recorded path, else by sha256 among those hashed on this
    machine (private recipes record no paths). --image, --mask, --model and --lora say where they are.
    """
    with console.friendly_errors():
        if image.is_dir() and _track_recipe(image) is not None:
            return _replay_track(image, output, source, mask, check)
        if _is_video_output(image):
            return _replay_video(image, output, source, mask, model, lora, check)
        recipe = read_metadata(image).recipe
        if recipe and recipe.get("task") == "mask":
            return _replay_mask(image, recipe, output, source, check)
        if recipe and recipe.get("task") == "mask-ops":
            return _replay_mask_ops(image, recipe, output, check)
        if not recipe or recipe.get("task") not in RECIPE_TASKS:
            raise InputError(f"{image} has no canvaslab recipe to replay")
        task = recipe["task"]
        values, ignored = RECIPE_TASKS[task].drop_unused(recipe["request"])
        if ignored:  # recorded by versions that let engines ignore them: they did not shape the pixels
            console.info(f"[yellow]notice:[/] the {values.get('engine')} engine does not read "
                         f"{', '.join(ignored)}; replaying without")
        values = _with_models(values, recipe.get("models") or {}, model, lora)
        inputs = recipe.get("inputs", {})
        near = [image.resolve().parent, Path.cwd()]
        if isinstance(values.get("frames"), str) and "frames" in inputs:
            values["frames"] = str(_recorded_folder(inputs["frames"], near))
        values = _with_conditioning_images(values, inputs, near)
        request = build_request(RECIPE_TASKS[task], values)
        # generate has no input image to reopen
        image_in = source or (_recorded(inputs.get("image"), "image", "--image", near) if "image" in inputs else None)
        mask_in = mask or (_recorded_mask(inputs["mask"], near, image_in) if inputs.get("mask") else None)
        result = run_task(task, image_in, mask_in, request, max_pixels=_pixels_limit(recipe))
        target = output or image.with_name(f"{image.stem}-replay.png")
        print(result.save(target, metadata=MetadataMode.private if recipe.get("private") else MetadataMode.full))
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


def _recorded(entry: dict | None, what: str, flag: str, near: list[Path], *, folder: bool = False) -> Path:
    """The recorded input: at its path, else a file of its name and sha256 in one of the `near` folders.
    With `folder` (a clip or masks as a folder of frames), a folder at the recorded path counts too."""
    entry = entry or {}
    path = Path(entry["path"]) if entry.get("path") else None
    if path is not None and (path.is_file() or (folder and path.is_dir())):
        return path
    name = entry.get("name") or (path.name if path is not None else None)
    for folder in near if name else []:
        candidate = folder / name
        if candidate.is_file() and entry.get("sha256") in (None, hashlib.sha256(candidate.read_bytes()).hexdigest()):
            return candidate
    where = f"at {path}" if path is not None else f"named {name} beside the image or here" if name else "recorded"
    if not flag:  # no flag replaces this input: it is found by name and sha256
        raise InputError(f"the {what} the recipe was made from is not {where}: put it back, or a copy of it beside "
                         "the output or in this folder")
    raise InputError(f"the {what} the recipe was made from is not {where}: pass {flag} FILE")


def _with_conditioning_images(values: dict[str, Any], inputs: dict[str, Any], near: list[Path]) -> dict[str, Any]:
    """Control and IP-Adapter images found like the input image: at their recorded path, else by name and sha256."""
    values = dict(values)
    control = [dict(unit) for unit in values.get("control") or [] if isinstance(unit, dict)]
    for index, unit in enumerate(control):
        if unit.get("image") and f"control_{index}" in inputs:
            unit["image"] = str(_recorded(inputs[f"control_{index}"], f"control image {index}", "", near))
    adapters = [dict(item) for item in values.get("ip_adapter") or [] if isinstance(item, dict)]
    for index, item in enumerate(adapters):
        item["images"] = [str(_recorded(inputs[key], f"IP-Adapter {index} image {number}", "", near))
                          if (key := f"ip_adapter_{index}_{number}") in inputs else path
                          for number, path in enumerate(item.get("images") or [])]
    if control:
        values["control"] = control
    if adapters:
        values["ip_adapter"] = adapters
    return values


def _recorded_mask(entry: dict, near: list[Path], image: Path | None) -> Any:
    """The recorded mask file; when it is gone but `canvaslab mask` made it, the mask made again from its
    recipe (points, words or rule) on the replay's image."""
    try:
        return _recorded(entry, "mask", "--mask", near)
    except InputError:
        if not isinstance(entry.get("made"), dict):
            raise
    from canvaslab.tasks.mask import remake

    console.info("[yellow]notice:[/] the mask file is gone: making the mask again from its recipe")
    made = remake(entry["made"], image)
    return made.mask if made.mask.dtype == bool else made.mask > 0


def _replay_mask(image: Path, recipe: dict, output: Path | None, source: Path | None, check: bool) -> None:
    """`canvaslab replay` of a mask made by `canvaslab mask`: make it again, compare the pixels."""
    from canvaslab.tasks.mask import remake

    near = [image.resolve().parent, Path.cwd()]
    inputs = recipe.get("inputs") or {}
    image_in = source or (_recorded(inputs["image"], "image", "--image", near) if inputs.get("image") else None)
    _save_and_compare_mask(image, remake(recipe, image_in), output, check)


def _is_video_output(path: Path) -> bool:
    """A video file, or a folder (a video run's frames): what `video inpaint` writes."""
    from canvaslab.video.io import VIDEO_SUFFIXES

    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


def _video_metadata(path: Path) -> Any:
    from types import SimpleNamespace

    from canvaslab.video.inpainting import RECIPE_FILE, read_recipe

    if path.is_dir() and (tracked := _track_recipe(path)) is not None:
        return SimpleNamespace(parameters=None, recipe=tracked)
    if path.is_dir() and not (path / RECIPE_FILE).is_file():
        raise InputError(f"{path} is a folder without {RECIPE_FILE}: not frames written by `canvaslab video inpaint` "
                         "(nor masks written by `video track`)")
    return SimpleNamespace(parameters=None, recipe=read_recipe(path))


def _track_recipe(path: Path) -> dict | None:
    from canvaslab.video.tracking import read_track_recipe

    return read_track_recipe(path)


def _replay_track(path: Path, output: Path | None, clip: Path | None, mask: Path | None, check: bool) -> None:
    """`canvaslab replay` of a `video track` mask folder: the recorded request on the recorded clip and key
    masks (found at their paths, else by name and sha256 beside the folder or here), every mask compared."""
    from canvaslab.video.requests import TrackRequest
    from canvaslab.video.tracking import track

    recipe = _track_recipe(path) or {}
    inputs = recipe.get("inputs") or {}
    near = [path.resolve().parent, Path.cwd()]
    if clip is None:
        clip = _recorded(inputs.get("clip"), "clip", "--image", near, folder=True)
    if mask is None:
        entry = inputs.get("mask") or {}
        mask = _recorded(entry, "key mask", "--mask", near, folder=True)
        changed = [name for name, digest in (entry.get("files") or {}).items() if not (mask / name).is_file()
                   or hashlib.sha256((mask / name).read_bytes()).hexdigest() != digest] if mask.is_dir() else []
        if changed:
            console.info(f"[yellow]notice:[/] key masks changed or gone since the folder was made: {', '.join(changed)}")
    request = build_request(TrackRequest, dict(recipe.get("request") or {}))  # type: ignore[arg-type]
    target = output or path.with_name(f"{path.name}-replay")
    result = track(clip, mask, target, request=request, max_pixels=_pixels_limit(recipe))
    print(result.folder)
    names = sorted(p.name for p in path.glob("*.png"))
    again = sorted(p.name for p in result.folder.glob("*.png"))
    differ = [name for name in names if name not in again or not np.array_equal(
        load_image(path / name, max_pixels=2**62).rgb, load_image(result.folder / name, max_pixels=2**62).rgb)]
    differ += [name for name in again if name not in names]
    if differ:
        shown = ", ".join(Path(name).stem for name in differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        console.info(f"[red]the masks differ from the folder's[/] at {shown} (corrected by hand?)")
    else:
        console.info("[green]identical masks[/]")
    if check and differ:
        raise typer.Exit(1)


def _replay_video(path: Path, output: Path | None, clip: Path | None, mask: Path | None, model: str | None,
                  lora: list[str] | None, check: bool) -> None:
    """`canvaslab replay` of a `video inpaint` output: the same request on the recorded clip and mask (found at
    their paths, else by name and sha256 beside the output or here); --check compares every frame."""
    from canvaslab.video.inpainting import inpaint
    from canvaslab.video.io import open_clip
    from canvaslab.video.requests import VideoInpaintRequest

    recipe = _video_metadata(path).recipe
    if recipe is None:
        raise InputError(f"{path} has no canvaslab recipe to replay")
    inputs = recipe.get("inputs") or {}
    near = [path.resolve().parent, Path.cwd()]
    if clip is None:
        clip = _recorded(inputs.get("clip"), "clip", "--image", near, folder=True)
    if mask is None and inputs.get("mask"):
        mask = _recorded(inputs["mask"], "mask", "--mask", near, folder=True)
    values = _with_models(dict(recipe["request"]), recipe.get("models") or {}, model, lora)
    request = build_request(VideoInpaintRequest, values)
    target = output or (path.with_name(f"{path.stem}-replay{path.suffix}") if path.suffix else path.with_name(f"{path.name}-replay"))
    result = inpaint(clip, mask, target, request=request, metadata=MetadataMode.private if recipe.get("private") else MetadataMode.full)
    print(result.path)
    if not engine_class(request.engine).deterministic:
        console.info(f"engine {request.engine} is not deterministic: the frames will differ")
        return
    before, after = open_clip(path), open_clip(result.path)
    same = before.count == after.count and all(np.array_equal(a, b) for a, b in zip(before.frames(), after.frames()))
    lossy = path.suffix.lower() in (".mp4", ".m4v", ".mov", ".webm", ".gif")
    console.info("[green]identical frames[/]" if same else "[red]the frames differ from the original[/]"
                 + (" (a lossy codec: compare a lossless .mkv or frames folder)" if lossy and not same else ""))
    if check and not same:
        raise typer.Exit(1)


def _replay_mask_ops(image: Path, recipe: dict, output: Path | None, check: bool) -> None:
    """`canvaslab replay` of a `mask ops` result: the same ops on the recorded mask files, pixels compared."""
    from canvaslab.tasks.mask import replay_ops

    near = [image.resolve().parent, Path.cwd()]

    def find(entry: dict, what: str) -> Path:
        try:
            return _recorded(entry, what, "", near)
        except InputError:
            name = entry.get("path") or entry.get("name")
            raise InputError(f"the {what} {name} that `mask ops` used is gone: put it back, or a copy beside "
                             f"{image.name}") from None

    _save_and_compare_mask(image, replay_ops(recipe, find), output, check)


def _save_and_compare_mask(image: Path, result: Any, output: Path | None, check: bool) -> None:
    """Write a remade mask beside the original (or to `output`) and say whether its pixels are the original's."""
    target = output or image.with_name(f"{image.stem}-replay.png")
    print(result.save(target))
    same = np.array_equal(np.asarray(load_image(image).rgb[..., 0]), result.grey())
    console.info("[green]identical pixels[/]" if same else "[red]the pixels differ from the original mask[/]")
    if check and not same:
        raise typer.Exit(1)


def _recorded_folder(entry: dict, near: list[Path]) -> Path:
    """edit --frames: the recorded folder, else a folder of its name beside the image or here."""
    path = Path(entry["path"]) if entry.get("path") else None
    if path is not None and path.is_dir():
        return path
    name = entry.get("name") or (path.name if path is not None else "")
    found = next((folder / name for folder in near if name and (folder / name).is_dir()), None)
    if found is None:
        raise InputError(f"the frames folder {name or path} the recipe was made from is not here: copy it beside the image")
    return found


def _with_models(values: dict[str, Any], models: dict[str, Any], model: str | None, lora: list[str] | None) -> dict[str, Any]:
    """The request with its local model and LoRAs found: given, at their recorded path, or by sha256."""
    values = dict(values)
    if model is not None:
        values["model"] = model
    elif isinstance(models.get("model"), dict):
        values["model"] = str(_find_model(values.get("model"), models["model"], "model", "--model", model_sha256))
    if lora is not None:
        values["lora"] = list(lora)
    else:
        recorded = {entry.get("name"): entry for entry in models.get("lora") or [] if isinstance(entry, dict)}
        specs = []
        for spec in values.get("lora") or []:
            name, weight = parse_lora(spec)
            entry = recorded.get(display_name(name)) or recorded.get(Path(name).stem) or recorded.get(Path(name).name)
            if entry is not None:
                name = str(_find_model(name, entry, "LoRA", "--lora", lora_sha256))
            specs.append(f"{name}:{weight:g}")
        values["lora"] = specs
    return values


def _find_model(recorded: Any, entry: dict[str, Any], what: str, flag: str, digest_of: Any) -> Path | str:
    """A model the recipe names with its sha256: at the recorded path if unchanged, else any file with that hash."""
    sha256 = str(entry.get("sha256", ""))
    path = local_path(recorded) if isinstance(recorded, str) else None
    if path is not None and digest_of(path) == sha256:
        return path
    found = find_by_sha256(sha256)
    if found is not None:
        if path is None or found != path.resolve():
            console.info(f"[yellow]notice:[/] the recipe's {what} {entry.get('name')} (sha256 {sha256[:10]}) is at {found}")
        return found
    if path is not None:
        console.info(f"[yellow]notice:[/] the {what} at {path} changed since the image was made (its sha256 is not "
                     f"{sha256[:10]} any more): replaying with it")
        return path
    raise InputError(
        f"the recipe's {what} {entry.get('name')!r} (sha256 {sha256[:10]}) is not on this machine, or was never used "
        f"here: pass {flag} PATH"
    )


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
