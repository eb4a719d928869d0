"""The one interface every inpainting back end implements.

An engine receives a prepared request — an RGB uint8 array, a boolean mask (True = fill) and its
own validated options — and returns an RGB array of the same size. It knows nothing about files,
CLI flags or HTTP; tasks do the geometry (align, crop, expand) and the final composite.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from canvaslab.errors import EngineError, InputError


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit: a model steering the denoiser with a control image (edges, depth, the masked input).

    `image` is the control image at the size of the image the engine gets (tasks carry it through the
    same crops, scaling and alignment), before the preprocessor; None means the engine's own input image.
    """

    model: str  # ControlNet folder, hub id or file
    weight: float = 1.0  # scale of the ControlNet's residuals (0: no effect)
    start: float = 0.0  # fraction of the denoising steps where it starts / stops acting
    end: float = 1.0
    mode: str = "balanced"  # balanced | prompt (my prompt is more important) | control (ControlNet is more important)
    preprocessor: str = "none"
    threshold_a: float | None = None  # the preprocessor's own settings (A1111's names), None: its defaults
    threshold_b: float | None = None
    source: str | None = None  # where `image` came from (a path), for messages; None: the input image
    image: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ImagePrompt:
    """One IP-Adapter: reference images whose look the result should take, through an image encoder."""

    model: str  # the adapter's weights file (or hub file)
    weight: float = 1.0
    encoder: str | None = None  # the CLIP vision encoder's folder; None: `image_encoder/` beside the weights
    sources: tuple[str, ...] = ()  # the reference images' paths, for messages
    images: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Generation:
    """What a generative engine is asked to paint; weight-free engines ignore it.

    Tasks build it from the request, so engines never see CLI flags or request models.
    """

    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None  # None: the engine's default model
    steps: int | None = None  # None: the model's own default (engines resolve it)
    guidance_scale: float | None = None
    strength: float = 1.0
    scheduler: str | None = None  # None: the model's own scheduler
    loras: tuple[tuple[str, float], ...] = ()  # (path or hub id, weight)
    masked_content: str = "original"  # original | fill | latent-noise | latent-nothing (matters when strength < 1)
    mask_weight: float = 1.0  # inpainting UNets: how much of the masked area is hidden from the conditioning
    dtype: str = "auto"
    device: str = "auto"
    offload: str | None = None
    attention_slicing: bool = False
    vae_tiling: bool = False
    cache_dir: str | None = None
    local_files_only: bool | None = None
    tiling: str = "none"  # none | x | y | both: the output wraps around (tiles) along these axes
    # Soft inpainting: HxW float32 in [0, 1] at the size of the mask the engine gets, how much of `strength`
    # each pixel may use (0 wherever the mask is False); None: the mask is binary. Set by the task per call.
    strength_map: np.ndarray | None = field(default=None, compare=False, repr=False)
    control: tuple[ControlUnit, ...] = ()  # ControlNet units (engines/diffusion/control.py)
    ip_adapters: tuple[ImagePrompt, ...] = ()  # IP-Adapter image prompts (engines/diffusion/ip_adapter.py)


class EngineOptions(BaseModel):
    """Engine-specific options; subclasses add fields. Unknown keys are rejected, never dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Engine(ABC):
    """Base class: subclasses declare their capabilities as class attributes and implement `inpaint`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    pad_multiple: ClassVar[int] = 1  # sizes the engine needs (8 for latent diffusion)
    needs_context: ClassVar[bool] = True  # a mask covering everything is an error
    deterministic: ClassVar[bool] = True  # same inputs + seed -> same pixels (replay checks this)
    uses_prompt: ClassVar[bool] = False

    def parse_options(self, options: dict[str, Any] | EngineOptions | None) -> EngineOptions:
        """Validate engine options, turning pydantic's report into one line naming key and value."""
        if isinstance(options, self.Options):
            return options
        try:
            return self.Options.model_validate(dict(options or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "options"
            allowed = ", ".join(self.Options.model_fields) or "none"
            raise InputError(
                f"engine {self.name!r} option {key}: {err['msg']} (got {err.get('input')!r}; options: {allowed})"
            ) from None

    def check_mask(self, mask: np.ndarray) -> None:
        if self.needs_context and mask.all():
            raise EngineError(
                f"the mask covers the whole image and engine {self.name!r} fills from the known pixels; "
                "leave some of the image unmasked or use a generative engine"
            )

    def preferred_size(self, generation: Generation, options: EngineOptions) -> int | None:
        """Long side the engine works best at (a model's native resolution); None: any size is fine."""
        return None

    def size_multiple(self, generation: Generation, options: EngineOptions) -> int:
        """Image sides the engine needs to be multiples of for this request (the diffusion engine asks the
        model's family: 8 for Stable Diffusion, 16 for the transformer families)."""
        return self.pad_multiple

    def describe_sampling(self, generation: Generation, options: dict[str, Any] | None = None) -> dict[str, object]:
        """Settings for the A1111 `parameters` line (Steps, Sampler, CFG scale, ...); none by default."""
        return {}

    @abstractmethod
    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int, options: EngineOptions, generation: Generation
    ) -> np.ndarray:
        """Return an HxWx3 uint8 image; pixels inside `mask` are filled, the rest may be anything."""
