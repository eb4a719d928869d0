"""What the transformer (DiT) families share: flow matching, 16 px sizes, folders told apart by their
pipeline class, and transformer-only single files (safetensors or GGUF) loaded into a base folder.

Users download these models as a diffusers folder, or as the transformer alone (`flux1-fill-dev.safetensors`,
`flux1-fill-dev-Q4_K_S.gguf`) next to a folder they already have for the text encoders and VAE. A
transformer file is recognised by its tensor names (diffusers' layout or the original one, with or
without ComfyUI's `model.diffusion_model.` prefix); `--opt base=FOLDER` names the folder whose other
components it joins. GGUF files load through diffusers' GGUF support (dequantised per layer on the fly,
so they run on the CPU too); bitsandbytes/torchao quantisation is a CUDA feature (see `quantization`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from canvaslab.engines.diffusion.families.base import (
    CheckpointHeader,
    Family,
    ModelInfo,
    ModelKind,
    config_file,
    vae_factor,
)
from canvaslab.errors import InputError

COMFY_PREFIX = "model.diffusion_model."


def tensor_names(header: CheckpointHeader) -> set[str]:
    """Tensor names without ComfyUI's `model.diffusion_model.` prefix."""
    return {k[len(COMFY_PREFIX):] if k.startswith(COMFY_PREFIX) else k for k in header.shapes}


def shape_of(header: CheckpointHeader, name: str) -> tuple[int, ...] | None:
    return header.shapes.get(name) or header.shapes.get(COMFY_PREFIX + name)


def has_any(names: set[str], wanted: Iterable[str]) -> bool:
    return any(w in names for w in wanted)


class TransformerFamily(Family):
    denoiser = "transformer"
    multiple = 16  # VAE 8 x patch (or 2x2 packing) 2
    native_resolution = 1024
    scheduler_kind = "flow"
    gpu_dtype = "bf16"  # these transformers are trained in bf16; fp16 overflows in some of them
    transformer_class: ClassVar[str]
    # (kind, variant) defaults: steps and guidance per variant, else the class's own
    variant_defaults: ClassVar[Mapping[str, tuple[int, float]]] = {}

    @classmethod
    def detect_folder(cls, folder: Path, index: Mapping[str, Any], name: str) -> ModelInfo:
        kind, variant = cls.index_classes[index["_class_name"]]
        transformer = config_file(folder, "transformer", "config.json")
        kind, variant = cls.refine(kind, variant, transformer, index)
        return ModelInfo(
            family=cls.name, kind=kind, in_channels=int(transformer.get("in_channels") or 0),
            prediction_type="flow", native_resolution=cls.folder_resolution(folder, transformer), variant=variant,
        )

    @classmethod
    def refine(cls, kind: ModelKind, variant: str, transformer: Mapping[str, Any],
               index: Mapping[str, Any]) -> tuple[ModelKind, str]:
        """A family's chance to read more from the configs (FLUX.1 Fill's 384 input channels, ...)."""
        return kind, variant

    @classmethod
    def folder_resolution(cls, folder: Path, transformer: Mapping[str, Any]) -> int:
        """Side in px the model was trained at: the transformer's latent sample size when it says
        (SD3), else the VAE's sample size (tiny test models), else the family's."""
        size = transformer.get("sample_size")
        if isinstance(size, int) and size > 0:
            return size * vae_factor(folder)
        vae = config_file(folder, "vae", "config.json").get("sample_size")
        if isinstance(vae, int) and vae >= 64 and vae != 32:  # 32 is diffusers' placeholder default
            return vae
        return cls.native_resolution

    @classmethod
    def defaults(cls, info: ModelInfo) -> tuple[int, float]:
        """(steps, guidance) this model was made for."""
        return cls.variant_defaults.get(info.variant, (cls.default_steps, cls.default_guidance))

    # -- single files: a transformer alone, with a base folder ------------------------------------

    @classmethod
    def detect_checkpoint(cls, path: Path, header: CheckpointHeader, config: Path | None,
                          config_from_user: bool) -> ModelInfo:
        if config is None:
            raise InputError(cls.needs_base_message(path))
        index = config_file(config, "model_index.json")
        base = cls.detect_folder(config, index, str(config)) if cls.claims_folder(config, index) else None
        kind, variant = cls.checkpoint_variant(path, header, base)
        return ModelInfo(
            family=cls.family_for_variant(variant), kind=kind, in_channels=cls.checkpoint_in_channels(header),
            prediction_type="flow", native_resolution=base.native_resolution if base else cls.native_resolution,
            variant=variant,
        )

    @classmethod
    def checkpoint_variant(cls, path: Path, header: CheckpointHeader, base: ModelInfo | None) -> tuple[ModelKind, str]:
        """(kind, variant) of a transformer file: from its weights where they tell, else from the base."""
        return (base.kind, base.variant) if base else ("txt2img", "")

    @classmethod
    def checkpoint_in_channels(cls, header: CheckpointHeader) -> int:
        return 0

    @classmethod
    def family_for_variant(cls, variant: str) -> str:
        return cls.name

    @classmethod
    def load_single_file(cls, pipeline: type, path: Path, config: str, info: ModelInfo, kwargs: dict[str, Any]) -> Any:
        import diffusers

        transformer_cls = getattr(diffusers, cls.transformer_class)
        file_kwargs: dict[str, Any] = dict(
            config=config, subfolder="transformer", torch_dtype=kwargs["dtype"],
            local_files_only=kwargs.get("local_files_only", False),
        )
        if path.suffix == ".gguf":
            file_kwargs["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=kwargs["dtype"])
        transformer = transformer_cls.from_single_file(str(path), **file_kwargs)
        return cls.load_folder(pipeline, config, dict(kwargs, transformer=transformer))
