"""The edit task: change an image from an instruction ("make it winter"), InstructPix2Pix style.

Multi-frame editing models (a UNet of 4 + 4N input channels) take N frames instead of one image:
`frames=DIR` (CLI: --frames DIR) names a folder of N images, read in natural name order
(00.jpg, 01.jpg, ..., 9.jpg, 10.jpg), and the result is the frame they lead to, at their size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from canvaslab.core.geometry import Alignment, align, restore
from canvaslab.core.image import DEFAULT_MAX_PIXELS, LoadedImage
from canvaslab.core.notices import collect_notices
from canvaslab.data.records import IMAGE_SUFFIXES, is_image_file, natural_key
from canvaslab.engines.diffusion.create import EDIT_MODEL, edit_frames, edit_image, model_frame_count
from canvaslab.engines.diffusion.engine import source_config
from canvaslab.errors import EngineError, InputError
from canvaslab.tasks.common import ImageInput, describe_input, engine_for, make_recipe, open_image, resolve_seed
from canvaslab.tasks.requests import EditRequest, request_from
from canvaslab.tasks.result import Result


def edit(
    image: ImageInput | None = None,
    request: EditRequest | None = None,
    *,
    mask: ImageInput | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    **params: Any,
) -> Result:
    """Change `image` as `instruction` says, with an image-editing model (default ``instruct-pix2pix``).

    Parameters are the fields of `EditRequest` (``instruction`` is recorded as the prompt; pass
    `request=` or keywords, not both). The model works at a multiple of 8 (``align``: resize by
    default, or pad); the result has the input's exact size and keeps its alpha channel.
    `Result.mask` is all True: every pixel may have changed.

    With ``frames=DIR`` instead of `image`, a multi-frame model (4 + 4N channel UNet) edits from the
    N images of DIR (natural name order, one size, exactly N of them); the result has their size.

    With `mask` (white = change), only the masked pixels change: the model's masked-edit pipeline runs
    (FLUX.1 Kontext, Qwen-Image-Edit, FLUX.2 Klein inpaint), through the inpaint task, so the result is
    an inpaint with the editing model and its recipe says so (`canvaslab inpaint` with the same model
    takes the mask options: --mask-mode, --grow, --area masked, ...). InstructPix2Pix models have no
    masked pipeline and are refused.
    """
    request = request_from(EditRequest, request, params)
    if mask is not None:
        if request.frames is not None:
            raise InputError("--mask edits one image; it does not go with --frames")
        return _masked_edit(image, mask, request, max_pixels)
    if request.frames is not None:
        if image is not None:
            raise InputError("give either an image or frames=DIR (--frames), not both")
        return _edit_frames(request, max_pixels)
    if image is None:
        raise InputError("edit needs an image (or frames=DIR, --frames DIR, for a multi-frame model)")
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs
        source = open_image(image, max_pixels)
        seed = resolve_seed(request.seed)
        engine, options = engine_for(request)
        config = source_config(options)
        _refuse_multi_frame_model(request, config)
        # 2. edit at an aligned size, then back to the exact input size
        everything = np.ones(source.rgb.shape[:2], dtype=bool)
        multiple = request.multiple or engine.size_multiple(request.generation(), options)
        aligned, _, info = align(source.rgb, everything, multiple, request.align)
        out = edit_image(
            aligned, request.generation(), image_guidance_scale=request.image_guidance_scale, seed=seed, config=config,
            options=options,
        )
        final = _restored(out, aligned.shape, info)
        # 3. recipe
        recipe, text = make_recipe("edit", request, seed, source.size, {"image": describe_input(image, source)})
    return Result(
        image=final, mask=everything, seed=seed, recipe=recipe, parameters=text, alpha=source.alpha,
        notices=list(notes), seconds=time.perf_counter() - started,
    )


def _edit_frames(request: EditRequest, max_pixels: int) -> Result:
    """The frame that the N frames of `request.frames` lead to, edited as the instruction says."""
    started = time.perf_counter()
    with collect_notices() as notes:
        # 1. inputs: the folder's images, checked against the model before any is decoded
        folder = Path(request.frames).expanduser()  # type: ignore[arg-type]
        paths = frame_files(folder)
        seed = resolve_seed(request.seed)
        engine, options = engine_for(request)
        config = source_config(options)
        _check_frame_count(request, config, folder, len(paths))
        frames = _load_frames(paths, max_pixels)
        # 2. edit at an aligned size (the same for every frame), then back to the frames' exact size
        everything = np.ones(frames[0].rgb.shape[:2], dtype=bool)
        multiple = request.multiple or engine.size_multiple(request.generation(), options)
        aligned = [align(frame.rgb, everything, multiple, request.align) for frame in frames]
        out = edit_frames(
            [rgb for rgb, _, _ in aligned], request.generation(), image_guidance_scale=request.image_guidance_scale,
            seed=seed, config=config,
        )
        final = _restored(out, aligned[0][0].shape, aligned[0][2])
        # 3. recipe: the folder as an absolute path (replay reopens it from anywhere) and each file's digest
        recorded = request.model_copy(update={"frames": str(folder.resolve())})
        inputs = {"frames": {"path": str(folder.resolve()), "files": [describe_input(path) for path in paths]}}
        recipe, text = make_recipe("edit", recorded, seed, frames[0].size, inputs)
    return Result(
        image=final, mask=everything, seed=seed, recipe=recipe, parameters=text, notices=list(notes),
        seconds=time.perf_counter() - started,
    )


def frame_files(folder: Path) -> list[Path]:
    """The image files directly in `folder` (hidden ones and sub-folders ignored), in natural name order."""
    if not folder.is_dir():
        raise InputError(f"frames folder {folder} does not exist or is not a folder")
    paths = [
        p for p in folder.iterdir()
        if p.is_file() and is_image_file(p)
    ]
    if not paths:
        raise InputError(f"frames folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(paths, key=lambda p: natural_key(p.name))


# EditRequest fields a masked edit hands on to the inpaint task unchanged (the instruction is the prompt).
_MASKED_EDIT_FIELDS = ("engine", "seed", "prompt", "negative_prompt", "options", "model", "steps", "guidance_scale",
                       "scheduler", "lora", "dtype", "device", "offload", "attention_slicing", "vae_tiling",
                       "cache_dir", "local_files_only")


def _masked_edit(image: ImageInput | None, mask: ImageInput, request: EditRequest, max_pixels: int) -> Result:
    from canvaslab.engines.diffusion.families import family
    from canvaslab.engines.diffusion.engine import model_info
    from canvaslab.tasks.inpaint import inpaint
    from canvaslab.tasks.requests import InpaintRequest

    if image is None:
        raise InputError("edit --mask needs an image")
    engine, options = engine_for(request)
    info = model_info(request.generation(), source_config(options), EDIT_MODEL)
    fam = family(info.family)
    if (info.kind, "inpaint") not in fam.pipelines:
        raise InputError(
            f"model {request.model or EDIT_MODEL} ({fam.label}) has no masked-edit pipeline: edit the whole image "
            "(leave out --mask), or use an editing model that has one (flux-kontext, qwen-image-edit, flux2-klein)"
        )
    if request.image_guidance_scale != EditRequest.model_fields["image_guidance_scale"].default:
        raise InputError("--image-guidance-scale is InstructPix2Pix's; a masked edit does not read it: leave it out")
    values = {name: getattr(request, name) for name in _MASKED_EDIT_FIELDS if name in request.model_fields_set}
    values["prompt"] = request.prompt
    return inpaint(image, mask, request=InpaintRequest.model_validate({**values, "engine": "diffusion"}),
                   max_pixels=max_pixels)


def _check_frame_count(request: EditRequest, config: str | None, folder: Path, count: int) -> None:
    frames, channels = model_frame_count(request.generation(), config=config)
    if frames >= 1 and count != frames:  # a 4- or 9-channel model is refused when loading, in its own words
        model = request.model or EDIT_MODEL
        raise InputError(
            f"model {model} takes {frames} input frame{'s' if frames != 1 else ''} ({channels}-channel UNet); "
            f"{folder} has {count} image{'s' if count != 1 else ''}"
        )


def _refuse_multi_frame_model(request: EditRequest, config: str | None) -> None:
    frames, channels = model_frame_count(request.generation(), config=config)
    if frames > 1:
        raise InputError(
            f"model {request.model or EDIT_MODEL} edits from {frames} input frames ({channels}-channel UNet), "
            f"not one image: pass a folder of {frames} frames with --frames DIR (frames=DIR)"
        )


def _load_frames(paths: list[Path], max_pixels: int) -> list[LoadedImage]:
    frames = [open_image(path, max_pixels) for path in paths]
    for path, frame in zip(paths, frames):
        if frame.size != frames[0].size:
            first = f"{frames[0].size[0]}x{frames[0].size[1]}"
            raise InputError(
                f"all frames must have one size: {paths[0].name} is {first} but {path.name} is "
                f"{frame.size[0]}x{frame.size[1]}"
            )
    return frames


def _restored(out: np.ndarray, aligned_shape: tuple[int, ...], info: Alignment) -> np.ndarray:
    if out.shape != aligned_shape:
        raise EngineError(f"the pipeline returned {out.shape}, expected {aligned_shape}")
    return restore(out, info)
