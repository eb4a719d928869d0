"""FLUX.1 Kontext: instruction editing with FLUX.1 dev's transformer (edit, masked edit, text to image).

The input image is encoded as extra tokens beside the latents; `canvaslab edit` asks the pipeline to
work at the input's own size (Kontext would otherwise resize to about 1 Mpx), `edit --mask` runs the
Kontext inpainting pipeline, which keeps the unmasked latents. Guidance is FLUX.1's distilled kind
(`--guidance-scale`, 2.5 by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canvaslab.engines.diffusion.families.base import CheckpointHeader, ModelAlias, ModelInfo
from canvaslab.engines.diffusion.families.flux import Flux


class FluxKontext(Flux):
    name = "flux-kontext"
    label = "FLUX.1 Kontext"
    default_steps = 28
    default_guidance = 2.5
    variant_defaults = {"kontext": (28, 2.5)}
    index_classes = {
        "FluxKontextPipeline": ("edit", "kontext"),
        "FluxKontextInpaintPipeline": ("edit", "kontext"),
    }
    pipelines = {
        ("edit", "edit"): "FluxKontextPipeline",
        ("edit", "txt2img"): "FluxKontextPipeline",
        ("edit", "inpaint"): "FluxKontextInpaintPipeline",
    }
    control_pipelines = {}  # FLUX.1's ControlNet pipelines do not take Kontext's reference image
    union_pipelines = {}
    controlnet_classes = ()
    aliases = (
        ModelAlias("flux-kontext", "black-forest-labs/FLUX.1-Kontext-dev", "flux-kontext", "edit", 1024,
                   "FLUX.1 Kontext dev: edit an image from an instruction (also masked)"),
    )

    @classmethod
    def refine(cls, kind, variant, transformer: Mapping[str, Any], index: Mapping[str, Any]):
        return "edit", "kontext"

    @classmethod
    def claims_checkpoint(cls, header: CheckpointHeader) -> bool:
        return False  # a Kontext transformer file has FLUX.1 dev's tensors: Flux claims it and names it

    @classmethod
    def call_arguments(cls, info: ModelInfo, task: str, width: int, height: int, call: set[str]) -> dict[str, Any]:
        # Work at the input's size (multiples of 16), not Kontext's preferred ~1 Mpx.
        args = super().call_arguments(info, task, width, height, call)
        if "_auto_resize" in call:
            args.update(max_area=width * height, _auto_resize=False)
        return args
