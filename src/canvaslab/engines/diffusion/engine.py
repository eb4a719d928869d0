"""The diffusion engine: inpainting through diffusers pipelines, for every family in `families/`.

Any checkpoint of a known family works: an inpainting model (SD's 9-channel UNet, FLUX.1 Fill) runs its
inpainting pipeline as trained; a plain text-to-image model runs the family's inpainting pipeline, which
blends the known region's latents back at every step (what A1111 does for non-inpainting models).
Tasks hand over an image already aligned to the family's multiple (8 for SD, 16 for the transformer
families) and composite the result, so pixels outside the mask stay bit-identical even though the VAE
round trip changes them. `run_pipeline` turns the request's generic fields into the family's pipeline
arguments (what --guidance-scale means, its default steps), the same for inpaint, generate and edit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from canvaslab.core.notices import notice
from canvaslab.core.progress import listening, report_progress
from canvaslab.errors import CanvaslabError, EngineError, InputError
from canvaslab.engines.base import Engine, EngineOptions, Generation
from canvaslab.engines.diffusion.control import without_silent_units
from canvaslab.engines.diffusion.schedulers import make_scheduler, sampler_arguments, scheduler_spec
from canvaslab.engines.diffusion.tiling import with_tiling

DEFAULT_MODEL = "sd15-inpaint"


class DiffusionOptions(EngineOptions):
    config: str | None = Field(
        None, description="diffusers folder or hub id holding the configs a single .safetensors/.ckpt file needs"
    )
    base: str | None = Field(
        None, description="a transformer-only .safetensors/.gguf file (FLUX, SD3, ...): the folder of a complete "
        "model of its family, for the text encoders and VAE"
    )
    quantize: Literal["bnb-4bit", "bnb-8bit", "torchao-int8"] | None = Field(
        None, description="quantise the UNet/transformer while loading (CUDA only; elsewhere use a GGUF file)"
    )
    true_cfg_scale: float | None = Field(
        None, ge=1, le=50, description="FLUX.1: real classifier-free guidance on top of the distilled one, so "
        "--negative-prompt applies (twice the cost per step)"
    )
    fill_model: str | None = Field(
        None, description="--masked-content lama|migan: the eraser's model file [default: found in torch hub's cache, "
        "where IOPaint keeps big-lama.pt and migan_traced.pt]"
    )
    eta: float | None = Field(
        None, ge=0, le=1, description="noise added back at each step by ddim/ddim-trailing (eta) and tcd (gamma): "
        "0 is deterministic sampling, 1 fully stochastic [default: 0.3 for tcd, 0 for ddim]"
    )


def source_config(options: EngineOptions) -> str | None:
    """The folder a single file needs: `base` for a transformer alone, `config` for an SD checkpoint."""
    return getattr(options, "base", None) or getattr(options, "config", None)


class DiffusionEngine(Engine):
    name: ClassVar[str] = "diffusion"
    description: ClassVar[str] = (
        "Stable Diffusion 1.x/2.x/SDXL via diffusers (--model): inpainting checkpoints or any plain one"
    )
    Options: ClassVar[type[EngineOptions]] = DiffusionOptions
    pad_multiple: ClassVar[int] = 8  # SD's VAE downsamples by 8; size_multiple asks the model's family
    needs_context: ClassVar[bool] = False  # it can paint a whole canvas from the prompt
    uses_prompt: ClassVar[bool] = True

    def preferred_size(self, generation: Generation, options: EngineOptions) -> int | None:
        return native_resolution(generation, config=source_config(options), default_model=DEFAULT_MODEL)

    def size_multiple(self, generation: Generation, options: EngineOptions) -> int:
        info = model_info(generation, source_config(options), DEFAULT_MODEL)
        from canvaslab.engines.diffusion.families import family

        return family(info.family).multiple

    def describe_sampling(self, generation: Generation, options: dict[str, Any] | None = None) -> dict[str, object]:
        steps, guidance, scheduler_kind = generation.steps, generation.guidance_scale, "ddpm"
        try:
            config = (options or {}).get("base") or (options or {}).get("config")
            info = model_info(generation, config, DEFAULT_MODEL)
            from canvaslab.engines.diffusion.families import family

            steps, guidance = resolved_sampling(generation, info)
            scheduler_kind = family(info.family).scheduler_kind
        except CanvaslabError:  # a model not on this machine: the request's own values
            pass
        if generation.scheduler:
            sampler = scheduler_spec(generation.scheduler, scheduler_kind).a1111_name
        else:
            sampler = "Euler" if scheduler_kind == "flow" else "model default"
        return {
            "Steps": steps,
            "Sampler": sampler,
            "CFG scale": guidance,
            "Denoising strength": generation.strength,
            "Model": generation.model or DEFAULT_MODEL,
            **({"Masked content": generation.masked_content} if generation.masked_content != "original" else {}),
            **({"Inpainting conditioning mask strength": generation.mask_weight} if generation.mask_weight != 1 else {}),
        }

    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int, options: EngineOptions, generation: Generation
    ) -> np.ndarray:
        from PIL import Image

        config = source_config(options)
        generation = without_silent_units(generation)
        pipe = prepared_pipeline(generation, "inpaint", config=config, default_model=DEFAULT_MODEL,
                                 quantize=getattr(options, "quantize", None))
        info = model_info(generation, config, DEFAULT_MODEL)
        height, width = mask.shape
        fill_model = getattr(options, "fill_model", None)
        if fill_model is not None and generation.masked_content not in LEARNED_FILLS:
            raise InputError("--opt fill_model names the model of --masked-content lama or migan: give one of those, "
                             "or leave fill_model out")
        start = (masked_start(pipe, image, mask, generation.masked_content, seed, fill_model=fill_model,
                              device=generation.device) if generation.strength < 1 else image)
        if generation.masked_content != "original" and generation.strength >= 1:
            notice("--masked-content only matters with --strength < 1: at strength 1 the masked area starts from noise")
        arguments = dict(
            prompt=generation.prompt,
            image=Image.fromarray(start),
            mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
            **_conditioning(pipe, start, mask, generation.mask_weight),
            height=height,
            width=width,
            strength=generation.strength,
        )
        arguments.update(conditioning_arguments(pipe, info, "inpaint", generation, image, mask, seed))
        if generation.strength_map is not None:  # --soft: the latents follow the mask's grey levels
            from canvaslab.engines.diffusion.soft import soft_callback

            if (pinning := soft_callback(pipe, image, generation.strength_map, seed=seed)) is not None:
                arguments["callback_on_step_end"] = pinning
        return run_pipeline(pipe, info, generation, "inpaint", arguments, options=options, seed=seed, size=(height, width))


def model_info(generation: Generation, config: str | None, default_model: str) -> Any:
    """What the request's model is (family, kind, ...), from its configs; remembered until its files change."""
    from canvaslab.engines.diffusion.models import resolve_and_detect

    _, info = resolve_and_detect(
        generation.model or default_model, config=config, cache_dir=generation.cache_dir,
        local_files_only=generation.local_files_only,
    )
    return info


def resolved_sampling(generation: Generation, info: Any) -> tuple[int, float]:
    """(steps, guidance) of a request: its own, or the model's defaults where it left them unset."""
    from canvaslab.engines.diffusion.families import family

    steps, guidance = family(info.family).defaults(info)
    return (generation.steps if generation.steps is not None else steps,
            generation.guidance_scale if generation.guidance_scale is not None else guidance)


@functools.lru_cache(maxsize=64)
def _call_parameters(pipeline_class: type) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(pipeline_class.__call__).parameters)


def check_steps_at_strength(steps: int, strength: float) -> None:
    """Below strength 1 a pipeline runs int(steps x strength) of its steps; none is a one-line refusal (the
    pipelines raise a ValueError deep inside, e.g. for an A1111 client's img2img at 1 step and 0.75)."""
    if strength < 1.0 and int(steps * strength) < 1:
        raise InputError(
            f"{steps} step{'s' * (steps != 1)} at strength {strength:g} leave no denoising step (steps x strength must "
            f"be at least 1): use --steps {math.ceil(1 / strength)} or more, or a higher --strength"
        )


def run_pipeline(pipe: Any, info: Any, generation: Generation, task: str, arguments: dict[str, Any], *,
                 options: EngineOptions | None, seed: int, size: tuple[int, int]) -> np.ndarray:
    """Call `pipe` with the task's `arguments` plus what the family makes of steps, guidance and the
    negative prompt; the result as uint8 at `size` (height, width)."""
    from canvaslab.engines.diffusion.families import family as family_of

    family = family_of(info.family)
    call = _call_parameters(type(pipe))
    height, width = size
    steps, guidance = resolved_sampling(generation, info)
    arguments = {
        **arguments,
        **family.guidance_arguments(info, guidance, generation.negative_prompt, set(call),
                                    options.model_dump() if options is not None else {}),
        **family.call_arguments(info, task, width, height, set(call)),
        **sampler_arguments(pipe.scheduler, generation.scheduler, getattr(options, "eta", None)),
        "num_inference_steps": steps,
        "generator": cpu_generator(seed),
        "output_type": "np",
        **step_callback(pipe, steps, then=arguments.get("callback_on_step_end")),
    }
    if arguments.get("strength", 1.0) < 1.0 and "strength" not in call:
        notice(f"{type(pipe).__name__} has no denoising strength: --strength is ignored (it runs at 1)")
    check_steps_at_strength(steps, arguments.get("strength", 1.0) if "strength" in call else 1.0)
    with conditioned(pipe, generation, seed):
        result = with_tiling(pipe, generation.tiling, seed=seed)(**{k: v for k, v in arguments.items() if k in call})
    if np.isnan(result.images[0]).any():
        # Cast to uint8, NaN turns black without a word: say what happened instead.
        raise EngineError(
            f"{type(pipe).__name__} produced NaN pixels after {steps} step{'s' * (steps != 1)} (a schedule that "
            "cannot take so few steps, e.g. Qwen-Image's below 2, or fp16 overflow): use more steps or fp32/bf16"
        )
    image = to_uint8(result.images[0])
    if image.shape[:2] != (height, width):
        if not family.works_at_own_size:
            raise EngineError(f"{type(pipe).__name__} answered {image.shape[1]}x{image.shape[0]} for {width}x{height}")
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))
    return image


def conditioning_arguments(pipe: Any, info: Any, task: str, generation: Generation, image: np.ndarray | None,
                           mask: np.ndarray | None, seed: int) -> dict[str, Any]:
    """The pipeline arguments of the request's ControlNet units and IP-Adapter images (none without them).

    `image` is the engine's input (what a unit without its own control image uses), None for generate;
    `mask` the hole, for the inpaint preprocessor.
    """
    arguments: dict[str, Any] = {}
    call = set(_call_parameters(type(pipe)))
    if generation.control:
        from canvaslab.engines.diffusion.control import control_arguments

        if image is None:
            units = [unit for unit in generation.control if unit.image is None]
            if units:
                raise InputError(f"ControlNet {units[0].model} needs a control image here (there is no input image "
                                 "to use): give it image=FILE")
            image = generation.control[0].image
        arguments.update(control_arguments(pipe, info, task, generation, image, mask, call, seed))
    if generation.ip_adapters:
        from canvaslab.engines.diffusion.ip_adapter import ip_adapter_arguments

        arguments.update(ip_adapter_arguments(pipe, generation.ip_adapters, call))
    return arguments


def conditioned(pipe: Any, generation: Generation, seed: int) -> Any:
    """While the pipeline runs: the control modes that hook into ControlNets (nothing without units)."""
    if not generation.control:
        return contextlib.nullcontext()
    from canvaslab.engines.diffusion.control import control_modes

    return control_modes(pipe, generation.control, seed)


def step_callback(pipe: Any, steps: int, then: Any = None) -> dict[str, Any]:
    """`callback_on_step_end` reporting each step to `core.progress`, after `then` (the task's own per-step
    hook, e.g. soft inpainting's); empty when there is neither.

    The total is the pipeline's own count of timesteps (fewer than `steps` below strength 1);
    `report_progress` raises `Cancelled` from inside the loop when the job was cancelled.
    """
    if not listening():
        return {} if then is None else {"callback_on_step_end": then}

    def on_step_end(pipeline: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if then is not None:
            kwargs = then(pipeline, index, timestep, kwargs)
        report_progress(index + 1, getattr(pipeline, "num_timesteps", None) or steps)
        return kwargs

    return {"callback_on_step_end": on_step_end}


def prepared_pipeline(generation: Generation, task: str, *, config: str | None, default_model: str,
                      quantize: str | None = None) -> Any:
    """The cached pipeline for `task`, set to the request's scheduler and LoRAs (inpaint, edit, generate)."""
    _quiet_libraries()
    from canvaslab.engines.diffusion.lora import apply_loras, resolve_lora, widened_channels
    from canvaslab.engines.diffusion.models import load_pipeline

    # A LoRA trained on a widened UNet input (e.g. a 4-channel base made an editing model) decides the
    # pipeline class: the base alone would be refused for the task.
    widened = [c for spec, weight in generation.loras if weight != 0
               for c in [widened_channels(resolve_lora(spec, cache_dir=generation.cache_dir))] if c]

    pipe = load_pipeline(
        generation.model or default_model,
        task=task,  # type: ignore[arg-type]
        dtype=generation.dtype,  # type: ignore[arg-type]
        device=generation.device,  # type: ignore[arg-type]
        offload=generation.offload,  # type: ignore[arg-type]
        attention_slicing=generation.attention_slicing,
        vae_tiling=generation.vae_tiling,
        config=config,
        cache_dir=generation.cache_dir,
        local_files_only=generation.local_files_only,
        in_channels=max(widened) if widened else None,
        quantize=quantize,
    )
    pipe.set_progress_bar_config(disable=True)
    from canvaslab.engines.diffusion.families import family
    from canvaslab.engines.diffusion.ip_adapter import apply_ip_adapters

    info = model_info(generation, config, default_model)
    if generation.control:  # the family's ControlNet pipeline over the same modules
        from canvaslab.engines.diffusion.control import control_pipeline

        pipe = control_pipeline(pipe, info, task, generation, label=f"model {generation.model or default_model!r}")
    _use_scheduler(pipe, generation.scheduler, family(info.family).scheduler_kind)
    # Always called, also without LoRAs / IP-Adapters: the cached modules are shared by every task's pipeline.
    apply_loras(pipe, generation.loras, cache_dir=generation.cache_dir)
    apply_ip_adapters(pipe, info, generation.ip_adapters, cache_dir=generation.cache_dir,
                      local_files_only=generation.local_files_only)
    return pipe


def native_resolution(generation: Generation, *, config: str | None, default_model: str) -> int:
    """The side (px) the model was trained at, read from its configs without loading weights."""
    return model_info(generation, config, default_model).native_resolution


def cpu_generator(seed: int) -> Any:
    import torch

    # A CPU generator gives the same noise whatever the device, so seeds reproduce across machines.
    return torch.Generator("cpu").manual_seed(seed)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A pipeline's float image in [0, 1] as uint8."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# --masked-content values that start from a learned eraser's fill (engines/learned).
LEARNED_FILLS = ("lama", "migan")


def masked_start(pipe: Any, image: np.ndarray, mask: np.ndarray, content: str, seed: int, *,
                 fill_model: str | None = None, device: str = "auto") -> np.ndarray:
    """The image the pipeline starts from, with the masked area prepared as A1111's "masked content" does.

    `fill` puts blurred surroundings there; `latent-noise` / `latent-nothing` replace the masked latents
    with noise / zeros and decode them, so the pipeline's own encoder sees (almost exactly) those latents;
    `lama` / `migan` put that eraser's fill there (Krita's LaMa pre-fill): the diffusion run then refines
    a plausible removal instead of inventing the area from a blur.
    """
    if content == "original":
        return image
    if content in LEARNED_FILLS:
        from canvaslab.engines.learned.engine import learned_fill

        return learned_fill(content, image, mask, model=fill_model, device=device)
    if content == "fill":
        import cv2

        filled = cv2.inpaint(image, mask.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA)
        blurred = cv2.GaussianBlur(filled, (0, 0), sigmaX=max(4.0, max(mask.shape) / 32))
        return np.where(mask[..., None], blurred, image)
    return _latent_start(pipe, image, mask, zero=content == "latent-nothing", seed=seed)


def _latent_start(pipe: Any, image: np.ndarray, mask: np.ndarray, *, zero: bool, seed: int) -> np.ndarray:
    import torch

    vae = pipe.vae
    if type(vae).__name__ != "AutoencoderKL":  # Qwen-Image's video VAE, FLUX.2's: another latent layout
        raise InputError(f"--masked-content latent-noise/latent-nothing needs a Stable Diffusion-style VAE, and this "
                         f"model has a {type(vae).__name__}; use --masked-content fill or original")
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # SD3/FLUX VAEs centre their latents too
    with torch.no_grad():
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(vae.device, vae.dtype) / 127.5 - 1.0
        latents = (vae.encode(pixels).latent_dist.mean - shift) * scale
        small = torch.from_numpy(mask.astype(np.float32))[None, None]
        small = torch.nn.functional.interpolate(small, size=latents.shape[-2:], mode="nearest").to(latents.device) > 0.5
        generator = torch.Generator("cpu").manual_seed((seed + 1) % 2**32)  # not the sampler's stream
        fresh = torch.zeros_like(latents) if zero else torch.randn(latents.shape, generator=generator).to(latents)
        latents = torch.where(small, fresh, latents)
        decoded = vae.decode(latents / scale + shift).sample
    decoded = ((decoded[0].permute(1, 2, 0).float().cpu().numpy() + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8)
    return np.where(mask[..., None], decoded, image)


def _conditioning(pipe: Any, image: np.ndarray, mask: np.ndarray, weight: float) -> dict[str, Any]:
    """A1111's inpainting_mask_weight: blend the conditioning image between masked (1) and unmasked (0).

    diffusers encodes `masked_image_latents` itself when it is given in pixel space (3 channels), so
    the blended image goes there; weight 1 passes nothing, keeping the pipeline's own path exactly.
    """
    if weight >= 1.0:
        return {}
    if getattr(pipe, "unet", None) is None or pipe.unet.config.in_channels != 9:
        notice("--mask-weight only affects inpainting models (a 9-channel Stable Diffusion UNet); this model ignores it")
        return {}
    import torch

    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    keep = 1.0 - weight * torch.from_numpy(mask.astype(np.float32))[None, None]
    return {"masked_image_latents": pixels * keep}


def _use_scheduler(pipe: Any, name: str | None, kind: str = "ddpm") -> None:
    """Switch the cached pipeline to scheduler `name`, or back to the model's own when None."""
    own = getattr(pipe, "_canvaslab_own_scheduler", None)
    if own is None:
        own = pipe.scheduler
        pipe._canvaslab_own_scheduler = own
    pipe.scheduler = own if name is None else make_scheduler(name, own.config, kind)


@functools.lru_cache(maxsize=None)
def _quiet_libraries() -> None:
    """diffusers/transformers print harmless warnings and loading bars on every call; keep stderr readable.

    The environment variables must be set before the libraries are first imported (they read them
    once when they configure their loggers); users can still override them. Done once per process.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
