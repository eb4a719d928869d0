"""The mask task: a mask from points, words or a rule, refined, remembered (`canvaslab mask`, the server's
/api/v1/mask and Select tool, replay).

1. inputs: the image as displayed (EXIF orientation applied, so X,Y are what a viewer shows), or for
   --auto watermark the images of a folder;
2. the mask: Segment Anything for points/boxes (masks.sam; the image embedding is cached, so a second
   prompt on the same picture skips the encoder), CLIPSeg's scores or a detector's boxes fed to SAM for
   words, or a rule (masks.RULES);
3. refine (masks.ops: holes, largest, shrink, grow, invert, feather);
4. the recipe: request, inputs (path + sha256), size, model; a saved mask carries it, and so does an
   inpaint that used that mask file, so `canvaslab replay` can make the mask again.

Masks are written as 8-bit greyscale PNG, white = fill (lossless: a JPEG mask would move its edge).
A folder of images (one text or rule for all) becomes a folder of masks by relative path and stem,
resumable as every batch is: existing masks are skipped, each is written atomically, failures are
listed at the end.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from canvaslab import __version__
from canvaslab.core.image import DEFAULT_MAX_PIXELS, LoadedImage, atomic_write_bytes, remove_stale_temporaries
from canvaslab.core.metadata import embed_png_info, read_metadata
from canvaslab.core.notices import collect_notices, notice
from canvaslab.errors import CanvaslabError, InputError, ModelNotAvailableError
from canvaslab.masks import FOLDER_RULES, rule, rule_options
from canvaslab.masks.ops import Refinement, refine
from canvaslab.tasks.batch import BatchItem, BatchReport, find_images, pair_folder, shard
from canvaslab.tasks.common import ImageInput, describe_input, open_image
from canvaslab.tasks.requests import MaskRequest, display_name, request_from

TASK = "mask"
MASK_SUFFIXES = (".png",)


@dataclass
class MaskResult:
    """The mask (HxW bool, True = fill; float32 levels in [0, 1] when feathered), what the model said
    about it, and the recipe that makes it again."""

    mask: np.ndarray
    recipe: dict[str, Any]
    scores: list[float] = field(default_factory=list)  # SAM: candidates best first; CLIPSeg: the top score; boxes
    boxes: list[dict[str, Any]] = field(default_factory=list)  # a detector's boxes: xyxy, score, phrase
    cached: bool = False  # SAM reused the image's embedding
    candidates: list[np.ndarray] = field(default_factory=list)  # SAM's proposals best first, before refining
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape[1], self.mask.shape[0]

    @property
    def coverage(self) -> float:
        return float(np.asarray(self.mask, np.float32).mean())

    def grey(self) -> np.ndarray:
        """HxW uint8: 255 = fill, 0 = keep, grey levels when feathered."""
        if self.mask.dtype == bool:
            return self.mask.astype(np.uint8) * 255
        return np.round(np.clip(self.mask, 0, 1) * 255).astype(np.uint8)

    def encode(self, *, recipe: bool = True) -> bytes:
        return encode_mask(self.grey(), self.recipe if recipe else None)

    def save(self, path: str | os.PathLike[str], *, recipe: bool = True) -> Path:
        target = Path(path)
        if target.suffix.lower() not in MASK_SUFFIXES:
            raise InputError(f"masks are written as PNG (lossless: a JPEG would move the mask's edge): use {target.with_suffix('.png').name}")
        return atomic_write_bytes(target, self.encode(recipe=recipe))


def encode_mask(grey: np.ndarray, recipe: dict[str, Any] | None) -> bytes:
    """An 8-bit greyscale PNG with the recipe in a text chunk (`canvaslab info` reads it)."""
    buffer = io.BytesIO()
    options = {"pnginfo": embed_png_info(None, recipe)} if recipe is not None else {}
    Image.fromarray(np.ascontiguousarray(grey), "L").save(buffer, "PNG", **options)
    return buffer.getvalue()


def make_mask(
    image: ImageInput | None = None,
    request: MaskRequest | None = None,
    *,
    images: str | os.PathLike[str] | Sequence[ImageInput] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache: Any = None,
    **params: Any,
) -> MaskResult:
    """A mask of `image` (or, for --auto watermark, of what all `images` share).

    Parameters are the fields of `MaskRequest` (pass `request=` or keywords): `points`, `boxes`, `text`,
    `auto`, refine settings... `images` is a folder or a list (watermark only). `cache` is the SAM
    embedding cache (default: the process's).

        mask = canvaslab.make_mask("photo.jpg", points=[(120, 80)]).mask
    """
    request = request_from(MaskRequest, request, params)
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs
        if request.auto is not None and request.auto.value in FOLDER_RULES:
            if image is not None:
                raise InputError(f"--auto {request.auto.value} compares many images: give a folder (--images), not one image")
            sources, loaded = _open_many(_folder_inputs(images), max_pixels, folder=isinstance(images, (str, os.PathLike)))
            inputs: dict[str, Any] = {"images": _describe_many(images, sources)}
        else:
            if image is None:
                raise InputError("mask needs an input image")
            if images is not None:
                raise InputError(f"{_way(request)} masks one image at a time: pass IMAGE (a folder goes to --images with --out)")
            loaded = [open_image(image, max_pixels)]
            inputs = {"image": describe_input(image, loaded[0])}
        # 2. the mask
        made = _make(loaded, request, cache)
        # 3. refine
        made.mask = refine(made.mask, Refinement(**request.refinement()))
        if not np.asarray(made.mask).any():
            notice("the mask is empty: nothing was found")
        # 4. recipe
        made.recipe = mask_recipe(request, inputs, made.size)
    made.notices, made.seconds = list(notes), time.perf_counter() - started
    return made


def mask_recipe(request: MaskRequest, inputs: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    body = request.model_dump(mode="json")
    recipe: dict[str, Any] = {"canvaslab": __version__, "task": TASK, "request": body, "inputs": inputs, "size": list(size)}
    names = {key: display_name(body[key]) for key in ("model", "text_model") if body.get(key)}
    if names:
        recipe["models"] = names
    return recipe


def _way(request: MaskRequest) -> str:
    return f"--auto {request.auto.value}" if request.auto is not None else "--text" if request.text else "--point/--box"


def _make(loaded: list[LoadedImage], request: MaskRequest, cache: Any) -> MaskResult:
    if request.auto is not None:
        options = rule_options(request.auto.value).model_validate(request.options)
        target = [image.rgb for image in loaded] if request.auto.value in FOLDER_RULES else loaded[0].rgb
        return MaskResult(rule(request.auto.value)(target, options), {})
    rgb = loaded[0].rgb
    if request.text:
        return _from_words(rgb, request, cache)
    return _from_prompt(rgb, request, cache)


def _device(request: MaskRequest) -> str:
    from canvaslab.masks.models import resolve_device

    return resolve_device(request.device.value)


def _from_prompt(rgb: np.ndarray, request: MaskRequest, cache: Any) -> MaskResult:
    from canvaslab.masks.models import DEFAULT_SAM, resolve
    from canvaslab.masks.sam import EMBEDDINGS, Prompt, segmenter

    prompt = Prompt(
        points=tuple(request.points) + tuple(request.negative_points),
        labels=(1,) * len(request.points) + (0,) * len(request.negative_points),
        boxes=tuple(request.boxes),
    )
    prompt.check((rgb.shape[1], rgb.shape[0]))  # before loading anything: a point off the image costs nothing
    seg = segmenter(resolve(request.model or DEFAULT_SAM, want="sam"), _device(request))
    embedding, cached = seg.embed(rgb, cache=cache or EMBEDDINGS)
    proposals = seg.predict(embedding, prompt, multimask=request.multimask)
    return MaskResult(proposals.best, {}, scores=proposals.scores, cached=cached, candidates=proposals.masks)


def _from_words(rgb: np.ndarray, request: MaskRequest, cache: Any) -> MaskResult:
    from canvaslab.masks.clipseg import DEFAULT_THRESHOLD, text_segmenter
    from canvaslab.masks.detect import DEFAULT_BOX_THRESHOLD, detector
    from canvaslab.masks.models import DEFAULT_SAM, DEFAULT_TEXT, resolve
    from canvaslab.masks.sam import EMBEDDINGS, Prompt, segmenter

    model = resolve(request.text_model or DEFAULT_TEXT, want="text")
    device = _device(request)
    if model.kind == "clipseg":
        if request.multimask or request.model is not None:
            raise InputError("CLIPSeg scores pixels itself: --multimask and --model (SAM) go with a detector --text-model")
        threshold = DEFAULT_THRESHOLD if request.threshold is None else request.threshold
        mask, top = text_segmenter(model, device).mask(rgb, request.text, threshold)
        return MaskResult(mask, {}, scores=[top])
    threshold = DEFAULT_BOX_THRESHOLD if request.threshold is None else request.threshold
    boxes = detector(model, device).boxes(rgb, request.text, threshold)
    found = [{"box": [round(v, 1) for v in box.xyxy], "score": round(box.score, 4), "phrase": box.phrase} for box in boxes]
    if not boxes:
        return MaskResult(np.zeros(rgb.shape[:2], bool), {}, boxes=found)
    seg = segmenter(resolve(request.model or DEFAULT_SAM, want="sam"), device)
    embedding, cached = seg.embed(rgb, cache=cache or EMBEDDINGS)
    proposals = seg.predict(embedding, Prompt(boxes=tuple(box.xyxy for box in boxes)), multimask=request.multimask)
    return MaskResult(proposals.best, {}, scores=[box.score for box in boxes], boxes=found, cached=cached,
                      candidates=proposals.masks)


# -- folders ---------------------------------------------------------------------------------------


def _folder_inputs(images: Any) -> list[ImageInput]:
    if images is None:
        raise InputError("--auto watermark finds what many images share: pass their folder with --images")
    if isinstance(images, (str, os.PathLike)):
        found = find_images(Path(images))
        if not found:
            raise InputError(f"folder {images} holds no images (.png, .jpg, .jpeg, .webp)")
        return list(found)
    return list(images)


def _open_many(sources: list[ImageInput], max_pixels: int, *, folder: bool) -> tuple[list[ImageInput], list[LoadedImage]]:
    """Every image of a watermark's set. In a folder, a file that cannot be read is left out with a notice
    (the rest still say where the watermark is; replay leaves the same file out); a list given in Python
    must be all readable."""
    kept, loaded, skipped = [], [], []
    for source in sources:
        try:
            loaded.append(open_image(source, max_pixels))
        except InputError as exc:
            if not folder:
                raise
            skipped.append((source, str(exc)))
            continue
        kept.append(source)
    if skipped:
        names = ", ".join(Path(str(source)).name for source, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        notice(f"left out {len(skipped)} file{'s' if len(skipped) != 1 else ''} that cannot be read as images: {names} "
               f"({skipped[0][1]})")
    return kept, loaded


def _describe_many(images: Any, sources: list[ImageInput]) -> dict[str, Any]:
    """A folder by its path and count (replay reads it again), a list by each entry."""
    if isinstance(images, (str, os.PathLike)):
        return {"path": str(Path(images).resolve()), "count": len(sources)}
    return {"path": None, "count": len(sources), "files": [describe_input(source) for source in sources]}


def mask_folder(
    images_dir: Path,
    out_dir: Path,
    request: MaskRequest,
    *,
    shard_of: tuple[int, int] = (0, 1),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: Callable[[BatchItem, str], None] | None = None,
) -> BatchReport:
    """One mask per image under `images_dir`, written to `out_dir/<relative key>.png`; resumable.

    Existing masks are skipped (each is written atomically, so an existing file is a finished one), the
    temporary files a killed run left are removed first, and a failing image is reported, not fatal.
    """
    if request.auto is not None and request.auto.value in FOLDER_RULES:
        raise InputError(f"--auto {request.auto.value} makes one mask for the whole folder: use -o MASK.png, not --out")
    items = shard(pair_folder(images_dir, None, out_dir, suffix=".png", need_masks=False).items, *shard_of)
    for folder in sorted({item.output.parent for item in items}):
        removed = remove_stale_temporaries(folder) if folder.is_dir() else []
        if removed:
            notice(f"removed {len(removed)} unfinished temporary file(s) left by an interrupted run in {folder}")
    report = BatchReport()
    notify = on_progress or (lambda _item, _status: None)
    for item in items:
        if item.output.exists():
            report.skipped.append(item)
            notify(item, "skipped")
            continue
        try:
            make_mask(item.image, request, max_pixels=max_pixels).save(item.output)
        except ModelNotAvailableError:
            raise  # the same for every image: one error, not one failure per image
        except CanvaslabError as exc:
            report.failed.append((item, str(exc)))
            notify(item, "failed")
            continue
        except Exception as exc:  # noqa: BLE001 - one broken file must not end the batch
            report.failed.append((item, f"{type(exc).__name__}: {exc}"))
            notify(item, "failed")
            continue
        report.done.append(item)
        notify(item, "done")
    return report


# -- masks that remember how they were made ----------------------------------------------------------


def recipe_of_mask(source: Any) -> dict[str, Any] | None:
    """The mask recipe a mask file (path or bytes) carries, if canvaslab made it; None otherwise."""
    if not isinstance(source, (str, os.PathLike, bytes)):
        return None
    try:
        recipe = read_metadata(source).recipe
    except (InputError, OSError):
        return None
    return recipe if isinstance(recipe, dict) and recipe.get("task") == TASK else None


def remake(recipe: dict[str, Any], image: ImageInput | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> MaskResult:
    """Make the mask `recipe` describes again, of `image` (or of the recorded input when None)."""
    request = MaskRequest.model_validate(recipe["request"])
    inputs = recipe.get("inputs") or {}
    if "images" in inputs:
        return make_mask(request=request, images=(inputs["images"] or {}).get("path"), max_pixels=max_pixels)
    if image is None:
        path = (inputs.get("image") or {}).get("path")
        if not path or not Path(path).is_file():
            raise InputError("the image this mask was made from is not at its recorded path: pass --image FILE")
        image = path
    return make_mask(image, request, max_pixels=max_pixels)


# -- mask ops: algebra on mask files ------------------------------------------------------------------

OPS_TASK = "mask-ops"
COMBINE = ("union", "intersect", "subtract")


def mask_ops(masks: Sequence[str | os.PathLike[str]], *, combine: str | None = None, edits: Refinement | None = None,
             resize_to: str | os.PathLike[str] | None = None, mask_mode: str = "white", threshold: int = 128,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> MaskResult:
    """Combine mask files (`combine`: union, intersect, subtract; None for one mask), then refine them
    (`edits`); every mask is first resized to `resize_to`'s size when given. The recipe records the
    inputs (path + sha256) and every setting, so `replay` runs it again."""
    from canvaslab.core.image import load_image, load_mask
    from canvaslab.core.mask import intersect, subtract, union

    edits = edits or Refinement()
    if combine is not None and combine not in COMBINE:
        raise InputError(f"unknown combination {combine!r}: use one of {', '.join(COMBINE)}")
    if len(masks) > 1 and combine is None:
        raise InputError(f"{len(masks)} masks: say how to combine them (--union, --intersect or --subtract)")
    if combine is not None and len(masks) < 2:
        raise InputError(f"--{combine} needs at least two masks")
    size = load_image(resize_to, max_pixels=max_pixels).size if resize_to is not None else None
    loaded = [load_mask(path, mode=mask_mode, size=size, threshold=threshold, max_pixels=max_pixels) for path in masks]
    mask = {"union": union, "intersect": intersect, "subtract": subtract}[combine](*loaded) if combine else loaded[0]
    recipe = {"canvaslab": __version__, "task": OPS_TASK, "inputs": [describe_input(path) for path in masks],
              "ops": {"combine": combine, **vars(edits)}, "mask_mode": mask_mode, "threshold": threshold,
              "resize_to": describe_input(resize_to) if resize_to is not None else None,
              "size": [mask.shape[1], mask.shape[0]]}
    return MaskResult(refine(mask, edits), recipe)


def replay_ops(recipe: dict[str, Any], find: Callable[[dict[str, Any], str], Path],
               *, max_pixels: int = DEFAULT_MAX_PIXELS) -> MaskResult:
    """Run a `mask ops` recipe again; `find(entry, what)` locates each recorded file (or raises)."""
    entries = [e if isinstance(e, dict) else {"path": e} for e in recipe.get("inputs") or []]  # early recipes: paths
    ops = dict(recipe.get("ops") or {})
    combine = ops.pop("combine", None)
    resize_to = recipe.get("resize_to")
    return mask_ops([find(entry, "mask") for entry in entries], combine=combine, edits=Refinement(**ops),
                    resize_to=find(resize_to, "--resize-to image") if resize_to else None,
                    mask_mode=recipe.get("mask_mode", "white"), threshold=recipe.get("threshold", 128),
                    max_pixels=max_pixels)
