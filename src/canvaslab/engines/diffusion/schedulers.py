"""Schedulers by the names people type, mapped to diffusers classes and config overrides.

The names follow what AUTOMATIC1111/ComfyUI users know; each spec's `a1111_name` is the label written
into the `parameters` text so that A1111-style readers show the sampler they expect.

A plain name (`euler`, `ddim`, ...) keeps the model's own timestep spacing. The `-trailing` names force
diffusers' "trailing" spacing, whose first step is the last training timestep (999: pure noise), which
few-step LoRAs and distilled models were trained on (SDXL-Lightning, Hyper-SD, SDXL/SD Turbo); with the
default "leading" spacing of SD's configs a 4-step run starts at 751 and leaves noise the model never
learnt to remove. A1111 and ComfyUI call the nearest schedule "SGM Uniform" (`sgm_uniform`: the same
starts at fractional timesteps, 999, 749.25, 499.5, ... instead of 999, 749, 499, ...), which is the
label written for them. `lcm` and `tcd` pick their own timesteps (from 50 "original" steps) whatever
the spacing. See docs/fewstep.md for the LoRA + scheduler combinations these names serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from canvaslab.errors import InputError


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str
    a1111_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    needs: str | None = None  # an extra package the diffusers class imports
    # The η passed to the pipeline when `--opt eta` is not given; None leaves the pipeline's own (0).
    # diffusers pipelines always pass their `eta` argument to a scheduler whose step takes one, so a
    # scheduler's own default (TCD's 0.3) never applies unless it is passed here.
    eta: float | None = None


SCHEDULERS: dict[str, SchedulerSpec] = {
    "euler": SchedulerSpec("EulerDiscreteScheduler", "Euler"),
    "euler-a": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "euler-karras": SchedulerSpec("EulerDiscreteScheduler", "Euler Karras", {"use_karras_sigmas": True}),
    "heun": SchedulerSpec("HeunDiscreteScheduler", "Heun"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", "LMS"),
    "ddim": SchedulerSpec("DDIMScheduler", "DDIM"),
    "ddpm": SchedulerSpec("DDPMScheduler", "DDPM"),
    # A1111's PLMS is PNDM without the Runge-Kutta warm-up, as SD's own config sets it; with the warm-up,
    # diffusers' PNDM fails below 4 steps (a broadcast error deep in the scheduler)
    "pndm": SchedulerSpec("PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
    "dpm++2m": SchedulerSpec("DPMSolverMultistepScheduler", "DPM++ 2M", {"algorithm_type": "dpmsolver++"}),
    "dpm++2m-karras": SchedulerSpec(
        "DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}
    ),
    "dpm++2m-sde-karras": SchedulerSpec(
        "DPMSolverMultistepScheduler", "DPM++ 2M SDE Karras",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpm++sde-karras": SchedulerSpec("DPMSolverSDEScheduler", "DPM++ SDE Karras", {"use_karras_sigmas": True}, needs="torchsde"),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", "UniPC"),
    "lcm": SchedulerSpec("LCMScheduler", "LCM"),
    # Trajectory Consistency Distillation (TCD-LoRA, Hyper-SD's 1-step unified LoRA); eta is its gamma,
    # 0.3 as its authors recommend (ComfyUI's TCD sampler too); `--opt eta=N` changes it
    "tcd": SchedulerSpec("TCDScheduler", "TCD", eta=0.3),
    # Few-step samplers on trailing timesteps (module docstring). Karras sigmas would ignore the spacing.
    "euler-trailing": SchedulerSpec("EulerDiscreteScheduler", "Euler SGM Uniform",
                                    {"timestep_spacing": "trailing", "use_karras_sigmas": False}),
    "euler-a-trailing": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a SGM Uniform",
                                      {"timestep_spacing": "trailing"}),
    "ddim-trailing": SchedulerSpec("DDIMScheduler", "DDIM SGM Uniform", {"timestep_spacing": "trailing"}),
    "dpm++2m-trailing": SchedulerSpec(
        "DPMSolverMultistepScheduler", "DPM++ 2M SGM Uniform",
        {"algorithm_type": "dpmsolver++", "timestep_spacing": "trailing", "use_karras_sigmas": False},
    ),
}


# Flow-matching models (SD3, FLUX, Qwen-Image, Z-Image, ...) predict a velocity, not noise: only flow
# samplers fit them. The same names mean the same thing there (euler is Euler on the flow ODE); the
# family's shift settings come from the model's own scheduler config. Heun is left out: diffusers' flow
# Heun takes no custom sigmas, which every FLUX/Qwen pipeline passes.
_NO_SIGMA_SCHEDULE = {"use_karras_sigmas": False, "use_beta_sigmas": False, "use_exponential_sigmas": False}
FLOW_SCHEDULERS: dict[str, SchedulerSpec] = {
    "euler": SchedulerSpec("FlowMatchEulerDiscreteScheduler", "Euler", _NO_SIGMA_SCHEDULE),
    "euler-karras": SchedulerSpec("FlowMatchEulerDiscreteScheduler", "Euler Karras",
                                  {**_NO_SIGMA_SCHEDULE, "use_karras_sigmas": True}),
    "euler-beta": SchedulerSpec("FlowMatchEulerDiscreteScheduler", "Euler Beta", {**_NO_SIGMA_SCHEDULE, "use_beta_sigmas": True}),
    "lcm": SchedulerSpec("FlowMatchLCMScheduler", "LCM"),
}
# Every name any model family takes (the request models check names against this).
ALL_SCHEDULERS: dict[str, SchedulerSpec] = {**SCHEDULERS, **{k: v for k, v in FLOW_SCHEDULERS.items() if k not in SCHEDULERS}}


def scheduler_spec(name: str, kind: str = "ddpm") -> SchedulerSpec:
    """The spec of scheduler `name` for a model that predicts noise ("ddpm") or a flow ("flow")."""
    table = FLOW_SCHEDULERS if kind == "flow" else SCHEDULERS
    if name not in ALL_SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}: choose one of {', '.join(ALL_SCHEDULERS)}")
    if name not in table:
        what = "a flow-matching model" if kind == "flow" else "a noise-prediction model"
        why = ""
        if kind == "flow" and name.endswith("-trailing"):
            # the trailing spacing's point (start from pure noise) is how every flow schedule starts
            why = " (flow-matching schedules already start from pure noise, as trailing spacing does: use euler)"
        raise InputError(f"scheduler {name!r} does not fit {what}{why}: choose one of {', '.join(table)}")
    return table[name]


def make_scheduler(name: str, base_config: Any, kind: str = "ddpm") -> Any:
    """A scheduler of kind `name` built from the model's own scheduler config (betas, prediction type, shift)."""
    import diffusers

    spec = scheduler_spec(name, kind)
    if spec.needs is not None:
        try:
            __import__(spec.needs)
        except ImportError:
            raise InputError(f"scheduler {name!r} needs the {spec.needs} package: pip install {spec.needs}") from None
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(base_config, **spec.overrides)


def sampler_arguments(scheduler: Any, name: str | None, eta: float | None) -> dict[str, Any]:
    """Pipeline call arguments for the sampler beyond the step count: `eta` (DDIM's η, TCD's γ).

    `scheduler` is the one the pipeline will run (`name`, or the model's own when None); `eta` is
    `--opt eta`, refused for a sampler without one rather than silently ignored.
    """
    import inspect

    takes_eta = "eta" in inspect.signature(scheduler.step).parameters
    if eta is None:
        default = SCHEDULERS[name].eta if name in SCHEDULERS else None
        return {"eta": default} if default is not None and takes_eta else {}
    if not takes_eta:
        which = f"scheduler {name!r}" if name else "the model's own scheduler"
        raise InputError(f"--opt eta={eta} applies only to samplers with a noise amount (ddim, ddim-trailing, tcd); "
                         f"{which} ({type(scheduler).__name__}) has none: leave it out or choose one of them")
    return {"eta": eta}
