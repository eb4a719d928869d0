"""Schedulers by the names people type, mapped to diffusers classes and config overrides.

The names follow what AUTOMATIC1111/ComfyUI users know; `A1111_NAMES` gives the label written into
the `parameters` text so that A1111-style readers show the sampler they expect.
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
        raise InputError(f"scheduler {name!r} does not fit {what}: choose one of {', '.join(table)}")
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
