"""Evaluation protocols: which (input, mask, reference) cases a run is measured on, fixed by a seed and
written down as a manifest, so two runs (or two tools) compare exactly the same cases.

A protocol folder holds everything a system needs and everything a score needs:

```
protocol/
├── protocol.json        # the manifest: name, seed, parameters, one entry per case
├── inputs/<id>.png      # what the system sees (inpaint: the hole blanked to black, as LaMa feeds it)
├── masks/<id>.png       # inpaint: white = fill
└── references/<id>.png  # the ground truth (inpaint: the image before blanking; edit: the target, if any)
```

Protocols (`PROTOCOLS`):

- `lama-{thin,medium,thick,box}-{256,512}`: LaMa's masks on square crops (see `lama_masks`); at most
  half of each crop is hole.
- `band-{left,right,top,bottom}`: outpainting measured as inpainting: a band of `band` (default 1/4)
  of the side, on a square crop of `size` px; the reference is the real image under the band.
- `masks`: your own masks, paired with the images by name like batch inpainting (`masks/a/b.png`
  for `a/b.jpg`, `b_mask.png`), or LaMa's released test sets (`x_crop000.png` beside
  `x_crop000_mask000.png`, in one folder): images keep their size unless `size` is given.
- `edit`: instruction edits from any edit dataset layout `canvaslab data` reads (input, instruction,
  target); optional captions (`input_caption`, `output_caption`) for InstructPix2Pix's directional
  CLIP similarity come from a JSON-lines file keyed like the dataset.

Case ids are the images' relative paths without suffix (plus ``_<k>`` with `per_image` > 1). Each case
draws from its own generator seeded by (seed, crc32(id)), so adding images leaves the other cases alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from canvaslab.core.image import atomic_write_bytes, load_image, load_mask
from canvaslab.errors import InputError
from canvaslab.eval import lama_masks

FORMAT = 1  # protocol.json layout version
SIDES = ("left", "right", "top", "bottom")
MANIFEST = "protocol.json"


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # paths relative to the protocol folder
    reference: str | None = None
    mask: str | None = None
    hole: float | None = None  # fraction of the image to fill (inpaint)
    instruction: str = ""  # edit
    input_caption: str = ""  # edit, for the directional CLIP similarity
    output_caption: str = ""


@dataclass
class Manifest:
    name: str
    task: str  # "inpaint" or "edit"
    seed: int
    params: dict[str, Any]
    cases: list[Case]
    root: Path = field(default=Path("."), compare=False)
    description: str = ""

    @property
    def path(self) -> Path:
        return self.root / MANIFEST

    def to_json(self) -> dict[str, Any]:
        cases = [{k: v for k, v in asdict(case).items() if v not in (None, "")} for case in self.cases]
        return {"canvaslab_protocol": FORMAT, "name": self.name, "task": self.task, "seed": self.seed,
                "params": self.params, "description": self.description, "cases": cases}

    @property
    def sha256(self) -> str:
        """Identity of the cases (not of the folder they sit in): runs on equal hashes compare."""
        text = json.dumps({**self.to_json(), "description": ""}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def file(self, relative: str | None) -> Path | None:
        return None if relative is None else self.root / relative


# --- reading and writing ---------------------------------------------------------------------------


def load_manifest(path: str | Path) -> Manifest:
    """A protocol from its folder or its protocol.json."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"no protocol at {path}: make one with `canvaslab eval protocol NAME --data DIR -o {path}`")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        cases = [Case(**case) for case in data["cases"]]
        manifest = Manifest(data["name"], data["task"], int(data["seed"]), dict(data.get("params", {})), cases,
                            file.parent, data.get("description", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{file} is not a canvaslab protocol ({type(exc).__name__}: {exc})") from None
    if data.get("canvaslab_protocol") != FORMAT:
        raise InputError(f"{file} has protocol format {data.get('canvaslab_protocol')!r}; this canvaslab reads {FORMAT}")
    if manifest.task not in ("inpaint", "edit"):
        raise InputError(f"{file}: task must be inpaint or edit, not {manifest.task!r}")
    seen: set[str] = set()
    for case in manifest.cases:
        # ids name the run's output and score files, paths are read: both stay inside their folders
        for value in (case.id, case.input, case.reference, case.mask):
            if value is not None and not _inside(value):
                raise InputError(f"{file}: case {case.id!r} names {value!r}; ids and paths must be relative, without '..'")
        if case.id in seen:
            raise InputError(f"{file}: case id {case.id!r} appears twice")
        seen.add(case.id)
    return manifest


def _inside(relative: str) -> bool:
    path = PurePosixPath(relative)
    return bool(relative) and "\\" not in relative and not path.is_absolute() and ".." not in path.parts


def write_manifest(manifest: Manifest) -> Path:
    text = json.dumps(manifest.to_json(), indent=1, ensure_ascii=False) + "\n"
    return atomic_write_bytes(manifest.path, text.encode("utf-8"))


def _png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    atomic_write_bytes(path, buffer.getvalue())


# --- what the protocols are --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    task: str
    description: str
    build: Callable[..., Iterable[tuple[str, np.ndarray, np.ndarray | None, dict[str, Any]]]]


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8"))])


def _source_images(data: Path) -> list[tuple[str, Path]]:
    from canvaslab.tasks.batch import find_images

    images = [(path.relative_to(data).with_suffix("").as_posix(), path) for path in find_images(data)]
    if not images:
        raise InputError(f"no images (png/jpg/jpeg/webp) under {data}")
    return images


def _ids(key: str, per_image: int) -> list[str]:
    return [key] if per_image == 1 else [f"{key}_{k}" for k in range(per_image)]


def _lama(config_name: str) -> Callable[..., Any]:
    config = lama_masks.CONFIGS[config_name]

    def build(data: Path, *, seed: int, per_image: int, **_: Any) -> Iterable[tuple[str, np.ndarray, np.ndarray, dict]]:
        for key, path in _source_images(data):
            rgb = load_image(path).rgb
            for case_id in _ids(key, per_image):
                image, mask = lama_masks.lama_case(_case_rng(seed, case_id), rgb, config)
                yield case_id, image, mask, {}

    return build


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    resized = lama_masks.resize_short_side(image, size)
    height, width = resized.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def band_mask(size: int, side: str, band: float) -> np.ndarray:
    depth = max(1, round(band * size))
    mask = np.zeros((size, size), bool)
    region = {"left": np.s_[:, :depth], "right": np.s_[:, size - depth :], "top": np.s_[:depth, :],
              "bottom": np.s_[size - depth :, :]}[side]
    mask[region] = True
    return mask


def _band(side: str) -> Callable[..., Any]:
    def build(data: Path, *, size: int | None, band: float, per_image: int, **_: Any) -> Iterable[tuple]:
        if per_image != 1:
            raise InputError("band protocols have one case per image (the band is fixed): drop --per-image")
        if not 0 < band < 1:
            raise InputError(f"--band must be a fraction between 0 and 1, got {band}")
        side_px = size or 512
        for key, path in _source_images(data):
            yield key, center_square(load_image(path).rgb, side_px), band_mask(side_px, side, band), {}

    return build


_LAMA_FILE = re.compile(r"^(?P<image>.+)_mask\d+$")


def _mask_pairs(data: Path, masks: Path | None) -> list[tuple[str, Path, Path]]:
    """(key, image, mask) from a mask folder, or LaMa's one-folder layout (`x.png` + `x_mask000.png`)."""
    from canvaslab.tasks.batch import find_images, pair_folder

    if masks is None or masks.resolve() == data.resolve():
        files = {path.relative_to(data).with_suffix("").as_posix(): path for path in find_images(data)}
        pairs = []
        for key, path in sorted(files.items()):
            match = _LAMA_FILE.match(key)
            if match and match["image"] in files:
                pairs.append((key, files[match["image"]], path))
        if not pairs:
            raise InputError(f"no masks in {data}: give --masks DIR, or a folder in LaMa's layout (x.png + x_mask000.png)")
        return pairs
    pairing = pair_folder(data, masks, Path("unused"), need_masks=True)
    if not pairing.items:
        raise InputError(f"no image under {data} has a mask under {masks} (paired by relative path or stem)")
    return [(item.key, item.image, item.mask) for item in pairing.items if item.mask is not None]


def _user_masks(data: Path, *, masks: Path | None, size: int | None, per_image: int, **_: Any) -> Iterable[tuple]:
    if per_image != 1:
        raise InputError("the masks protocol takes each given mask once: drop --per-image")
    for key, image_path, mask_path in _mask_pairs(data, masks):
        rgb = load_image(image_path).rgb
        mask = load_mask(mask_path, size=(rgb.shape[1], rgb.shape[0]))
        if size:
            rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
            mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
        if not mask.any():
            raise InputError(f"the mask {mask_path} is empty: nothing to measure")
        yield key, rgb, mask, {}


def _read_captions(path: Path | None) -> dict[str, dict[str, str]]:
    if path is None:
        return {}
    captions: dict[str, dict[str, str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read captions {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[str(row["key"])] = {"input_caption": str(row.get("input_caption", row.get("input", ""))),
                                         "output_caption": str(row.get("output_caption", row.get("output", "")))}
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{number}: expected {{\"key\", \"input_caption\", \"output_caption\"}}") from None
    return captions


def _edits(data: Path, *, captions: Path | None, per_image: int, **_: Any) -> Iterable[tuple]:
    from canvaslab.data.datasets import open_dataset

    if per_image != 1:
        raise InputError("the edit protocol takes each dataset item once: drop --per-image")
    dataset = open_dataset(data, "edit")
    if len(dataset) == 0:
        raise InputError(f"{data} holds no edit triplets (input, instruction, edited image)")
    texts = _read_captions(captions)
    for index in range(len(dataset)):
        example = dataset[index]
        if len(example.inputs) != 1:
            raise InputError(f"{example.key}: the edit protocol takes one input image per item (frames are not supported)")
        key = re.sub(r"\.[A-Za-z0-9]+$", "", example.key)
        extra = {"instruction": example.caption, **texts.get(example.key, texts.get(key, {}))}
        yield key, example.inputs[0], example.image, extra


PROTOCOLS: dict[str, ProtocolSpec] = {
    **{f"lama-{name}": ProtocolSpec(f"lama-{name}", "inpaint",
                                    (f"the rectangles of LaMa's random_thick_{name[-3:]} alone, square crops" if name.startswith("box")
                                     else f"LaMa's random_{name.replace('-', '_')} masks, square crops"),
                                    _lama(name))
       for name in lama_masks.CONFIGS},
    **{f"band-{side}": ProtocolSpec(f"band-{side}", "inpaint", f"outpainting: a band along the {side} side", _band(side))
       for side in SIDES},
    "masks": ProtocolSpec("masks", "inpaint", "your masks, paired with the images by name (or LaMa's released layout)", _user_masks),
    "edit": ProtocolSpec("edit", "edit", "instruction edits from an edit dataset (input, instruction, target)", _edits),
}


def build_protocol(
    name: str,
    data: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    per_image: int = 1,
    size: int | None = None,
    band: float = 0.25,
    masks: str | Path | None = None,
    captions: str | Path | None = None,
    on_case: Callable[[str], None] | None = None,
) -> Manifest:
    """Draw the protocol's cases from the images in `data` and write the protocol folder `out`."""
    if name not in PROTOCOLS:
        raise InputError(f"unknown protocol {name!r}: choose one of {', '.join(PROTOCOLS)}")
    if per_image < 1:
        raise InputError(f"--per-image must be at least 1, got {per_image}")
    if size is not None and name.startswith("lama-"):
        raise InputError(f"{name} has its size in its name; drop --size (or pick the -256/-512 protocol)")
    data, out = Path(data), Path(out)
    if not data.exists():
        raise InputError(f"--data {data} does not exist")
    if (out / MANIFEST).exists():
        raise InputError(f"{out} already holds a protocol; choose a new folder (a protocol never changes once written)")
    spec = PROTOCOLS[name]
    params: dict[str, Any] = {"per_image": per_image}
    if name.startswith("lama-"):
        config = lama_masks.CONFIGS[name.removeprefix("lama-")]
        params.update(size=config.size, max_hole=config.max_hole)
    elif name.startswith("band-"):
        params.update(size=size or 512, band=band)
    elif name == "masks" and size:
        params["size"] = size
    cases = []
    for case_id, image, other, extra in spec.build(data, seed=seed, per_image=per_image, size=size, band=band,
                                                   masks=Path(masks) if masks else None,
                                                   captions=Path(captions) if captions else None):
        cases.append(_write_case(out, spec.task, case_id, image, other, extra))
        if on_case is not None:
            on_case(case_id)
    manifest = Manifest(name, spec.task, seed, params, cases, out, spec.description)
    write_manifest(manifest)
    return manifest


def _write_case(out: Path, task: str, case_id: str, image: np.ndarray, other: np.ndarray | None, extra: dict) -> Case:
    file = f"{case_id}.png"
    if task == "edit":
        _png(out / "inputs" / file, image)
        if other is not None:
            _png(out / "references" / file, other)
        return Case(case_id, f"inputs/{file}", f"references/{file}" if other is not None else None, **extra)
    mask = other
    blanked = image.copy()
    blanked[mask] = 0  # what LaMa feeds a model: image * (1 - mask)
    _png(out / "references" / file, image)
    _png(out / "inputs" / file, blanked)
    _png(out / "masks" / file, mask.astype(np.uint8) * 255)
    return Case(case_id, f"inputs/{file}", f"references/{file}", f"masks/{file}", round(float(mask.mean()), 6), **extra)
