"""ControlNet preprocessors: what a control image becomes before a ControlNet sees it.

A ControlNet was trained on one kind of map (edges, line art, a blurred image, a masked image, ...);
a preprocessor turns any picture into that map. The weight-free ones are built here with OpenCV and
numpy: every map is HxWx3 uint8, white structure on black where the ControlNet expects lines. Their
settings take A1111's two generic names, `threshold_a` and `threshold_b`, with the meaning each
preprocessor gives them (the table in `PREPROCESSORS`), so A1111 clients' units map one to one.

One learned preprocessor is built on transformers, which runs beside our torch: `depth` (Depth Anything V2
Small, read from the local Hugging Face cache, never downloaded; missing is one sentence naming the
`hf download` to run). The other learned ones (normals, pose, anime line art, ...) need detector code that
controlnet-aux ships; it cannot be installed here (it requires torchvision, which does not import beside
canvaslab's torch), so they are refused in one line that says how to give the map instead.
`inpaint` is special: its map depends on the mask and on the ControlNet (control.py builds it); here it
is shown as the image with the masked pixels black, what a preview draws.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from canvaslab.errors import InputError, ModelNotAvailableError

DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"  # 25M parameters: fine on a CPU


@dataclass(frozen=True)
class Setting:
    """One of a preprocessor's settings, under A1111's generic name."""

    meaning: str
    default: float
    low: float
    high: float


@dataclass(frozen=True)
class Preprocessor:
    name: str
    description: str
    a: Setting | None = None  # threshold_a
    b: Setting | None = None  # threshold_b
    union_type: str | None = None  # the ControlNet Union control type its map is
    a1111: tuple[str, ...] = ()  # sd-webui-controlnet's module names for it
    model: str | None = None  # a learned one's hub id (local Hugging Face cache only)


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", "the control image as it is (a map made elsewhere)", a1111=("none",)),
    Preprocessor("canny", "Canny edges: white edge lines on black",
                 a=Setting("low threshold", 100, 1, 255), b=Setting("high threshold", 200, 1, 255),
                 union_type="canny", a1111=("canny",)),
    Preprocessor("scribble", "edges thickened into hand-drawn strokes (difference of Gaussians, dilated)",
                 a=Setting("stroke width in px", 3, 1, 32), union_type="scribble",
                 a1111=("scribble_xdog", "scribble_hed", "scribble_pidinet", "t2ia_sketch_pidi")),
    Preprocessor("lineart", "line art from edges: dark details against their surroundings, as white lines",
                 union_type="lineart", a1111=("lineart_standard (from white bg & black line)", "lineart_standard")),
    Preprocessor("invert", "the image inverted (for black lines on white, e.g. a sketch)",
                 union_type="lineart", a1111=("invert (from white bg & black line)", "invert")),
    Preprocessor("tile", "the image resampled down by a factor and back (tile / upscale ControlNets)",
                 a=Setting("down-sampling factor", 1, 1, 8), union_type="tile", a1111=("tile_resample",)),
    Preprocessor("blur", "the image blurred (tile ControlNets, loose colour and layout)",
                 a=Setting("Gaussian sigma in px", 9, 0.1, 64), union_type="tile", a1111=("blur_gaussian",)),
    Preprocessor("inpaint", "the image with the masked pixels marked for an inpaint ControlNet (SD 1.5: -1, "
                 "Union ProMax: black); needs a mask", union_type="inpaint",
                 a1111=("inpaint_only", "inpaint", "inpaint_global_harmonious")),
    Preprocessor("shuffle", "the image's content shuffled by a smooth random warp (seeded), keeping colours "
                 "and style, not layout", a1111=("shuffle",)),
    Preprocessor("depth", "relative depth by Depth Anything V2 (near = white), from the local Hugging Face cache",
                 union_type="depth", a1111=("depth_anything_v2", "depth_anything"), model=DEPTH_MODEL),
)}

# Learned detectors: named so a request for one gets the one-line reason instead of "unknown".
LEARNED: dict[str, str] = {
    "depth_midas": "depth", "depth_zoe": "depth", "depth_leres": "depth", "normal": "normal", "normal_bae": "normal",
    "openpose": "pose", "openpose_full": "pose", "dw_openpose_full": "pose", "lineart_anime": "line art",
    "lineart_realistic": "line art", "lineart_coarse": "line art", "softedge_hed": "soft edges", "hed": "soft edges",
    "softedge_pidinet": "soft edges", "mlsd": "straight lines", "seg_ofade20k": "segmentation",
    "segmentation": "segmentation", "inpaint_only+lama": "LaMa pre-fill",
}

# sd-webui-controlnet module name -> ours
A1111_MODULES: dict[str, str] = {alias: p.name for p in PREPROCESSORS.values() for alias in p.a1111}


def preprocessor(name: str) -> Preprocessor:
    """The preprocessor called `name` (ours or an A1111 module name); learned ones are refused in one line."""
    key = A1111_MODULES.get(name, name)
    if key in PREPROCESSORS:
        return PREPROCESSORS[key]
    if key in LEARNED:
        instead = " (or use preprocessor depth: Depth Anything V2)" if LEARNED[key] == "depth" else ""
        raise InputError(
            f"preprocessor {name!r} needs a learned {LEARNED[key]} detector, which canvaslab cannot run (controlnet-aux "
            "requires torchvision, which does not import beside canvaslab's torch): make the map with another tool "
            f"and pass it as the control image with preprocessor none{instead}"
        )
    raise InputError(f"unknown preprocessor {name!r}: choose one of {', '.join(PREPROCESSORS)}")


def check_settings(name: str, threshold_a: float | None, threshold_b: float | None) -> None:
    """Refuse a setting the preprocessor does not take, or one outside its range, in one line."""
    pre = preprocessor(name)
    for label, setting, value in (("threshold_a", pre.a, threshold_a), ("threshold_b", pre.b, threshold_b)):
        if value is None:
            continue
        if setting is None:
            raise InputError(f"preprocessor {pre.name} takes no {label}: leave it out")
        if not setting.low <= value <= setting.high:
            raise InputError(f"{label} of preprocessor {pre.name} is its {setting.meaning}: {value:g} is outside "
                             f"{setting.low:g}..{setting.high:g}")


def _value(setting: Setting | None, given: float | None) -> float:
    assert setting is not None
    return setting.default if given is None else float(given)


def run(name: str, image: np.ndarray, *, mask: np.ndarray | None = None, threshold_a: float | None = None,
        threshold_b: float | None = None, seed: int = 0, cache_dir: str | None = None) -> np.ndarray:
    """The control map of `image` (HxWx3 uint8) made by preprocessor `name`, HxWx3 uint8 of the same size.

    `mask` (HxW bool, True = fill) is what `inpaint` marks; `seed` drives `shuffle`; `cache_dir` is the
    Hugging Face cache a learned one's model is read from [default: HF_HOME's].
    """
    pre = preprocessor(name)
    check_settings(pre.name, threshold_a, threshold_b)
    if pre.name == "none":
        return image
    if pre.name == "invert":
        return 255 - image
    if pre.name == "canny":
        return _canny(image, _value(pre.a, threshold_a), _value(pre.b, threshold_b))
    if pre.name == "scribble":
        return _scribble(image, int(round(_value(pre.a, threshold_a))))
    if pre.name == "lineart":
        return _lineart(image)
    if pre.name == "tile":
        return _resampled(image, _value(pre.a, threshold_a))
    if pre.name == "blur":
        return _blurred(image, _value(pre.a, threshold_a))
    if pre.name == "shuffle":
        return _shuffled(image, seed)
    if pre.name == "depth":
        return _depth(image, cache_dir)
    if mask is None:
        raise InputError("preprocessor inpaint marks the masked pixels: it needs a mask")
    return np.where(mask[..., None], np.uint8(0), image)


def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    import cv2

    return _as_rgb(cv2.Canny(_gray(image), low, high))


def _scribble(image: np.ndarray, width: int) -> np.ndarray:
    """Difference of Gaussians (small minus large blur) thresholded, so only the clearest strokes stay, then
    dilated to `width` px: thick, simplified lines like a quick drawing."""
    import cv2

    gray = _gray(image).astype(np.float32)
    dog = cv2.GaussianBlur(gray, (0, 0), 0.5) - cv2.GaussianBlur(gray, (0, 0), 5.0)
    # darker than their surroundings, and among the clearest tenth: a drawing keeps only the main lines
    strokes = (dog < -max(4.0, float(np.percentile(-dog, 90)))).astype(np.uint8) * 255
    if width > 1:
        strokes = cv2.dilate(strokes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
    return _as_rgb(strokes)


def _lineart(image: np.ndarray) -> np.ndarray:
    """How much darker each pixel is than its blurred neighbourhood, in the darkest channel, scaled by a
    robust level (the median of clear lines) so faint and strong drawings come out alike."""
    import cv2

    pixels = image.astype(np.float32)
    darker = (cv2.GaussianBlur(pixels, (0, 0), 6.0) - pixels).min(axis=2).clip(0, None)
    lines = darker[darker > 8]
    level = max(16.0, float(np.median(lines))) if lines.size else 16.0
    return _as_rgb((darker / level * 127.0).clip(0, 255).astype(np.uint8))


def _resampled(image: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    if factor <= 1:
        return image
    height, width = image.shape[:2]
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    picture = Image.fromarray(image).resize(small, Image.Resampling.BOX)
    return np.asarray(picture.resize((width, height), Image.Resampling.BICUBIC))


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (0, 0), sigma)


def _shuffled(image: np.ndarray, seed: int) -> np.ndarray:
    """Each pixel taken from a place a smooth random field points to (noise on a coarse grid, upsampled):
    colours and textures stay, the arrangement does not."""
    import cv2

    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    grid = (max(2, width // 64 + 2), max(2, height // 64 + 2))
    fields = []
    for extent, size in ((width, grid), (height, grid)):
        coarse = rng.uniform(0, extent - 1, size=(size[1], size[0])).astype(np.float32)
        fields.append(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, extent - 1))
    return cv2.remap(image, fields[0], fields[1], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# -- learned: depth ----------------------------------------------------------------------------------

_depth_lock = threading.Lock()
_depth_models: dict[tuple, Any] = {}  # (folder) -> (model, processor): the last one only


def _depth_model(cache_dir: str | None) -> tuple[Any, Any]:
    """Depth Anything V2 Small and its image processor from the local Hugging Face cache (never downloaded)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(DEPTH_MODEL, cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelNotAvailableError(
            f"preprocessor depth needs {DEPTH_MODEL} in the Hugging Face cache: on a connected machine run "
            f"`hf download {DEPTH_MODEL}` (then copy HF_HOME here), or give a depth map as the control image"
        ) from None
    with _depth_lock:
        if folder not in _depth_models:
            from transformers import AutoModelForDepthEstimation, DPTImageProcessorPil

            try:
                model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True).eval()
                # the PIL processor: the default one needs torchvision
                processor = DPTImageProcessorPil.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelNotAvailableError(f"{DEPTH_MODEL} in the cache could not be loaded ({' '.join(str(exc).split())[:160]}); "
                                             f"run `hf download {DEPTH_MODEL}` again") from None
            _depth_models.clear()
            _depth_models[folder] = (model, processor)
        return _depth_models[folder]


def _depth(image: np.ndarray, cache_dir: str | None) -> np.ndarray:
    """Relative (inverse) depth, near = white, stretched to 0..255 as sd-webui-controlnet's depth maps are."""
    import torch
    from PIL import Image

    model, processor = _depth_model(cache_dir)
    inputs = processor(images=Image.fromarray(image), return_tensors="pt")
    with torch.no_grad():
        predicted = model(**inputs).predicted_depth[:, None]  # 1x1xhxw at the model's patch grid
    depth = torch.nn.functional.interpolate(predicted, size=image.shape[:2], mode="bicubic", align_corners=False)[0, 0]
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
    return _as_rgb((scaled.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
