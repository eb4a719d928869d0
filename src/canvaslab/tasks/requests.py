"""One request model per task: every parameter, its default, bounds and help, in one place.

The CLI builds its flags from these models (`canvaslab.cli.options`), the Python API validates its
keyword arguments with them, and the server will take them as JSON bodies, so the three cannot
drift apart. Unknown keys are rejected, never dropped. Engine-specific knobs nest under `options`.

Field extras understood by the CLI builder: ``panel`` (help section), ``flag`` (the option name when
it is not ``--field-name``), ``cli_default`` (the flag's default when it differs from the field's:
None for "not given", so the model can tell an omitted --engine from --engine patchmatch).

Engines and fields: a request's model implies its engine (diffusion, or unified for a Show-o
bundle) unless `engine` is given, and a generative field set for an engine that does not read it
(a prompt for PatchMatch, --scheduler for Show-o) is refused, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import (
    AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator,
)

from canvaslab import __version__
from canvaslab.core.canvas import InitialFill, parse_directions, parse_sequence
from canvaslab.core.geometry import AlignMode
from canvaslab.core.metadata import LORA_HASH_LENGTH, MODEL_HASH_LENGTH, lora_sha256, model_sha256
from canvaslab.engines import DEFAULT_ENGINE, Generation, engine_names, get_engine
from canvaslab.engines.base import ControlUnit, ImagePrompt
from canvaslab.engines.diffusion.schedulers import ALL_SCHEDULERS
from canvaslab.errors import InputError


class MaskMode(str, Enum):
    """Which pixels of the mask file mean "fill here"."""

    white = "white"
    black = "black"
    alpha = "alpha"


class ColorMatch(str, Enum):
    none = "none"
    mean_std = "mean-std"
    histogram = "histogram"


class DType(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Offload(str, Enum):
    model = "model"
    sequential = "sequential"


class MaskedContent(str, Enum):
    """What the masked area starts from before denoising (A1111's "masked content"; needs strength < 1)."""

    original = "original"
    fill = "fill"
    latent_noise = "latent-noise"
    latent_nothing = "latent-nothing"
    lama = "lama"  # the lama engine's fill, refined by the diffusion run (Krita's LaMa pre-fill)
    migan = "migan"


class Tiling(str, Enum):
    """Along which axes the output wraps around, so that copies of it placed side by side show no seam."""

    none = "none"
    x = "x"  # the right edge continues into the left one (a horizontal frieze)
    y = "y"  # the bottom edge continues into the top one
    both = "both"


class InpaintArea(str, Enum):
    """Work on the whole picture, or only on a crop around the mask (A1111's "only masked")."""

    whole = "whole"
    masked = "masked"


def _panel(name: str, **extra: Any) -> dict[str, Any]:
    return {"panel": name, **extra}


# -- ControlNet units and IP-Adapters -----------------------------------------------------------


class ControlMode(str, Enum):
    """How a ControlNet weighs against the prompt (A1111's control modes)."""

    balanced = "balanced"
    prompt = "prompt"  # "My prompt is more important"
    control = "control"  # "ControlNet is more important"


class ResizeMode(str, Enum):
    """How a control image of another size is fitted to the canvas (A1111's resize modes)."""

    crop = "crop"  # scale to cover, centre crop ("Crop and Resize")
    resize = "resize"  # stretch ("Just Resize")
    fill = "fill"  # scale to fit, centred, margins edge-extended ("Resize and Fill")


A1111_RESIZE = {ResizeMode.crop: "Crop and Resize", ResizeMode.resize: "Just Resize", ResizeMode.fill: "Resize and Fill"}
A1111_CONTROL_MODE = {ControlMode.balanced: "Balanced", ControlMode.prompt: "My prompt is more important",
                      ControlMode.control: "ControlNet is more important"}


def _compact(value: Any, lists: tuple[str, ...] = ()) -> Any:
    """"MODEL[:WEIGHT],key=value,..." (the CLI's form of a unit) as a dict; keys in `lists` may repeat."""
    if not isinstance(value, str):
        return value
    head, *rest = [part.strip() for part in value.split(",")]
    model, weight = parse_lora(head)
    out: dict[str, Any] = {"model": model, **({"weight": weight} if head != model else {})}
    for part in rest:
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE after the model, got {part!r}")
        key = key.strip()
        if key in lists:
            out.setdefault(key, []).append(raw.strip())
        elif key in out:
            raise ValueError(f"{key} given twice in {value!r}")
        else:
            out[key] = raw.strip()
    return out


class ControlSpec(BaseModel):
    """One ControlNet unit of a request (CLI: --control MODEL[:WEIGHT],key=value,...)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    model: str = Field(description="ControlNet: diffusers folder, hub id (local cache) or single file")
    weight: float = Field(1.0, ge=0, le=2, description="how strongly it steers (0: not at all)")
    image: str | None = Field(None, description="control image file; none: the task's input image")
    preprocessor: str = Field("none", description="what the image becomes first: none, canny, scribble, lineart, "
                              "invert, tile, blur, inpaint, shuffle, depth")
    start: float = Field(0.0, ge=0, le=1, description="fraction of the steps where it starts acting")
    end: float = Field(1.0, ge=0, le=1, description="fraction of the steps where it stops acting")
    mode: ControlMode = Field(ControlMode.balanced, description="balanced, prompt (my prompt is more important) or "
                              "control (ControlNet is more important)")
    resize: ResizeMode = Field(ResizeMode.crop, description="a control image of another size: crop, resize or fill")
    threshold_a: float | None = Field(None, description="the preprocessor's first setting (canny: low threshold, "
                                      "scribble: stroke width, tile: down-sampling, blur: sigma)")
    threshold_b: float | None = Field(None, description="the preprocessor's second setting (canny: high threshold)")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        return _compact(value)

    @field_validator("image", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _preprocessor_and_steps(self) -> ControlSpec:
        from canvaslab.engines.diffusion import preprocessors

        if self.preprocessor not in preprocessors.PREPROCESSORS:
            try:
                preprocessors.preprocessor(self.preprocessor)  # a learned one: its own one-line reason
            except InputError as exc:
                raise ValueError(str(exc)) from None
        try:
            preprocessors.check_settings(self.preprocessor, self.threshold_a, self.threshold_b)
        except InputError as exc:
            raise ValueError(str(exc)) from None
        if self.start >= self.end:
            raise ValueError(f"control start {self.start:g} must be below its end {self.end:g}")
        return self


class IPAdapterSpec(BaseModel):
    """One IP-Adapter of a request (CLI: --ip-adapter MODEL[:WEIGHT],image=FILE[,image=FILE][,encoder=DIR])."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="IP-Adapter weights file, or owner/repo/path/file in the local Hugging Face cache")
    weight: float = Field(1.0, ge=0, le=2, description="how strongly the images steer (0: not at all)")
    images: list[str] = Field(min_length=1, max_length=16, validation_alias=AliasChoices("images", "image"),
                              description="reference images, one or more")
    encoder: str | None = Field(None, description="the CLIP vision encoder's folder [default: image_encoder/ beside "
                                "the weights]")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        return _compact(value, lists=("image",))

    @field_validator("images", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)):
            value = [value]
        return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value] if isinstance(value, list) else value


# -- engines and the fields they read ----------------------------------------------------------

# The unified engine's model aliases (engines.unified.bundle.ALIASES), repeated here so that validating
# a request loads no torch; tests/test_requests.py checks the two agree.
UNIFIED_ALIASES = ("show-o", "show-o-512")

# Request fields only generative engines read; every engine reads the others (seed, mask, geometry,
# compositing, outpaint canvas). Outpaint's `steps` counts outpaint steps, so it is not here; its
# sampler steps are `sampling_steps`.
GENERATIVE_FIELDS = frozenset({
    "prompt", "negative_prompt", "prompts", "model", "steps", "sampling_steps", "guidance_scale", "strength",
    "scheduler", "masked_content", "mask_weight", "lora", "dtype", "device", "offload", "attention_slicing",
    "vae_tiling", "cache_dir", "local_files_only", "tiling", "soft", "control", "ip_adapter",
})

# Which generative fields each engine reads. A new engine must be added here (a test checks).
ENGINE_FIELDS: dict[str, frozenset[str]] = {
    "patchmatch": frozenset({"tiling"}),  # searches and copies patches on the torus
    "telea": frozenset(),
    "ns": frozenset(),
    "diffusion": GENERATIVE_FIELDS,
    # Show-o: MaskGIT has no scheduler, LoRAs, strength or masked content; it loads from local folders
    # and the default cache only, so --local-files-only holds anyway and --cache-dir cannot be honoured.
    "unified": frozenset({
        "prompt", "negative_prompt", "prompts", "model", "steps", "sampling_steps", "guidance_scale", "dtype",
        "device", "local_files_only",
    }),
    # The learned erasers: one network from a local file (--model), no prompt, sampler or strength.
    "lama": frozenset({"model", "device"}),
    "migan": frozenset({"model", "device"}),
}
# diffusion reads `tiling` through circular padding (UNet models) or latent rolling (some DiT models):
# engines/diffusion/tiling.py.
# `soft` (grey mask levels as per-pixel change strength) needs a denoising loop to pin latents in
# (engines/diffusion/soft.py): classical engines copy or spread whole pixels and Show-o's MaskGIT keeps or
# re-predicts whole tokens, so the most they could do is cross-fade a binary fill with the input, which
# is what --feather already offers; they refuse --soft rather than quietly fill a binary mask.

_WHY_NOT: dict[str, str] = {
    "patchmatch": "copies texture from the image itself",
    "telea": "spreads the surrounding colours inwards",
    "ns": "spreads the surrounding colours inwards",
    "unified": "runs Show-o's MaskGIT",
    "lama": "runs one pass of a fixed network",
    "migan": "runs one pass of a fixed network",
}


def engine_for_model(model: str) -> str:
    """The engine a model runs on: unified for a Show-o bundle, diffusion for anything else.

    A Show-o bundle is one of its aliases, or a folder (or hub id in the local Hugging Face cache)
    whose config.json is Show-o's. Nothing is downloaded and no weights are read.
    """
    if model in UNIFIED_ALIASES:
        return "unified"
    config = _root_config(model)
    if config is not None and (config.parent / "model_index.json").exists():
        return "diffusion"  # a diffusers pipeline folder
    try:
        data = json.loads(config.read_text()) if config is not None else {}
    except (OSError, ValueError):
        data = {}
    is_showo = isinstance(data, dict) and (data.get("_class_name") == "Showo" or "num_vq_tokens" in data)
    return "unified" if is_showo else "diffusion"


def _root_config(model: str) -> Path | None:
    """The config.json at the top of a model folder or cached hub snapshot, if there is one."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder / "config.json" if (folder / "config.json").is_file() else None
    if model.count("/") != 1 or model.startswith((".", "/", "~")) or folder.suffix in (".safetensors", ".ckpt"):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json")
    except (ValueError, OSError):  # not a valid hub id: simply not a cached one
        return None
    return Path(found) if isinstance(found, str) else None


# -- names of local files ------------------------------------------------------------------------

# Request fields and engine options that may name files or folders on this machine: outputs show
# their names, never their paths (see display_name), and private recipes keep only the names.
PATH_FIELDS = ("model", "lora", "cache_dir", "frames")
PATH_OPTIONS = ("config", "base", "magvit", "tokenizer", "fill_model")  # engine options that name files or folders


def local_path(value: str | None) -> Path | None:
    """The file or folder `value` names on this machine; None for nothing, an alias or a hub id."""
    if not value or value in UNIFIED_ALIASES or value in _diffusion_aliases():
        return None  # an alias means the alias even where a file of that name exists (resolve_source)
    path = Path(value).expanduser()
    return path if path.exists() else None


def display_name(value: str) -> str:
    """How outputs name a model, LoRA or config: as given, unless it is a local path; then by its file
    name without extension (as A1111 names checkpoints), its folder's name, or a Hugging Face snapshot's
    hub id (<cache>/models--owner--name/snapshots/<revision>)."""
    path = local_path(value)
    if path is None:
        return value
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return path.stem if path.is_file() else path.name


def _diffusion_aliases() -> dict[str, Any]:
    from canvaslab.engines.diffusion.models import ALIASES  # configs only: no torch

    return ALIASES


def options_from_pairs(value: Any) -> Any:
    """Engine options: the CLI's ["key=value", ...] as well as a dict."""
    if isinstance(value, (list, tuple)):
        return parse_key_values(value)
    return value


def split_joined(value: Any) -> Any:
    """A string or list of strings, each split at the Show-o scripts' ' *** ' separator, blanks dropped."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        return [part.strip() for item in value for part in str(item).split(" *** ") if part.strip()]
    return value


class TaskRequest(BaseModel):
    """Fields every task shares."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=True)

    # Fields only some engines read (see ENGINE_FIELDS); outpaint's `steps` is not one of them.
    generative_fields: ClassVar[frozenset[str]] = GENERATIVE_FIELDS

    engine: str = Field(
        DEFAULT_ENGINE, description=f"engine that fills the pixels: {', '.join(engine_names())} [default: the "
        f"model's engine with --model (diffusion, or unified for Show-o), else {DEFAULT_ENGINE}]",
        json_schema_extra=_panel("Engine", metavar="NAME", cli_default=None),
    )
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="random seed (omit for a random one; it is recorded in the output)",
        json_schema_extra=_panel("Engine"),
    )
    prompt: str = Field("", description="what to paint (diffusion and unified engines)", json_schema_extra=_panel("Engine"))
    negative_prompt: str = Field("", description="what to avoid (generative engines)", json_schema_extra=_panel("Engine"))
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="engine options as KEY=VALUE, repeatable (see `canvaslab engines`)",
        json_schema_extra=_panel("Engine", flag="--opt", metavar="KEY=VALUE"),
    )
    model: str | None = Field(
        None, description="model for generative engines: alias (sd15-inpaint, sdxl-inpaint, ...), hub id, "
        "diffusers folder or .safetensors/.ckpt file [default: the engine's]",
        json_schema_extra=_panel("Model", metavar="MODEL"),
    )
    steps: int | None = Field(
        None, ge=1, le=1000, description="denoising steps [default: the model's: 20 for Stable Diffusion, 28 for FLUX.1 "
        "dev, 50 for Fill, 4 for schnell and FLUX.2 Klein, 9 for Z-Image Turbo, 20 for Show-o]",
        json_schema_extra=_panel("Sampling"),
    )
    guidance_scale: float | None = Field(
        None, ge=0, le=50, description="guidance (A1111's CFG scale); for FLUX.1 the distilled guidance value, for "
        "Qwen-Image its true CFG scale [default: the model's: 7.5 for Stable Diffusion, 3.5 FLUX.1 dev, 30 Fill, "
        "2.5 Kontext, 4 Qwen-Image, 0 Z-Image Turbo]", json_schema_extra=_panel("Sampling"),
    )
    strength: float = Field(
        1.0, gt=0, le=1, description="how much of the masked area is re-noised (A1111's denoising strength)",
        json_schema_extra=_panel("Sampling"),
    )
    scheduler: str | None = Field(
        None, description=f"sampler: {', '.join(ALL_SCHEDULERS)} (flow-matching models: euler, euler-karras, "
        "euler-beta, lcm) [default: the model's own]",
        json_schema_extra=_panel("Sampling", metavar="NAME"),
    )
    masked_content: MaskedContent = Field(
        MaskedContent.original, description="start of the masked area when --strength < 1: original, fill (blurred "
        "surroundings), latent-noise, latent-nothing, lama or migan (that eraser's fill, refined; --opt fill_model=FILE)",
        json_schema_extra=_panel("Sampling"),
    )
    mask_weight: float = Field(
        1.0, ge=0, le=1, description="inpainting models: how strongly the masked area is hidden from the "
        "conditioning (A1111's inpainting_mask_weight)", json_schema_extra=_panel("Sampling"),
    )
    size: int | None = Field(
        None, ge=64, le=8192, description="long side (px) the engine works at; the result is scaled back "
        "[default: the image's size; for --area masked the model's native resolution]",
        json_schema_extra=_panel("Geometry", metavar="PX"),
    )
    tile: int | None = Field(
        None, ge=0, le=8192, description="fill big canvases window by window, each window this many px, "
        "conditioned on what is already there (0: never) [default: the model's native size once the canvas is "
        "twice as large]", json_schema_extra=_panel("Geometry", metavar="PX"),
    )
    lora: list[str] = Field(
        default_factory=list, description="LoRA file/folder/hub id with optional weight, PATH[:WEIGHT], repeatable "
        "(diffusers or kohya format)", json_schema_extra=_panel("Model", metavar="PATH[:WEIGHT]"),
    )
    dtype: DType = Field(DType.auto, description="weights precision (auto: fp16 on GPU, fp32 on CPU)", json_schema_extra=_panel("Model"))
    device: Device = Field(Device.auto, description="where to run", json_schema_extra=_panel("Model"))
    offload: Offload | None = Field(
        None, description="CPU offload to save GPU memory: model or sequential (slowest, least memory)",
        json_schema_extra=_panel("Model"),
    )
    attention_slicing: bool = Field(False, description="compute attention in slices (less memory)", json_schema_extra=_panel("Model"))
    vae_tiling: bool = Field(False, description="decode large canvases in tiles (less memory)", json_schema_extra=_panel("Model"))
    cache_dir: str | None = Field(None, description="Hugging Face cache folder [default: HF_HOME]", json_schema_extra=_panel("Model", metavar="DIR"))
    local_files_only: bool = Field(
        False, description="never download: use only models already on disk", json_schema_extra=_panel("Model"),
    )
    control: list[ControlSpec] = Field(
        default_factory=list, description="ControlNet unit, repeatable: MODEL[:WEIGHT] then ,key=value settings: "
        "image=FILE (default: the input image), preprocessor=none|canny|scribble|lineart|invert|tile|blur|inpaint|"
        "shuffle|depth, start=F, end=F, mode=balanced|prompt|control, resize=crop|resize|fill, threshold_a=N, threshold_b=N "
        "(docs/control.md)", json_schema_extra=_panel("Control", metavar="SPEC"),
    )
    ip_adapter: list[IPAdapterSpec] = Field(
        default_factory=list, description="IP-Adapter, repeatable: FILE[:WEIGHT],image=REF[,image=REF...][,encoder=DIR] "
        "(Stable Diffusion 1.x/2.x/XL and FLUX.1 dev/schnell with a CLIP image encoder; SD3/SD3.5 with a SigLIP one, "
        "one adapter and one image; the encoder from image_encoder/ beside FILE unless encoder= says)",
        json_schema_extra=_panel("Control", metavar="SPEC"),
    )
    tiling: Tiling = Field(
        Tiling.none, description="make the output tile without a seam: x (right edge runs into the left), y (bottom "
        "into top) or both; diffusion (circular padding) and patchmatch (wrap-around) engines",
        json_schema_extra=_panel("Geometry"),
    )
    feather: float = Field(
        0.0, ge=0, le=512,
        description="soften the inside edge of the mask by PX when compositing (pixels outside the mask never change)",
        json_schema_extra=_panel("Compositing"),
    )
    color_match: ColorMatch = Field(
        ColorMatch.none, description="match the colours of the filled region to its surroundings",
        json_schema_extra=_panel("Compositing"),
    )
    align: AlignMode = Field(
        AlignMode.pad, description="how to reach the engine's size multiple: pad (exact) or resize",
        json_schema_extra=_panel("Geometry"),
    )
    multiple: int | None = Field(
        None, ge=1, le=1024, description="size multiple the engine works at (default: the engine's own)",
        json_schema_extra=_panel("Geometry"),
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_from_model(cls, data: Any) -> Any:
        """No engine given (or None): the model's engine when there is a model, else the task's default."""
        if isinstance(data, dict) and data.get("engine") is None:
            data = dict(data)
            if data.get("model"):
                data["engine"] = engine_for_model(str(data["model"]))
            else:
                data.pop("engine", None)
        return data

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in engine_names():
            raise ValueError(f"unknown engine {value!r}: choose one of {', '.join(engine_names())}")
        return value

    @model_validator(mode="after")
    def _engine_reads_every_field(self) -> TaskRequest:
        """Refuse a generative field set for an engine that would ignore it."""
        for name in sorted(self.unused_fields(self.engine)):
            field = type(self).model_fields[name]
            if getattr(self, name) != field.get_default(call_default_factory=True):
                readers = [e for e, reads in ENGINE_FIELDS.items() if name in reads and e in self.engines_allowed()]
                raise ValueError(
                    f"{flag_name(name, field)} does not apply to the {self.engine} engine, which "
                    f"{_WHY_NOT.get(self.engine, 'does not read it')}: leave it out"
                    + (f", or choose --engine {' or '.join(readers)}" if readers else "")
                )
        return self

    @model_validator(mode="after")
    def _tiling_wraps_one_canvas(self) -> TaskRequest:
        if self.tiling != Tiling.none and getattr(self, "tile", None):
            raise ValueError("--tiling wraps the whole canvas around, which window-by-window filling (--tile) cannot: "
                             "leave --tile out")
        return self

    @classmethod
    def unused_fields(cls, engine: str) -> frozenset[str]:
        """This request's fields that `engine` does not read (an unknown engine reads them all)."""
        reads = ENGINE_FIELDS.get(engine, GENERATIVE_FIELDS)
        return frozenset(name for name in cls.generative_fields - reads if name in cls.model_fields)

    @classmethod
    def engines_allowed(cls) -> tuple[str, ...]:
        """The engines this task runs on."""
        return tuple(engine_names())

    @classmethod
    def drop_unused(cls, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """`values` without the fields their engine does not read, and the names of those that were set.

        For input that predates the refusal (recipes of older versions) or that always carries every
        field (A1111 clients send steps and a CFG scale whatever the engine); validate the rest as usual.
        """
        engine = values.get("engine")
        if engine is None:
            engine = engine_for_model(str(values["model"])) if values.get("model") else cls.model_fields["engine"].default
        unused = cls.unused_fields(str(engine))
        dropped = sorted(
            name for name in unused
            if name in values and values[name] != cls.model_fields[name].get_default(call_default_factory=True)
        )
        return {key: value for key, value in values.items() if key not in unused}, dropped

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is not None and value not in ALL_SCHEDULERS:
            raise ValueError(f"unknown scheduler {value!r}: choose one of {', '.join(ALL_SCHEDULERS)}")
        return value

    def generation(self) -> Generation:
        """The engine-facing part of the request."""
        return Generation(
            prompt=self.prompt, negative_prompt=self.negative_prompt, model=self.model, steps=self.steps,
            guidance_scale=self.guidance_scale, strength=self.strength, scheduler=self.scheduler,
            loras=tuple(parse_lora(spec) for spec in self.lora),
            masked_content=self.masked_content.value, mask_weight=self.mask_weight,
            dtype=self.dtype.value, device=self.device.value, offload=self.offload.value if self.offload else None,
            attention_slicing=self.attention_slicing, vae_tiling=self.vae_tiling, cache_dir=self.cache_dir,
            local_files_only=True if self.local_files_only else None, tiling=self.tiling.value,
            control=tuple(ControlUnit(
                model=c.model, weight=c.weight, start=c.start, end=c.end, mode=c.mode.value, preprocessor=c.preprocessor,
                threshold_a=c.threshold_a, threshold_b=c.threshold_b, source=c.image,
            ) for c in self.control),
            ip_adapters=tuple(ImagePrompt(model=a.model, weight=a.weight, encoder=a.encoder, sources=tuple(a.images))
                              for a in self.ip_adapter),
        )

    _options_from_pairs = field_validator("options", mode="before")(options_from_pairs)

    def a1111_settings(self, size: tuple[int, int], seed: int) -> dict[str, object]:
        """The settings line of the A1111 `parameters` text (fields A1111 knows, then ours).

        The engine's `describe_sampling` (Steps, Sampler, CFG scale, Model, ...) goes before these.
        """
        settings: dict[str, object] = {}
        if "Sampler" not in get_engine(self.engine).describe_sampling(self.generation(), self.options):
            # A1111 readers (sd-parsers, Civitai) only take a settings line with Steps and Sampler for one;
            # an engine without a sampler (PatchMatch, OpenCV) fills in one step of its own.
            settings.update({"Steps": 1, "Sampler": self.engine})
        settings.update({"Seed": seed, "Size": f"{size[0]}x{size[1]}", "Engine": self.engine})
        settings.update({
            f"Engine {k}": display_name(v) if k in PATH_OPTIONS and isinstance(v, str) else v
            for k, v in self.options.items()
        })
        settings.update(self.a1111_models())
        settings.update(self.a1111_control())
        if self.tiling != Tiling.none:
            settings["Tiling"] = True if self.tiling == Tiling.both else self.tiling.value  # A1111: "Tiling: True"
        if self.feather:
            settings["Mask blur"] = _number(self.feather)
        if self.color_match != ColorMatch.none:
            settings["Color match"] = self.color_match.value
        return settings

    def a1111_control(self) -> dict[str, object]:
        """ControlNet units and IP-Adapters as the sd-webui-controlnet extension writes its units (names, never paths)."""
        settings: dict[str, object] = {}
        for index, unit in enumerate(self.control):
            parts = {
                "Module": unit.preprocessor, "Model": display_name(unit.model), "Weight": _number(unit.weight),
                "Resize Mode": A1111_RESIZE[unit.resize], "Threshold A": unit.threshold_a,
                "Threshold B": unit.threshold_b, "Guidance Start": _number(unit.start),
                "Guidance End": _number(unit.end), "Pixel Perfect": True, "Control Mode": A1111_CONTROL_MODE[unit.mode],
            }
            settings[f"ControlNet {index}"] = ", ".join(f"{k}: {v}" for k, v in parts.items() if v is not None)
        for index, adapter in enumerate(self.ip_adapter):
            settings[f"IP-Adapter {index}"] = (f"Model: {display_name(adapter.model)}, Weight: {_number(adapter.weight)}, "
                                               f"Images: {len(adapter.images)}")
        return settings

    def a1111_models(self) -> dict[str, object]:
        """A local model and LoRAs as A1111 names them: file name and short hash, never the path.

        Aliases and hub ids are names already (and the engine writes the default model's alias).
        """
        settings: dict[str, object] = {}
        if self.model is not None and (path := local_path(self.model)) is not None:
            settings["Model hash"] = model_sha256(path)[:MODEL_HASH_LENGTH]
            settings["Model"] = display_name(self.model)
        hashes = [
            f"{display_name(name)}: {lora_sha256(path)[:LORA_HASH_LENGTH]}"
            for name, _ in map(parse_lora, self.lora) if (path := local_path(name)) is not None
        ]
        if hashes:
            settings["Lora hashes"] = ", ".join(hashes)
        return settings


class InpaintRequest(TaskRequest):
    """Fill the masked pixels of an image."""

    mask_mode: MaskMode = Field(
        MaskMode.white,
        description="white: white pixels are filled; black: black pixels are filled; alpha: transparent pixels are filled",
        json_schema_extra=_panel("Mask"),
    )
    threshold: int = Field(128, ge=1, le=255, description="grey level that splits fill from keep", json_schema_extra=_panel("Mask"))
    # A flag beside --mask-mode rather than more modes: grey levels apply to every polarity (white, black,
    # alpha), so modes would double, and --threshold is exactly what --soft does without.
    soft: bool = Field(
        False, description="soft inpainting: read the mask's grey levels (0..1, polarity as --mask-mode) as how much "
        "each pixel may change, as a per-pixel denoising strength, instead of thresholding it; the result is blended "
        "by level, level 0 stays untouched (diffusion engine)", json_schema_extra=_panel("Mask"),
    )
    grow: int = Field(0, ge=0, le=512, description="dilate the mask by PX before filling", json_schema_extra=_panel("Mask"))
    area: InpaintArea = Field(
        InpaintArea.whole, description="whole picture, or only a crop around the mask (faster, more detail)",
        json_schema_extra=_panel("Geometry"),
    )
    padding: int = Field(
        32, ge=0, le=4096, description="context around the mask when --area masked", json_schema_extra=_panel("Geometry"),
    )

    @model_validator(mode="after")
    def _tiling_needs_the_whole_picture(self) -> InpaintRequest:
        if self.tiling != Tiling.none and self.area == InpaintArea.masked:
            raise ValueError("--tiling wraps the whole picture around; --area masked works on a crop: use --area whole")
        return self

    @model_validator(mode="after")
    def _soft_reads_levels_not_a_threshold(self) -> InpaintRequest:
        if self.soft and self.threshold != type(self).model_fields["threshold"].default:
            raise ValueError("--threshold splits the mask into fill and keep, and --soft reads its grey levels as they "
                             "are: leave --threshold out, or --soft")
        return self

    def a1111_settings(self, size: tuple[int, int], seed: int) -> dict[str, object]:
        settings = super().a1111_settings(size, seed)
        settings["Mask mode"] = self.mask_mode.value
        if self.soft:
            settings["Soft inpainting enabled"] = True  # A1111's key; its own soft settings have no equivalent here
        if self.grow:
            settings["Mask grow"] = self.grow
        settings["Inpaint area"] = "Only masked" if self.area == InpaintArea.masked else "Whole picture"
        if self.area == InpaintArea.masked:
            settings["Masked area padding"] = self.padding
        settings["Version"] = f"canvaslab {__version__}"
        return settings


class OutpaintRequest(TaskRequest):
    """Extend the canvas and fill the new area."""

    generative_fields: ClassVar[frozenset[str]] = GENERATIVE_FIELDS - {"steps"}

    left: int = Field(0, ge=0, le=16384, description="pixels to add on the left", json_schema_extra=_panel("Canvas"))
    right: int = Field(0, ge=0, le=16384, description="pixels to add on the right", json_schema_extra=_panel("Canvas"))
    top: int = Field(0, ge=0, le=16384, description="pixels to add at the top", json_schema_extra=_panel("Canvas"))
    bottom: int = Field(0, ge=0, le=16384, description="pixels to add at the bottom", json_schema_extra=_panel("Canvas"))
    expand: float | None = Field(
        None, gt=0, le=8, description="extend by this fraction of the size instead of pixels (needs --direction)",
        json_schema_extra=_panel("Canvas"),
    )
    direction: list[str] = Field(
        default_factory=list, description="sides for --expand: left,right,top(up),bottom(down); comma list or repeated",
        json_schema_extra=_panel("Canvas", metavar="SIDES"),
    )
    steps: int = Field(1, ge=1, le=64, description="extend in N steps, each conditioned on the last", json_schema_extra=_panel("Canvas"))
    overlap: int = Field(
        8, ge=0, le=1024, description="band of the old image regenerated at each step to hide the seam",
        json_schema_extra=_panel("Canvas"),
    )
    fill: InitialFill = Field(
        InitialFill.edge, description="initial content of the new area before the engine runs",
        json_schema_extra=_panel("Canvas"),
    )
    feather: float = Field(
        8.0, ge=0, le=512, description="blend width (PX) inside the regenerated area, hiding the seam",
        json_schema_extra=_panel("Compositing"),
    )
    sequence: list[str] = Field(
        default_factory=list, description="one step per entry, in order, each extending its side(s) by --expand of "
        "the input's size: left,left,right, or 'left *** up' as the Show-o scripts write it, or left+up for two "
        "sides in one step (instead of --direction and --steps)", json_schema_extra=_panel("Canvas", metavar="SIDES"),
    )
    prompts: list[str] = Field(
        default_factory=list, description="a prompt per outpaint step, repeatable (or joined with ' *** '); the last "
        "one is reused for later steps (instead of --prompt)",
        json_schema_extra=_panel("Engine", flag="--step-prompt", metavar="TEXT"),
    )
    sampling_steps: int | None = Field(
        None, ge=1, le=1000, description="denoising steps (diffusion) or MaskGIT iterations (unified) of each "
        "outpaint step [default: the model's]", json_schema_extra=_panel("Sampling"),
    )

    @field_validator("sequence", mode="before")
    @classmethod
    def _parse_sequence(cls, value: Any) -> Any:
        if isinstance(value, (str, list, tuple)):
            try:
                return list(parse_sequence(value if isinstance(value, str) else [str(v) for v in value]))
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("prompts", mode="before")
    @classmethod
    def _split_prompts(cls, value: Any) -> Any:
        """The Show-o scripts' ' *** ' separator works inside one --step-prompt too."""
        return split_joined(value)

    @model_validator(mode="after")
    def _one_way_per_setting(self) -> OutpaintRequest:
        if self.prompts and self.prompt:
            raise ValueError("give either --prompt (every step) or --step-prompt (one per step), not both")
        if self.sequence:
            if self.expand is None:
                raise ValueError("--sequence needs --expand FRACTION: how much of the input's size each step adds")
            if self.direction or any((self.left, self.right, self.top, self.bottom)):
                raise ValueError("--sequence names the sides of every step: leave --direction and "
                                 "--left/--right/--top/--bottom out")
            if self.steps not in (1, len(self.sequence)):
                raise ValueError(f"--sequence makes {len(self.sequence)} steps: leave --steps out")
            if len(self.sequence) > 64:
                raise ValueError(f"--sequence has {len(self.sequence)} steps; at most 64")
        return self

    def step_prompt(self, index: int) -> str:
        """The prompt of outpaint step `index` (0-based): its own, the last one given, or --prompt."""
        if not self.prompts:
            return self.prompt
        return self.prompts[min(index, len(self.prompts) - 1)]

    def generation(self) -> Generation:
        """As for every task, but `steps` here counts outpaint steps: the sampler runs `sampling_steps`."""
        return dataclasses.replace(super().generation(), steps=self.sampling_steps)

    @field_validator("direction", mode="before")
    @classmethod
    def _split_directions(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            try:
                return list(parse_directions(",".join(str(v) for v in value)))
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return value

    def a1111_settings(self, size: tuple[int, int], seed: int) -> dict[str, object]:
        settings = super().a1111_settings(size, seed)
        if self.sequence:
            settings["Outpaint expand"] = f"{_number(self.expand or 0)} {' '.join(self.sequence)}"
        elif self.expand is not None:
            settings["Outpaint expand"] = f"{_number(self.expand)} {'+'.join(self.direction)}"
        else:
            sides = [f"{side} {getattr(self, side)}" for side in ("left", "right", "top", "bottom") if getattr(self, side)]
            settings["Outpaint"] = " ".join(sides)
        steps = len(self.sequence) if self.sequence else self.steps
        settings.update({"Outpaint steps": steps, "Overlap": self.overlap, "Initial fill": self.fill.value})
        if self.prompts:
            settings["Step prompts"] = " *** ".join(self.prompts)
        settings["Version"] = f"canvaslab {__version__}"
        return settings


class TextureRequest(TaskRequest):
    """Make an image tile without a seam: roll it by half, inpaint a band over the seams now in its
    middle (cross-shaped for both axes), roll it back (tasks/texture.py)."""

    axes: Tiling = Field(
        Tiling.both, description="which seams to remove: x (where the right edge meets the left), y (bottom meets "
        "top) or both", json_schema_extra=_panel("Texture"),
    )
    band: int | None = Field(
        None, ge=1, le=2048, description="half-width (px) of the band inpainted over each seam [default: 1/8 of "
        "the image's short side, at least 8]", json_schema_extra=_panel("Texture", metavar="PX"),
    )

    @field_validator("axes")
    @classmethod
    def _some_axis(cls, value: Tiling) -> Tiling:
        if value == Tiling.none:
            raise ValueError("texture seamless needs an axis to make seamless: x, y or both")
        return value

    @model_validator(mode="after")
    def _the_task_wraps_itself(self) -> TextureRequest:
        # The task wraps the image (engines that can, along --axes) and fills it in one go itself.
        if self.tiling != Tiling.none:
            raise ValueError("texture seamless makes the image tile along --axes itself: leave --tiling out")
        if self.tile is not None:
            raise ValueError("texture seamless fills the band over the whole image in one go: leave --tile out")
        if any(unit.image is not None for unit in self.control):
            raise ValueError("texture seamless rolls the image before filling, so a control image would no longer "
                             "match it: leave image= out (a unit then reads the rolled image itself)")
        return self

    def a1111_settings(self, size: tuple[int, int], seed: int) -> dict[str, object]:
        settings = super().a1111_settings(size, seed)
        settings["Tiling"] = True if self.axes == Tiling.both else self.axes.value  # the output tiles
        settings["Texture band"] = self.band  # None (left out) until the task resolves the default
        settings["Version"] = f"canvaslab {__version__}"
        return settings


class _CreateRequest(TaskRequest):
    """Shared by `edit` and `generate`: tasks that run a diffusion pipeline directly, without a mask.

    They read only some of the shared fields. `used_fields` lists them; any other field set to a
    non-default value is refused with one line (never silently ignored), so a shared field added
    later is refused here until the task learns to use it.
    """

    task: ClassVar[str]
    engines: ClassVar[tuple[str, ...]] = ("diffusion",)
    used_fields: ClassVar[frozenset[str]] = frozenset({
        "engine", "seed", "prompt", "negative_prompt", "options", "model", "steps", "guidance_scale", "scheduler",
        "lora", "dtype", "device", "offload", "attention_slicing", "vae_tiling", "cache_dir", "local_files_only",
    })

    engine: str = Field(
        "diffusion", description="engine that paints: diffusion (the only one for this task so far)",
        json_schema_extra=_panel("Engine", metavar="NAME", cli_default=None),
    )

    @field_validator("engine")
    @classmethod
    def _supported_engine(cls, value: str) -> str:
        if value not in cls.engines:
            raise ValueError(f"{cls.task} runs on the {' or '.join(cls.engines)} engine, not {value!r}")
        return value

    @classmethod
    def engines_allowed(cls) -> tuple[str, ...]:
        return cls.engines

    @field_validator("*")
    @classmethod
    def _refuse_unused(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if name is None or name in cls.used_fields:
            return value
        field = cls.model_fields[name]
        default = field.get_default(call_default_factory=True)
        if value != default:
            flag = flag_name(name, field)
            raise ValueError(f"{flag} does not apply to {cls.task}; leave it at its default ({_shown(default)})")
        return value

    def a1111_settings(self, size: tuple[int, int], seed: int) -> dict[str, object]:
        settings = super().a1111_settings(size, seed)
        settings["Denoising strength"] = None  # no init image to denoise (None values are left out)
        settings["Version"] = f"canvaslab {__version__}"
        return settings


class EditRequest(_CreateRequest):
    """Change an image from an instruction ("make it winter"), InstructPix2Pix style."""

    task: ClassVar[str] = "edit"
    used_fields: ClassVar[frozenset[str]] = _CreateRequest.used_fields | {
        "image_guidance_scale", "align", "multiple", "frames",
    }

    # The instruction is the prompt (A1111 and the pipelines call it that); users write `instruction`.
    prompt: str = Field(
        "", validation_alias=AliasChoices("instruction", "prompt"), validate_default=True,
        description="the edit, as an instruction (\"make it winter\"); recorded as the prompt",
        json_schema_extra=_panel("Edit", flag="--instruction", metavar="TEXT"),
    )
    frames: str | None = Field(
        None, description="folder of input frames for a multi-frame editing model (UNet of 4+4N channels: N frames, "
        "in natural name order 0, 1, ..., 10); the result is the frame they lead to, at their size. Instead of IMAGE",
        json_schema_extra=_panel("Edit", metavar="DIR"),
    )
    image_guidance_scale: float = Field(
        1.5, ge=1, le=50, description="how closely the result keeps to the input image (A1111's Image CFG scale; "
        "diffusers switches all guidance off below 1)", json_schema_extra=_panel("Sampling"),
    )
    model: str | None = Field(
        "instruct-pix2pix", description="image-editing model: alias (instruct-pix2pix), hub id, diffusers folder "
        "or .safetensors/.ckpt file", json_schema_extra=_panel("Model", metavar="MODEL"),
    )
    align: AlignMode = Field(
        AlignMode.resize, description="how to reach a multiple of 8: resize or pad; the output always has the "
        "input's exact size", json_schema_extra=_panel("Geometry"),
    )
    multiple: int | None = Field(
        None, ge=8, le=1024, description="size multiple to work at, a multiple of 8 [default: 8]",
        json_schema_extra=_panel("Geometry"),
    )

    @field_validator("prompt")
    @classmethod
    def _needs_instruction(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("edit needs an instruction, e.g. --instruction \"make it winter\"")
        return value

    @field_validator("frames", mode="before")
    @classmethod
    def _frames_path(cls, value: Any) -> Any:
        """Accept a Path (the Python API) as well as a string; the recipe stores a string."""
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str) and not value.strip():
            raise ValueError("--frames needs a folder of images")
        return value

    @field_validator("multiple")
    @classmethod
    def _latent_multiple(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"the VAE works in 8-pixel blocks, so the multiple must be a multiple of 8 (got {value})")
        return value

    def a1111_settings(self, size: tuple[int, int], seed: int) -> dict[str, object]:
        return {**super().a1111_settings(size, seed), "Image CFG scale": self.image_guidance_scale}


class GenerateRequest(_CreateRequest):
    """Paint an image from a text prompt."""

    task: ClassVar[str] = "generate"
    engines: ClassVar[tuple[str, ...]] = ("diffusion", "unified")
    used_fields: ClassVar[frozenset[str]] = _CreateRequest.used_fields | {
        "width", "height", "size", "tiling", "control", "ip_adapter",
    }

    engine: str = Field(
        "diffusion", description="engine that paints: diffusion (Stable Diffusion) or unified (Show-o, MaskGIT) "
        "[default: the model's engine with --model, else diffusion]",
        json_schema_extra=_panel("Engine", metavar="NAME", cli_default=None),
    )
    model: str | None = Field(
        None, description="text-to-image model: alias (sd15, sd21, sdxl, sdxl-turbo; unified: show-o, show-o-512), "
        "hub id, model folder or .safetensors/.ckpt file [default: sd15; unified: show-o]",
        json_schema_extra=_panel("Model", metavar="MODEL"),
    )
    width: int | None = Field(
        None, ge=8, le=8192, description="output width, a multiple of 8 (unified: 16) [default: the model's native resolution]",
        json_schema_extra=_panel("Canvas", metavar="PX"),
    )
    height: int | None = Field(
        None, ge=8, le=8192, description="output height, a multiple of 8 (unified: 16) [default: the model's native resolution]",
        json_schema_extra=_panel("Canvas", metavar="PX"),
    )
    size: int | None = Field(
        None, ge=8, le=8192, description="square output of PX x PX, a multiple of 8 (unified: 16) (instead of --width/--height)",
        json_schema_extra=_panel("Canvas", metavar="PX"),
    )

    @field_validator("width", "height", "size")
    @classmethod
    def _multiple_of_8(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        if value % 8:
            low, high = value // 8 * 8, value // 8 * 8 + 8
            hint = f"{low} or {high}" if low else str(high)
            raise ValueError(f"{info.field_name} must be a multiple of 8 (the VAE works in 8-pixel blocks): try {hint}")
        # Whichever of the three is validated last sees the others (their order depends on inheritance).
        others = ("width", "height") if info.field_name == "size" else ("size",)
        if any(info.data.get(other) is not None for other in others):
            raise ValueError("give either --size or --width/--height, not both")
        return value


class UnderstandRequest(BaseModel):
    """Answer questions about images with the unified model (Show-o); greedy unless --sample."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=True)

    questions: list[str] = Field(
        default_factory=list, validate_default=True, description="a question asked about every image, repeatable (' *** ' also separates "
        "questions, as in the Show-o scripts)", json_schema_extra=_panel("Questions", flag="--question", metavar="TEXT"),
    )
    engine: str = Field(
        "unified", description="engine that answers: unified (the only one for this task)",
        json_schema_extra=_panel("Engine", metavar="NAME"),
    )
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="random seed for --sample (omit for a random one; it is recorded)",
        json_schema_extra=_panel("Engine"),
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="engine options as KEY=VALUE, repeatable: magvit=FOLDER, tokenizer=FOLDER",
        json_schema_extra=_panel("Engine", flag="--opt", metavar="KEY=VALUE"),
    )
    model: str | None = Field(
        None, description="unified model: alias (show-o, show-o-512), hub id in the local cache or folder "
        "[default: show-o]", json_schema_extra=_panel("Model", metavar="MODEL"),
    )
    sample: bool = Field(
        False, description="sample each answer token instead of taking the most likely one",
        json_schema_extra=_panel("Decoding"),
    )
    temperature: float | None = Field(
        None, gt=0, le=10, description="with --sample: divide the logits by T (lower = surer) [default: 1]",
        json_schema_extra=_panel("Decoding", metavar="T"),
    )
    top_k: int | None = Field(
        None, ge=1, le=100000, description="with --sample: draw only among the K most likely tokens",
        json_schema_extra=_panel("Decoding", metavar="K"),
    )
    max_new_tokens: int = Field(100, ge=1, le=4096, description="longest answer, in tokens", json_schema_extra=_panel("Decoding"))
    kv_cache: bool = Field(
        True, description="reuse keys/values of earlier tokens (same answers, much faster)",
        json_schema_extra=_panel("Decoding", flag="--kv-cache/--no-kv-cache"),
    )
    batch_size: int = Field(
        8, ge=1, le=1024, description="image-question pairs decoded together", json_schema_extra=_panel("Decoding"),
    )
    dtype: DType = Field(DType.auto, description="weights precision (auto: fp16 on GPU, fp32 on CPU)", json_schema_extra=_panel("Model"))
    device: Device = Field(Device.auto, description="where to run", json_schema_extra=_panel("Model"))

    @field_validator("questions", mode="before")
    @classmethod
    def _split_questions(cls, value: Any) -> Any:
        return split_joined(value)

    @field_validator("questions")
    @classmethod
    def _needs_a_question(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("understand needs a question, e.g. --question \"What is in the picture?\"")
        return value

    @field_validator("engine")
    @classmethod
    def _unified_only(cls, value: str) -> str:
        if value != "unified":
            raise ValueError(f"understand runs on the unified engine only, not {value!r}")
        return value

    _options_from_pairs = field_validator("options", mode="before")(options_from_pairs)

    @field_validator("options")
    @classmethod
    def _loading_options_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        other = sorted(set(value) - {"magvit", "tokenizer"})
        if other:
            raise ValueError(f"option {other[0]} does not apply to understand (it takes magvit and tokenizer)")
        return value

    @model_validator(mode="after")
    def _sampling_settings_need_sample(self) -> UnderstandRequest:
        if not self.sample and (self.temperature is not None or self.top_k is not None):
            raise ValueError("--temperature and --top-k only apply with --sample")
        return self

    def generation(self) -> Generation:
        """The model-loading part the engine reads (model, dtype, device)."""
        return Generation(model=self.model, dtype=self.dtype.value, device=self.device.value)


class AutoMask(str, Enum):
    """Masks that need no model (canvaslab.masks: damage.py, text.py, watermark.py)."""

    watermark = "watermark"  # what every image of a folder shares (median of their gradients)
    text = "text"  # lines of letters (strokes -> characters -> lines)
    damage = "damage"  # thin bright or dark lines: scratches, cracks


def _coordinates(value: Any, count: int, what: str) -> Any:
    """"X,Y" (CLI), [x, y] (JSON) or a tuple -> a tuple of `count` floats; anything else is left to pydantic."""
    if isinstance(value, str):
        parts = value.replace(" ", "").split(",")
        try:
            numbers = tuple(float(part) for part in parts)
        except ValueError:
            raise ValueError(f"{what} must be {count} numbers separated by commas, got {value!r}") from None
        value = numbers
    if isinstance(value, (list, tuple)) and len(value) != count:
        raise ValueError(f"{what} must be {count} numbers, got {len(value)}")
    return value


class MaskRequest(BaseModel):
    """Make a mask without painting: by points/boxes (Segment Anything), by words (CLIPSeg, or a detector's
    boxes fed to SAM), or by rule (--auto watermark|text|damage); then refine it. One way per mask."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=True)

    points: list[tuple[float, float]] = Field(
        default_factory=list, description="a point on the object, image pixels X,Y (x right, y down), repeatable",
        json_schema_extra=_panel("Click (Segment Anything)", flag="--point", metavar="X,Y"),
    )
    negative_points: list[tuple[float, float]] = Field(
        default_factory=list, description="a point that is not on the object, X,Y, repeatable",
        json_schema_extra=_panel("Click (Segment Anything)", flag="--negative-point", metavar="X,Y"),
    )
    boxes: list[tuple[float, float, float, float]] = Field(
        default_factory=list, description="a box around the object, X0,Y0,X1,Y1; several boxes give one mask each, united",
        json_schema_extra=_panel("Click (Segment Anything)", flag="--box", metavar="X0,Y0,X1,Y1"),
    )
    multimask: bool = Field(
        False, description="let SAM propose three masks and keep the best-scoring one (good for a single click on an "
        "ambiguous object) instead of its single answer", json_schema_extra=_panel("Click (Segment Anything)"),
    )
    model: str | None = Field(
        None, description="SAM model: alias (sam, sam-large, sam-huge, sam-hq, sam2, sam2-large), transformers folder, "
        "or hub id in the Hugging Face cache [default: sam]",
        json_schema_extra=_panel("Click (Segment Anything)", metavar="MODEL"),
    )
    text: list[str] = Field(
        default_factory=list, description="what to mask, in words (\"the spoon\"), repeatable: the mask covers them all",
        json_schema_extra=_panel("Words", metavar="TEXT"),
    )
    text_model: str | None = Field(
        None, description="model that reads --text: CLIPSeg (clipseg: per-pixel scores) or a detector (owlvit, owlv2, "
        "grounding-dino: boxes that --model's SAM turns into masks), alias, folder or cached hub id [default: clipseg]",
        json_schema_extra=_panel("Words", metavar="MODEL"),
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="score a pixel (CLIPSeg) or a box (detector) needs to count [default: 0.4 for "
        "CLIPSeg, 0.3 for detectors]", json_schema_extra=_panel("Words"),
    )
    auto: AutoMask | None = Field(
        None, description="a mask that needs no model: watermark (what a folder of images shares; with --images), "
        "text (lines of letters) or damage (scratches, cracks)", json_schema_extra=_panel("Rules"),
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="rule settings as KEY=VALUE, repeatable (damage: width, contrast, min_length, "
        "polarity; text: stroke, contrast, min_height, max_height, min_chars; watermark: sensitivity, floor, close, "
        "min_area; see docs/masks.md)", json_schema_extra=_panel("Rules", flag="--opt", metavar="KEY=VALUE"),
    )
    fill_holes: bool = Field(False, description="fill the holes inside the mask", json_schema_extra=_panel("Refine"))
    largest: bool = Field(False, description="keep only the largest region", json_schema_extra=_panel("Refine"))
    shrink: int = Field(0, ge=0, le=512, description="erode the mask by PX (before --grow: shrink then grow removes specks)",
                        json_schema_extra=_panel("Refine"))
    grow: int = Field(0, ge=0, le=512, description="dilate the mask by PX", json_schema_extra=_panel("Refine"))
    invert: bool = Field(False, description="swap fill and keep", json_schema_extra=_panel("Refine"))
    feather: float = Field(
        0.0, ge=0, le=512, description="soften the edge by PX on both sides: grey levels (a soft mask for inpaint --soft)",
        json_schema_extra=_panel("Refine"),
    )
    device: Device = Field(Device.auto, description="where mask models run", json_schema_extra=_panel("Model"))

    @field_validator("points", "negative_points", mode="before")
    @classmethod
    def _parse_points(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [_coordinates(item, 2, "a point") for item in value]
        return value

    @field_validator("boxes", mode="before")
    @classmethod
    def _parse_boxes(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [_coordinates(item, 4, "a box") for item in value]
        return value

    @field_validator("text", mode="before")
    @classmethod
    def _split_text(cls, value: Any) -> Any:
        return split_joined(value)

    _options_from_pairs = field_validator("options", mode="before")(options_from_pairs)

    @model_validator(mode="after")
    def _one_way(self) -> MaskRequest:
        ways = [name for name, given in (
            ("--point/--box", bool(self.points or self.boxes or self.negative_points)), ("--text", bool(self.text)),
            ("--auto", self.auto is not None),
        ) if given]
        if not ways:
            raise ValueError("say where the mask is: --point X,Y or --box X0,Y0,X1,Y1 (Segment Anything), --text WORDS, "
                             "or --auto watermark|text|damage")
        if len(ways) > 1:
            raise ValueError(f"give one way to make the mask, not {' and '.join(ways)}")
        if self.negative_points and not (self.points or self.boxes):
            raise ValueError("--negative-point says where the object is not: add a --point on it (or a --box around it)")
        if self.points and len(self.boxes) > 1:
            raise ValueError("points go with at most one --box: each of several boxes makes a mask of its own")
        if self.options and self.auto is None:
            raise ValueError("--opt sets a rule's settings: it goes with --auto")
        if self.options:
            from canvaslab.masks import rule_options

            settings = rule_options(self.auto.value)  # type: ignore[union-attr]
            try:
                settings.model_validate(self.options)
            except ValidationError as exc:
                known = ", ".join(settings.model_fields)
                raise ValueError(f"--opt for --auto {self.auto.value} (settings: {known}): "  # type: ignore[union-attr]
                                 f"{describe_validation_error(exc)}") from None
        if self.threshold is not None and not self.text:
            raise ValueError("--threshold applies to --text")
        if self.text_model is not None and not self.text:
            raise ValueError("--text-model reads --text: give --text WORDS")
        if self.auto is not None and self.model is not None:
            raise ValueError("--auto needs no model: leave --model out")
        if self.multimask and self.auto is not None:
            raise ValueError("--multimask picks among SAM's proposals: it does not apply to --auto")
        for x0, y0, x1, y1 in self.boxes:
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"a box is X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1, got {_shown_box((x0, y0, x1, y1))}")
        return self

    def refinement(self) -> dict[str, Any]:
        """The refine settings (canvaslab.masks.ops.Refinement's fields)."""
        return {name: getattr(self, name) for name in ("fill_holes", "largest", "shrink", "grow", "invert", "feather")}


def _shown_box(box: tuple[float, ...]) -> str:
    return ",".join(str(_number(v)) for v in box)


def field_extra(field: Any) -> dict[str, Any]:
    """A field's canvaslab extras (panel, flag, metavar)."""
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def flag_name(name: str, field: Any) -> str:
    """The CLI flag of a request field: its `flag` extra, or --field-name."""
    return str(field_extra(field).get("flag", "--" + name.replace("_", "-")))


def _shown(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    return "none" if value in (None, [], {}) else str(value)


REQUESTS: dict[str, type[TaskRequest]] = {
    "inpaint": InpaintRequest, "outpaint": OutpaintRequest, "edit": EditRequest, "generate": GenerateRequest,
}
# Every task whose outputs carry a recipe `canvaslab replay` reruns: the image runners' tasks above (which
# the batch runner, grids and the server also take) and the tool tasks (`canvaslab texture seamless`).
RECIPE_TASKS: dict[str, type[TaskRequest]] = {**REQUESTS, "texture": TextureRequest}


def parse_lora(spec: str) -> tuple[str, float]:
    """"style.safetensors:0.7" -> ("style.safetensors", 0.7); no weight means 1.0.

    Only a trailing ":<number>" is a weight, so Windows drive letters and hub ids stay intact.
    """
    path, sep, weight = spec.rpartition(":")
    if sep and path:
        try:
            return path, float(weight)
        except ValueError:
            pass
    return spec, 1.0


def _number(value: float) -> object:
    return int(value) if float(value).is_integer() else value


def parse_key_values(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """["patch_size=9", "name=x"] -> {"patch_size": 9, "name": "x"} (values parsed as JSON when they are)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = str(pair).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def request_from(kind: type[TaskRequest], request: TaskRequest | None, params: dict[str, Any]) -> Any:
    """The API's two ways of passing parameters: a ready request, or keywords (not both)."""
    if request is None:
        return build_request(kind, params)
    if params:
        raise InputError("pass either request= or keyword parameters, not both")
    if not isinstance(request, kind):
        raise InputError(f"request must be a {kind.__name__}, got {type(request).__name__}")
    return request


def build_request(kind: type[TaskRequest], values: dict[str, Any]) -> TaskRequest:
    """Validate `values` into a request, turning pydantic's report into one clear line."""
    try:
        return kind.model_validate(values)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "request"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown parameter {field!r}"
    if not err["loc"]:  # a rule over several fields: its message names them, the input would be the whole request
        return message
    return f"invalid {field}={err.get('input')!r}: {message}"
