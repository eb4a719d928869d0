"""`canvaslab mask`: make a mask without painting (points, boxes, words, rules), and `canvaslab mask ops`:
edit mask files (union, intersect, subtract, grow, shrink, feather, invert, fill holes, largest, resize).

`canvaslab mask IMG ...` is `canvaslab mask make IMG ...`: the group runs `make` unless its first word
is another of its commands. make's flags come from `MaskRequest` (tasks/requests.py), like every task's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from typer.core import TyperGroup

from canvaslab.cli import console
from canvaslab.cli.options import command
from canvaslab.cli.paint import ImagesOpt, MaxPixelsOpt, OutDirOpt, ShardOpt, _progress
from canvaslab.core.image import DEFAULT_MAX_PIXELS, MASK_MODES, load_image
from canvaslab.errors import InputError
from canvaslab.tasks.requests import MaskRequest, build_request
from canvaslab.tasks.result import MetadataMode, private_recipe

OUT = "Output"


class _MakeByDefault(TyperGroup):
    """A group whose first argument, unless it names one of its commands, goes to `make`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["make", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_MakeByDefault, no_args_is_help=True, rich_markup_mode="rich",
    help="Masks without painting: [bold]canvaslab mask IMG[/] --point X,Y | --box X0,Y0,X1,Y1 | --text WORDS | "
    "--auto watermark|text|damage (that is `mask make`), and [bold]canvaslab mask ops[/] to edit mask files. "
    "See docs/masks.md.",
)


def _make_inputs(
    image: Annotated[Optional[Path], typer.Argument(help="input image (or --images DIR)", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="mask file, PNG, white = fill \\[default: ./<name>-mask.png]; with --auto watermark the one mask of the folder", rich_help_panel=OUT)] = None,
    preview: Annotated[Optional[Path], typer.Option("--preview", help="also write the image with the mask painted red over it, to check it without a viewer", rich_help_panel=OUT)] = None,
    metadata: Annotated[MetadataMode, typer.Option("--metadata", envvar="CANVASLAB_METADATA", help="what the mask file remembers: full (how it was made, with local paths: replay works here), private (file names instead of paths), none", rich_help_panel=OUT)] = MetadataMode.full,
    images: ImagesOpt = None,
    out: OutDirOpt = None,
    shard: ShardOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Make a mask: click (Segment Anything), words (CLIPSeg or a detector + SAM) or a rule (no model).

    Prints the mask's path; the scores and the share of the image it covers go to stderr (--json: all).
    Coordinates are image pixels as a viewer shows the image (EXIF rotation applied), x right, y down.

    Examples:

      canvaslab mask photo.jpg --point 320,240 -o spoon.png

      canvaslab mask photo.jpg --point 320,240 --negative-point 300,100 --multimask --grow 8

      canvaslab mask photo.jpg --box 280,60,430,340 --model sam-hq

      canvaslab mask photo.jpg --text "the spoon" --threshold 0.3 --grow 6

      canvaslab mask photo.jpg --text "the spoon" --text-model grounding-dino --model sam

      canvaslab mask --images scans/ --auto damage --opt contrast=60 --out damage-masks/

      canvaslab mask --images stock/ --auto watermark -o watermark.png
    """


def _run_make(values: dict[str, Any], **cli: Any) -> None:
    with console.friendly_errors():
        request = build_request(MaskRequest, values)
        if cli["images"] is not None and cli["out"] is not None:
            return _run_folder(request, cli)
        from canvaslab.tasks.batch import refuse_input_as_output
        from canvaslab.tasks.mask import FOLDER_RULES, make_mask

        folder_rule = request.auto is not None and request.auto.value in FOLDER_RULES
        if cli["images"] is not None and cli["image"] is None and not folder_rule:
            raise InputError("with --images DIR, give --out DIR for the masks (one per image); -o FILE is for one "
                             "image, or for the one mask of --auto watermark")

        image, images = cli["image"], cli["images"]
        if image is not None and images is not None:
            raise InputError("give either an IMAGE or --images DIR, not both")
        if cli["out"] is not None:
            raise InputError("--out is the folder of masks for --images DIR; for one image use -o FILE")
        if cli["shard"] is not None:
            raise InputError("--shard splits a folder (--images DIR --out DIR) between processes")
        if image is None and images is None:
            raise InputError("give an image to mask (or --images DIR with --out DIR, or -o FILE for --auto watermark)")
        stem = image.stem if image is not None else Path(images).name
        output = cli["output"] or Path(f"{stem}-mask.png")
        refuse_input_as_output(output, image, flag="-o")
        if images is not None and Path(images).resolve() in output.resolve().parents:
            raise InputError(f"-o {output} is inside --images {images}: the mask would be read as one of the images "
                             "next time; write it beside the folder")
        refuse_input_as_output(cli["preview"], image, output, flag="--preview")
        result = make_mask(image, request, images=images, max_pixels=cli["max_pixels"])
        result.recipe = _for_metadata(result.recipe, cli["metadata"])
        path = result.save(output, recipe=result.recipe is not None)
        if cli["preview"] is not None and image is not None:
            _write_preview(cli["preview"], image, result, cli["max_pixels"])
        _report(result, path, cli["preview"])


def _for_metadata(recipe: dict[str, Any], metadata: MetadataMode) -> dict[str, Any] | None:
    if metadata == MetadataMode.none:
        return None
    return private_recipe(recipe) if metadata == MetadataMode.private else recipe


def _write_preview(path: Path, image: Path, result: Any, max_pixels: int) -> None:
    from canvaslab.core.image import save_image

    rgb = load_image(image, max_pixels=max_pixels).rgb.astype(np.float32)
    level = result.grey().astype(np.float32)[..., None] / 255 * 0.55
    red = np.array([255, 0, 0], np.float32)
    save_image(path, np.round(rgb * (1 - level) + red * level).astype(np.uint8))


def _report(result: Any, path: Path, preview: Path | None) -> None:
    if console.settings.json:
        console.emit_json({
            "output": str(path), "preview": str(preview) if preview else None, "size": list(result.size),
            "coverage": round(result.coverage, 6), "scores": [round(s, 4) for s in result.scores],
            "boxes": result.boxes, "embedding_cached": result.cached, "notices": result.notices,
            "seconds": round(result.seconds, 3),
        })
        return
    print(path)
    scores = f", scores {', '.join(f'{s:.3f}' for s in result.scores)}" if result.scores else ""
    console.info(f"[dim]mask {result.size[0]}x{result.size[1]} covering {100 * result.coverage:.1f} %{scores} "
                 f"({result.seconds:.2f} s)[/]")


def _run_folder(request: MaskRequest, cli: dict[str, Any]) -> None:
    from canvaslab.cli.paint import _report_batch
    from canvaslab.tasks.batch import Pairing, check_out_folder, find_images, launcher_shard, make_out_folder, parse_shard
    from canvaslab.tasks.mask import mask_folder

    if cli["image"] is not None:
        raise InputError("give either an IMAGE or --images DIR, not both")
    if cli["output"] is not None:
        raise InputError("-o names one mask file; with --images and --out the masks go to the folder by name")
    if cli["preview"] is not None:
        raise InputError("--preview is for one image")
    if cli["out"].exists() and not cli["out"].is_dir():
        raise InputError(f"--out {cli['out']} is a file; give a folder (it is created if missing)")
    check_out_folder(cli["images"], cli["out"])
    index, count = parse_shard(cli["shard"]) if cli["shard"] else launcher_shard()
    found = find_images(cli["images"])
    if not found:
        raise InputError(f"no images (png/jpg/jpeg/webp) found under {cli['images']}")
    make_out_folder(cli["out"])
    total = len(found[index::count])
    try:
        with _progress(total) as advance:
            report = mask_folder(cli["images"], cli["out"], request, shard_of=(index, count),
                                 max_pixels=cli["max_pixels"], on_progress=advance)
    except KeyboardInterrupt:
        console.error_line("interrupted; finished masks are kept: run the same command again to resume")
        raise typer.Exit(130) from None
    _report_batch(report, Pairing())


# -- mask ops ----------------------------------------------------------------------------------------


def ops(
    masks: Annotated[list[Path], typer.Argument(help="mask files (white = fill unless --mask-mode says otherwise)", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="the resulting mask, PNG")] = Path("mask.png"),
    union: Annotated[bool, typer.Option("--union", help="pixels in any of the masks", rich_help_panel="Combine")] = False,
    intersect: Annotated[bool, typer.Option("--intersect", help="pixels in all of the masks", rich_help_panel="Combine")] = False,
    subtract: Annotated[bool, typer.Option("--subtract", help="pixels of the first mask in none of the others", rich_help_panel="Combine")] = False,
    fill_holes: Annotated[bool, typer.Option("--fill-holes", help="fill the holes inside the mask", rich_help_panel="Refine (in this order)")] = False,
    largest: Annotated[bool, typer.Option("--largest", help="keep only the largest region", rich_help_panel="Refine (in this order)")] = False,
    shrink: Annotated[int, typer.Option("--shrink", min=0, max=512, metavar="PX", help="erode by PX", rich_help_panel="Refine (in this order)")] = 0,
    grow: Annotated[int, typer.Option("--grow", min=0, max=512, metavar="PX", help="dilate by PX", rich_help_panel="Refine (in this order)")] = 0,
    invert: Annotated[bool, typer.Option("--invert", help="swap fill and keep", rich_help_panel="Refine (in this order)")] = False,
    feather: Annotated[float, typer.Option("--feather", min=0, max=512, metavar="PX", help="soften the edge by PX on both sides (grey levels)", rich_help_panel="Refine (in this order)")] = 0.0,
    resize_to: Annotated[Optional[Path], typer.Option("--resize-to", metavar="IMAGE", help="first resize every mask to this image's size (nearest neighbour)", rich_help_panel="Input")] = None,
    mask_mode: Annotated[str, typer.Option("--mask-mode", help=f"which pixels of the inputs mean fill: {', '.join(MASK_MODES)}", rich_help_panel="Input")] = "white",
    threshold: Annotated[int, typer.Option("--threshold", min=1, max=255, help="grey level that splits fill from keep", rich_help_panel="Input")] = 128,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Edit mask files: combine, then fill holes, keep the largest region, shrink, grow, invert, feather.

    The output is white = fill, whatever --mask-mode the inputs used. Examples:

      canvaslab mask ops person.png dog.png --union -o both.png

      canvaslab mask ops damage.png keep-eyes.png --subtract --grow 2 -o repair.png

      canvaslab mask ops sam.png --fill-holes --largest --grow 6 --feather 4 -o soft.png

      canvaslab mask ops small-mask.png --resize-to photo.jpg -o mask.png
    """
    with console.friendly_errors():
        from canvaslab.masks.ops import Refinement
        from canvaslab.tasks.batch import refuse_input_as_output
        from canvaslab.tasks.mask import mask_ops

        chosen = [name for name, on in (("--union", union), ("--intersect", intersect), ("--subtract", subtract)) if on]
        if len(chosen) > 1:
            raise InputError(f"combine masks one way: {' or '.join(chosen)}")
        refuse_input_as_output(output, *masks, resize_to, flag="-o")
        edits = Refinement(fill_holes=fill_holes, largest=largest, shrink=shrink, grow=grow, invert=invert, feather=feather)
        result = mask_ops(masks, combine=chosen[0][2:] if chosen else None, edits=edits, resize_to=resize_to,
                          mask_mode=mask_mode, threshold=threshold, max_pixels=max_pixels)
        path = result.save(output)
        if console.settings.json:
            console.emit_json({"output": str(path), "size": list(result.size), "coverage": round(result.coverage, 6)})
            return
        print(path)
        console.info(f"[dim]mask {result.size[0]}x{result.size[1]} covering {100 * result.coverage:.1f} %[/]")


app.command("make")(command(MaskRequest, [_make_inputs], _run_make))  # type: ignore[arg-type]
app.command("ops")(ops)
