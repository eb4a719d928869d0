"""Training configuration: one pydantic model per YAML section, `key=value` overrides, validation.

A config file is YAML whose sections mirror `TrainConfig`'s fields (see `configs/train/*.yaml`);
every key can be overridden on the command line with dotted paths (``train.max_steps=200``,
``masks.boxes=2``, ``validation.prompts=[a cat, a dog]``): the value is parsed as YAML, so numbers,
booleans, lists and null work. Unknown keys are refused with the list of allowed ones, so a typo
never silently trains with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from canvaslab.errors import InputError

Objective = Literal["inpaint", "edit"]
OBJECTIVES = ("inpaint", "edit", "unified")


def _yaml_no(value: Any) -> Any:
    # YAML 1.1 (PyYAML) reads a bare `no` as false, in files and in `train.mixed_precision=no` alike;
    # here false can only mean "no". A bare `yes` (true) stays an error.
    return "no" if value is False else value


MixedPrecision = Annotated[Literal["no", "fp16", "bf16"], BeforeValidator(_yaml_no)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    base: str = Field("sd15", description="base model: alias, hub id (from the local cache), diffusers folder or single file")
    config: str | None = Field(None, description="diffusers config (alias/hub id/folder) for a single-file base")
    cache_dir: str | None = Field(None, description="Hugging Face cache folder (default: HF_HOME)")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="override the scheduler's prediction type (default: the base model's)"
    )
    frames: int | None = Field(
        None, ge=1, le=64, description="edit: conditioning images per sample (1 = InstructPix2Pix; default: the dataset's)"
    )


class DataSection(_Section):
    path: str = Field(..., description="dataset: folder, metadata.jsonl, parquet file/folder/glob, or a saved `datasets` dataset")
    columns: dict[str, str] = Field(default_factory=dict, description="rename logical columns (image, caption, mask, input, frames)")
    resolution: int = Field(512, ge=64, le=4096, description="training side length; buckets keep about resolution^2 pixels")
    buckets: bool = Field(True, description="aspect-ratio bucketing (off: every image is cropped to a square)")
    bucket_step: int = Field(64, ge=8, description="bucket sides are multiples of this (a multiple of 8)")
    max_ratio: float = Field(2.0, ge=1.0, le=4.0, description="most elongated bucket allowed")
    random_crop: bool = Field(False, description="random instead of centre crops (off when caching latents)")
    random_flip: bool = Field(False, description="random horizontal flips, the same for every image of a sample")
    caption_dropout: float = Field(0.0, ge=0, le=1, description="inpaint: probability of training with an empty prompt")
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes")

    @field_validator("bucket_step")
    @classmethod
    def _latent_multiple(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"bucket_step must be a multiple of 8 (the VAE's block), got {value}")
        return value


class MasksSection(_Section):
    """Inpainting masks: the user's own masks (when the dataset has them) or a random mixture."""

    user_masks: float = Field(1.0, ge=0, le=1, description="probability of using an image's own mask when it has one")
    mixture: dict[str, Any] = Field(
        default_factory=lambda: {"boxes": 1, "glide_boxes": 1, "blurred_noise": 1, "strokes-medium": 1, "cloud": 1,
                                 "edge_band": 1},
        description="generator -> weight (or {weight, params...}), see data/masks.py",
    )
    p_everything: float = Field(0.1, ge=0, le=1, description="probability of masking everything (unconditional)")


class LoraSection(_Section):
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], description="UNet module names to adapt"
    )
    text_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])


class EmaSection(_Section):
    enabled: bool = False
    decay: float = Field(0.9999, gt=0, lt=1)
    warmup: bool = Field(True, description="ramp the decay up over the first steps (diffusers' EMAModel)")


class TrainSection(_Section):
    mode: Literal["lora", "partial", "full"] = Field(
        "lora", description="lora: adapters (peft); partial: attention projections only; full: the whole UNet"
    )
    lora: LoraSection = Field(default_factory=LoraSection)
    text_encoder: bool = Field(False, description="train the text encoder(s) too (LoRA in lora mode, else fully)")
    learning_rate: float = Field(1e-4, gt=0)
    text_encoder_lr: float | None = Field(None, gt=0, description="default: learning_rate")
    scale_lr: bool = Field(False, description="multiply the learning rate by batch x accumulation x processes")
    batch_size: int = Field(1, ge=1, description="per process")
    gradient_accumulation: int = Field(1, ge=1)
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant"
    warmup_steps: int = Field(0, ge=0)
    optimizer: Literal["adamw", "adamw8bit"] = Field("adamw", description="adamw8bit needs bitsandbytes")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(1e-2, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: MixedPrecision = Field("no", description="fp16 needs a GPU; bf16 works on CPU too")
    gradient_checkpointing: bool = False
    allow_tf32: bool = Field(True, description="TF32 matmuls on Ampere+ GPUs")
    ema: EmaSection = Field(default_factory=EmaSection)
    snr_gamma: float | None = Field(None, gt=0, description="min-SNR weighting (5.0 is the paper's value)")
    noise_offset: float = Field(0.0, ge=0, le=1)
    conditioning_dropout: float = Field(
        0.05, ge=0, le=1 / 3, description="edit: probability of each of text-only, image-only and both dropped"
    )
    seed: int = Field(0, ge=0)


class CacheSection(_Section):
    latents: bool = Field(False, description="encode images once (frozen VAE, no random crops/flips)")
    text: bool = Field(False, description="encode captions once (frozen text encoder)")
    dir: str | None = Field(None, description="default: OUTPUT/cache")


class ValidationSection(_Section):
    every: int = Field(0, ge=0, description="optimizer steps between validations (0 = only at the end, if inputs exist)")
    prompts: list[str] = Field(default_factory=list, description="prompts/instructions (default: the first samples')")
    images: list[str] = Field(default_factory=list, description="input images (default: the first samples')")
    masks: list[str] = Field(default_factory=list, description="inpaint: masks for the images (default: generated)")
    count: int = Field(4, ge=0, le=64, description="samples from the dataset when no images are given")
    steps: int = Field(20, ge=1, le=500)
    guidance_scale: float = Field(7.5, ge=0)
    image_guidance_scale: float = Field(1.5, ge=1)
    seed: int = Field(0, ge=0)


class CheckpointSection(_Section):
    every: int = Field(500, ge=1, description="optimizer steps between checkpoints")
    keep: int = Field(3, ge=1, description="most recent checkpoints kept")


class LogSection(_Section):
    every: int = Field(10, ge=1, description="steps between log lines")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    project: str = "canvaslab"
    samples: bool = Field(False, description="write each process's sample keys in order to OUTPUT/logs/samples_rankN.txt")


class PriorSection(_Section):
    """DreamBooth prior preservation: also train on images of the class the base model makes, so
    fine-tuning on a few images of one subject does not make the model forget the class."""

    enabled: bool = False
    class_prompt: str = Field("", description="prompt of the class images, e.g. 'a photo of a mural'")
    class_dir: str | None = Field(None, description="class images (default: OUTPUT/class_images); missing ones are generated")
    count: int = Field(100, ge=1, le=100_000, description="class images wanted; the base model generates the missing ones")
    weight: float = Field(1.0, ge=0, description="weight of the class images' loss")
    steps: int = Field(25, ge=1, le=500, description="sampling steps when generating class images")
    guidance_scale: float = Field(7.5, ge=0)


class TrainConfig(_Section):
    objective: Objective = "inpaint"
    output: str = Field("runs/train", description="run folder: checkpoints, validation grids, logs, export")
    resume: str | None = Field(None, description="'latest' or a checkpoint folder")
    export: Literal["auto", "lora", "diffusers", "none"] = Field(
        "auto", description="final export: auto = LoRA file in lora mode, diffusers folder otherwise"
    )
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    masks: MasksSection = Field(default_factory=MasksSection)
    train: TrainSection = Field(default_factory=TrainSection)
    cache: CacheSection = Field(default_factory=CacheSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)
    prior: PriorSection = Field(default_factory=PriorSection)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.cache.latents and (self.data.random_crop or self.data.random_flip):
            raise ValueError(
                "cache.latents stores one encoding per image, so it cannot follow random crops or flips; "
                "set data.random_crop=false and data.random_flip=false, or cache.latents=false"
            )
        if self.cache.text and self.train.text_encoder:
            raise ValueError("cache.text needs a frozen text encoder; set train.text_encoder=false or cache.text=false")
        if self.prior.enabled and self.objective != "inpaint":
            raise ValueError("prior preservation (DreamBooth) is for inpainting; set prior.enabled=false")
        if self.prior.enabled and not self.prior.class_prompt.strip():
            raise ValueError("prior.enabled needs prior.class_prompt, e.g. 'a photo of a mural'")
        if self.objective == "inpaint" and self.model.frames is not None:
            raise ValueError("model.frames is for edit training; inpainting models always take 9 channels")
        if self.validation.masks and len(self.validation.masks) != len(self.validation.images):
            raise ValueError(f"validation.masks has {len(self.validation.masks)} entries for "
                             f"{len(self.validation.images)} validation.images; give one mask per image")
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output)


# -- reading ---------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(f"override {text!r} is not KEY=VALUE (e.g. train.max_steps=200)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise InputError(f"override {text!r}: the value is not valid YAML ({_first_line(error)})") from None
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `data[path[0]][path[1]]... = value`, creating sections as needed."""
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is a value, not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(f"config {str(path)!r} is not valid YAML: {_first_line(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config {str(path)!r} must be a mapping of sections (model:, data:, train: ...)")
    return data


def load_config(
    path: str | Path | None, overrides: list[str] = (), *, objective: str | None = None
) -> Any:
    """Read `path` (YAML), apply `key=value` overrides, set the objective, validate.

    Relative paths in the file (data.path, output, validation images...) stay relative to the
    working directory, as users type them on the command line.
    """
    data = read_yaml(path) if path is not None else {}
    if objective is not None:
        if data.get("objective", objective) != objective:
            raise InputError(
                f"config {str(path)!r} is for objective {data['objective']!r}; run `canvaslab train {data['objective']}`"
            )
        data["objective"] = objective
    for text in overrides:
        apply_override(data, *parse_override(text))
    return validate_config(data)


def config_model(objective: Any) -> type[BaseModel]:
    """The config class of an objective: TrainConfig (inpaint, edit) or UnifiedTrainConfig."""
    if objective == "unified":
        from canvaslab.train.unified_config import UnifiedTrainConfig

        return UnifiedTrainConfig
    if objective not in (None, "inpaint", "edit"):
        raise InputError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    return TrainConfig


def validate_config(data: dict[str, Any]) -> Any:
    model = config_model(data.get("objective"))
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InputError(describe_error(error, model)) from None


def describe_error(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The first validation problem as one line: where, what, and what is allowed."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(first["loc"][:-1], model or TrainConfig)
        return f"unknown config key {where!r}; allowed here: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"config key {where!r} is required"
    message = first["msg"].removeprefix("Value error, ")
    return f"config {where}: {message}" if where != "config" else f"config: {message}"


def _allowed_keys(loc: tuple, model: type[BaseModel]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return sorted(model.model_fields)
        model = annotation
    return sorted(model.model_fields)


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what `--print-config` shows and each run saves)."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
