"""What every model family states about itself: the contract of one module in `families/`.

A family is a class with class attributes and classmethods only (no instances, no torch at import):
how a folder or a single file is recognised as one of its models, what each model kind of it can do
(which diffusers pipeline serves inpaint / txt2img / edit), the numbers the tasks need (latent size
multiple, native resolution, default steps and guidance, dtype on a GPU), which schedulers make sense
(noise-prediction families take every name, flow-matching families only flow ones), what
`--guidance-scale` means for it, and how a request's generic fields become its pipeline's arguments.

`models.py` keeps what is the same for every family (sources, folder checks, caching, devices).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from canvaslab.errors import InputError, ModelNotAvailableError

ModelKind = Literal["txt2img", "inpaint", "edit"]  # what a denoiser was trained for
Task = Literal["inpaint", "txt2img", "edit"]
SchedulerKind = Literal["ddpm", "flow"]
# What --guidance-scale drives: classifier-free guidance (a second, negative pass), a guidance value the
# model was distilled to take as an input (one pass; FLUX.1 dev/Fill/Kontext), "true-cfg" (CFG through
# the pipeline's `true_cfg_scale`, on only with a negative prompt: Qwen-Image), or nothing (distilled).
GuidanceKind = Literal["cfg", "distilled", "true-cfg", "none"]

KIND_WORDS = {"txt2img": "a text-to-image", "inpaint": "an inpainting", "edit": "an image-editing"}


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a well-known hub model."""

    name: str
    hub_id: str
    family: str
    kind: ModelKind
    native_resolution: int
    description: str


@dataclass(frozen=True)
class ModelInfo:
    """What a model is, as far as choosing and running a pipeline goes."""

    family: str
    kind: ModelKind
    in_channels: int  # the denoiser's input channels (UNet, or a transformer's patch embedding)
    prediction_type: str  # epsilon / v_prediction (UNet families) or flow (flow matching)
    native_resolution: int
    condition_frames: int = 0  # edit models: images concatenated to the latents (1 = InstructPix2Pix)
    variant: str = ""  # within a family: "fill", "kontext", "schnell", "edit", "distilled", ...


@dataclass(frozen=True)
class CheckpointHeader:
    """What a single-file checkpoint says about itself, read without loading its weights."""

    shapes: Mapping[str, tuple[int, ...]]
    metadata: Mapping[str, str]
    global_step: int | None = None


class Family:
    """One model family. Subclasses set the class attributes and override the classmethods they need."""

    name: ClassVar[str]
    label: ClassVar[str]
    denoiser: ClassVar[str] = "unet"  # the pipeline component that denoises: "unet" or "transformer"
    multiple: ClassVar[int] = 8  # image sides the pipeline accepts: VAE factor x patch size
    native_resolution: ClassVar[int] = 512
    scheduler_kind: ClassVar[SchedulerKind] = "ddpm"
    guidance: ClassVar[GuidanceKind] = "cfg"
    default_steps: ClassVar[int] = 20
    default_guidance: ClassVar[float] = 7.5
    gpu_dtype: ClassVar[str] = "fp16"  # "auto" on a GPU; bf16 for families whose activations overflow fp16
    pipeline_upcasts_vae: ClassVar[bool] = False  # the pipeline decodes in fp32 itself when the VAE asks
    works_at_own_size: ClassVar[bool] = False  # some pipelines answer at a size of their choosing: scale back
    # (kind, task) -> diffusers pipeline class name
    pipelines: ClassVar[Mapping[tuple[ModelKind, Task], str]] = {}
    aliases: ClassVar[tuple[ModelAlias, ...]] = ()
    # model_index.json `_class_name`s that belong to this family, with the kind and variant each means
    index_classes: ClassVar[Mapping[str, tuple[ModelKind, str]]] = {}
    # components whose absence from a folder is fine (never loaded, or optional)
    optional_components: ClassVar[frozenset[str]] = frozenset({"safety_checker", "feature_extractor", "image_encoder"})
    # ControlNet (control.py): (kind, task) -> the pipeline running it with ControlNets; the same for
    # ControlNet Union models; the ControlNet classes that fit; whether A1111's control modes exist (a
    # guess mode); how the `inpaint` preprocessor marks the hole: "minus-one" (SD 1.5's inpaint ControlNet),
    # "black" (Union ProMax and the like) or "mask" (the pipeline takes the mask: SD3/Qwen inpaint ControlNets)
    control_pipelines: ClassVar[Mapping[tuple[ModelKind, Task], str]] = {}
    union_pipelines: ClassVar[Mapping[tuple[ModelKind, Task], str]] = {}
    controlnet_classes: ClassVar[tuple[str, ...]] = ()
    control_modes: ClassVar[bool] = False
    control_inpaint: ClassVar[str] = "black"

    # -- recognising models ------------------------------------------------------------------------

    @classmethod
    def claims_folder(cls, folder: Path, index: Mapping[str, Any]) -> bool:
        """Whether a diffusers folder (with this model_index.json) is one of ours."""
        return index.get("_class_name") in cls.index_classes

    @classmethod
    def claims_checkpoint(cls, header: CheckpointHeader) -> bool:
        """Whether a single file (its tensor names and shapes) is one of ours."""
        return False

    @classmethod
    def detect_folder(cls, folder: Path, index: Mapping[str, Any], name: str) -> ModelInfo:
        raise NotImplementedError

    @classmethod
    def detect_checkpoint(cls, path: Path, header: CheckpointHeader, config: Path | None,
                          config_from_user: bool) -> ModelInfo:
        raise InputError(f"{path}: single {cls.label} files need a base folder; pass config=<a diffusers folder of the model>")

    @classmethod
    def needs_base_message(cls, path: Path) -> str:
        return (f"{path} is a {cls.label} {cls.denoiser} alone: give the folder of a complete {cls.label} model for "
                "its text encoders and VAE with --opt base=FOLDER (Python: options={'base': FOLDER})")

    @classmethod
    def checkpoint_kind(cls, header: CheckpointHeader, path: Path) -> ModelKind:
        return "txt2img"

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def load_folder(cls, pipeline: type, location: str, kwargs: dict[str, Any]) -> Any:
        """A diffusers folder (or hub id) as `pipeline`; families override this for components that need help."""
        return pipeline.from_pretrained(location, **kwargs)

    @classmethod
    def load_single_file(cls, pipeline: type, path: Path, config: str, info: ModelInfo, kwargs: dict[str, Any]) -> Any:
        raise InputError(f"{path}: canvaslab cannot load single {cls.label} files")

    # -- running them ------------------------------------------------------------------------------

    @classmethod
    def pipeline_class_name(cls, info: ModelInfo, task: Task, *, label: str = "the model") -> str:
        """The diffusers pipeline class that runs `task` with a model described by `info`."""
        name = cls.pipelines.get((info.kind, task))
        if name is None:
            can = sorted({t for (kind, t) in cls.pipelines if kind == info.kind})
            raise InputError(
                f"{label} is {KIND_WORDS[info.kind]} {cls.label} model and cannot run task {task!r} "
                f"(it runs: {', '.join(can) or 'nothing canvaslab drives'}); pick a model made for it"
                + (f" (e.g. {cls.suggest(task)})" if cls.suggest(task) else "")
            )
        return name

    @classmethod
    def control_pipeline_class_name(cls, info: ModelInfo, task: Task, *, union: bool = False,
                                    label: str = "the model") -> str:
        """The diffusers pipeline that runs `task` with ControlNets (`union`: a ControlNet Union model)."""
        table = cls.union_pipelines if union else cls.control_pipelines
        name = table.get((info.kind, task))
        if name is None:
            can = sorted({t for (kind, t) in table if kind == info.kind})
            what = "ControlNet Union models" if union else "ControlNets"
            raise InputError(
                f"{label} is {KIND_WORDS[info.kind]} {cls.label} model, which runs {what} for "
                f"{', '.join(can) or 'no task'} in canvaslab, not {task!r}; leave out --control for it"
            )
        return name

    @classmethod
    def suggest(cls, task: Task) -> str | None:
        """An alias of this family that runs `task`, for error messages."""
        wanted = {"txt2img": ("txt2img",), "inpaint": ("inpaint", "txt2img"), "edit": ("edit",)}[task]
        for kind in wanted:
            for alias in cls.aliases:
                if alias.kind == kind and (kind, task) in cls.pipelines:
                    return alias.name
        return None

    @classmethod
    def defaults(cls, info: ModelInfo) -> tuple[int, float]:
        """(steps, guidance) a model of this family was made for: what a request without them gets."""
        return cls.default_steps, cls.default_guidance

    @classmethod
    def guidance_arguments(cls, info: ModelInfo, guidance_scale: float, negative_prompt: str, call: set[str],
                           options: Mapping[str, Any]) -> dict[str, Any]:
        """`--guidance-scale` and `--negative-prompt` as this family's pipeline takes them (`call`: its
        __call__ parameter names; `options`: the engine options, e.g. true_cfg_scale)."""
        args: dict[str, Any] = {}
        if "guidance_scale" in call and cls.guidance in ("cfg", "distilled"):
            args["guidance_scale"] = guidance_scale
        if "negative_prompt" in call:
            args["negative_prompt"] = negative_prompt or None
        return args

    @classmethod
    def call_arguments(cls, info: ModelInfo, task: str, width: int, height: int, call: set[str]) -> dict[str, Any]:
        """Family-specific pipeline arguments for a call at `width` x `height` (beyond the shared ones)."""
        return {}

    @classmethod
    def valid_scheduler(cls, scheduler_class: str) -> bool:
        """Whether a diffusers scheduler class fits this family's sampling (noise vs flow prediction)."""
        flow = scheduler_class.startswith("FlowMatch")
        return flow if cls.scheduler_kind == "flow" else not flow


# -- config files --------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def config_file(folder: Path, *parts: str) -> dict[str, Any]:
    """A component's JSON config ({} when absent); an unreadable one is a one-line ModelNotAvailableError."""
    path = folder.joinpath(*parts)
    try:
        return read_json(path)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"config {path} could not be read: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """The first line of a library's error, for a one-line message (the full one stays in __cause__)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def vae_factor(folder: Path) -> int:
    """How much the folder's VAE downsamples (2 per level after the first), 8 when it does not say."""
    vae = config_file(folder, "vae", "config.json")
    return 2 ** (len(vae.get("block_out_channels", (0, 0, 0, 0))) - 1)
