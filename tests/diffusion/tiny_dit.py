"""Tiny, randomly initialised, seeded DiT-family pipelines (SD3, FLUX.1, Qwen-Image, FLUX.2 Klein, Z-Image).

The sibling of `tiny.py` for the transformer families: every component is the real class at a tiny
size, built right after `torch.manual_seed`, saved with `save_pretrained` and meant to be loaded back
through the public `from_pretrained(folder, local_files_only=True)`. Nothing is downloaded: the CLIP
vocabulary comes from `tiny.write_tokenizer_files`, the T5 vocabulary is a `tokenizers` Unigram model
saved as `tokenizer.json`, the Qwen vocabulary a byte-level BPE `tokenizer.json`.

Sizes: the VAEs downsample by 8 like the real ones (so packing sees the real latent grid, and 64 px is
a 4x4 token grid after 2x2 packing), latent channel counts are the real ones (16, or 32 for FLUX.2, so
FLUX.1 Fill's input is the real 384 channels), transformers have 1-2 blocks 32 wide, text encoders
are 32-96 wide. Weights that matter for GGUF blocks (32 values) have input widths that are multiples
of 32.

| family (kinds) | pipelines | latent multiple | guidance | scheduler (real config) | not built here |
|---|---|---|---|---|---|
| SD3 / SD3.5 (`sd3-txt2img`, `sd35-txt2img`) | StableDiffusion3Pipeline, StableDiffusion3InpaintPipeline (same weights, latent blending) | 16 (VAE 8 x patch 2; other sizes raise ValueError) | true CFG with negative prompt (`guidance_scale`) | FlowMatchEuler, shift 3.0, static | SigLIP image encoder (IP-Adapter, optional) |
| FLUX.1 dev / schnell (`flux-txt2img`, `flux-schnell`) | FluxPipeline, FluxInpaintPipeline (latent blending) | 16 (VAE 8 x 2x2 packing; other sizes are floored with a warning) | dev: distilled guidance embedding (`guidance_scale`); schnell: none; both: optional true CFG via `true_cfg_scale` + `negative_prompt` | dev: FlowMatchEuler dynamic shift (mu 0.5..1.15 over 256..4096 tokens); schnell: shift 1.0, static | CLIP vision image encoder (IP-Adapter, optional) |
| FLUX.1 Fill (`flux-fill`) | FluxFillPipeline (inpaint/outpaint only: x_embedder takes 64 latent + 64 masked-image + 256 mask = 384 channels) | 16 | distilled guidance embedding (real default 30) | as dev | - |
| FLUX.1 Kontext (`flux-kontext`) | FluxKontextPipeline (edit; text to image without `image`), FluxKontextInpaintPipeline | 16; the input image is resized to a preferred ~1 Mpx size unless `_auto_resize=False` and `max_area` are given | distilled guidance embedding; optional `true_cfg_scale` | as dev | - |
| Qwen-Image (`qwen-image`) | QwenImagePipeline, QwenImageInpaintPipeline | 16 (VAE 8 x 2x2 packing; floored with a warning) | true CFG: `true_cfg_scale` (default 4) with a `negative_prompt` (" " counts); `guidance_scale` only for guidance-distilled transformers | FlowMatchEuler dynamic shift, exponential, mu 0.5..0.9 over 256..8192 tokens, shift_terminal 0.02 | - |
| Qwen-Image-Edit (`qwen-image-edit`) | QwenImageEditPipeline, QwenImageEditInpaintPipeline | 16 for the output; the input is always resized to ~1 Mpx (multiples of 32) for the VAE and the VL encoder, and the inpaint pipeline ignores height/width and answers at that size | `true_cfg_scale` + `negative_prompt`, as Qwen-Image | as Qwen-Image | the Qwen2VLProcessor cannot be constructed or loaded without torchvision (see `build_qwen_processor`) |
| FLUX.2 Klein (`flux2-klein`, `flux2-klein-base`) | Flux2KleinPipeline (text to image; edit with reference `image`), Flux2KleinInpaintPipeline | 16 (VAE 8 x 2x2 patchify; floored with a warning) | distilled (4B): none (`is_distilled`, guidance ignored); base: true CFG with an empty negative, `guidance_scale` | FlowMatchEuler; the pipeline computes its own empirical mu and sigmas | - |
| Z-Image Turbo (`z-image`) | ZImagePipeline, ZImageInpaintPipeline | 16 (VAE 8 x patch 2; other sizes raise ValueError) | true CFG when `guidance_scale` > 0 (pos + s * (pos - neg)); Turbo runs at 0 | FlowMatchEuler, shift 3.0, static; the pipeline passes linear sigmas | - |

Text encoders are the classes the pipelines' type hints name: CLIPTextModel(WithProjection) + T5EncoderModel
(SD3, FLUX.1), Qwen2_5_VLForConditionalGeneration (Qwen-Image, with a tiny vision tower), Qwen3ForCausalLM
(FLUX.2 Klein: 28 layers, since the pipeline stacks hidden states 9, 18 and 27), Qwen3Model (Z-Image).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLProcessor,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    T5TokenizerFast,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from . import tiny

SEED = 0
NATIVE_SIZE = 64  # pixels: an 8x8 latent, a 4x4 token grid after 2x2 packing
T5_WIDTH = 96  # >= both SD3 CLIP widths together (SD3 pads the concatenated CLIP states up to T5's width)
T5_MAX_LENGTH = 512
QWEN_WIDTH = 32
KLEIN_TEXT_LAYERS = 28  # Flux2Klein stacks hidden states (9, 18, 27) by default; 28 keeps all three inside
VAE_WIDTHS = (4, 4, 8, 8)  # four levels, three downsamplers: 8x smaller latents like the real VAEs


@dataclass(frozen=True)
class DitSpec:
    """What one tiny kind is: its family, its variant, and the diffusers pipeline class for each task."""

    family: str
    variant: str
    pipelines: dict[str, str]  # task -> diffusers pipeline class name; the first one is saved in model_index.json


_SD3 = {"txt2img": "StableDiffusion3Pipeline", "inpaint": "StableDiffusion3InpaintPipeline"}
_KLEIN = {"txt2img": "Flux2KleinPipeline", "edit": "Flux2KleinPipeline", "inpaint": "Flux2KleinInpaintPipeline"}
DIT_SPECS: dict[str, DitSpec] = {
    "sd3-txt2img": DitSpec("sd3", "sd3", _SD3),
    "sd35-txt2img": DitSpec("sd3", "sd35", _SD3),
    "flux-txt2img": DitSpec("flux", "dev", {"txt2img": "FluxPipeline", "inpaint": "FluxInpaintPipeline"}),
    "flux-schnell": DitSpec("flux", "schnell", {"txt2img": "FluxPipeline", "inpaint": "FluxInpaintPipeline"}),
    "flux-fill": DitSpec("flux", "fill", {"inpaint": "FluxFillPipeline"}),
    "flux-kontext": DitSpec(
        "flux",
        "kontext",
        {"edit": "FluxKontextPipeline", "txt2img": "FluxKontextPipeline", "inpaint": "FluxKontextInpaintPipeline"},
    ),
    "qwen-image": DitSpec("qwen-image", "t2i", {"txt2img": "QwenImagePipeline", "inpaint": "QwenImageInpaintPipeline"}),
    "qwen-image-edit": DitSpec(
        "qwen-image", "edit", {"edit": "QwenImageEditPipeline", "inpaint": "QwenImageEditInpaintPipeline"}
    ),
    "flux2-klein": DitSpec("flux2", "distilled", _KLEIN),  # FLUX.2-klein-4B: step-distilled, no CFG
    "flux2-klein-base": DitSpec("flux2", "base", _KLEIN),
    "z-image": DitSpec("z-image", "turbo", {"txt2img": "ZImagePipeline", "inpaint": "ZImageInpaintPipeline"}),
}
DIT_KINDS: tuple[str, ...] = tuple(DIT_SPECS)
FLUX_TRANSFORMER_KINDS = tuple(k for k, s in DIT_SPECS.items() if s.family in ("flux", "flux2"))


def check_kind(kind: str) -> DitSpec:
    if kind not in DIT_SPECS:
        raise ValueError(f"unknown tiny DiT kind {kind!r}: choose one of {', '.join(DIT_KINDS)}")
    return DIT_SPECS[kind]


def pipeline_class(kind: str, task: str):
    """The diffusers class that runs `task` on `kind` (e.g. FluxInpaintPipeline for flux-txt2img inpaint)."""
    import diffusers

    spec = check_kind(kind)
    if task not in spec.pipelines:
        raise ValueError(f"tiny kind {kind!r} has no {task!r} pipeline: it supports {', '.join(spec.pipelines)}")
    return getattr(diffusers, spec.pipelines[task])


# -- tokenizers --------------------------------------------------------------------------------


def _reload(tokenizer, cls, what: str):
    """Save and load back through `from_pretrained`, as a saved pipeline's tokenizer loads."""
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        loaded = cls.from_pretrained(directory)
    # transformers 5 quietly returns a 2-token tokenizer when the vocabulary did not load.
    if len(loaded) <= 2:
        raise RuntimeError(f"the tiny {what} tokenizer did not load its vocabulary")
    return loaded


def build_t5_tokenizer() -> T5TokenizerFast:
    """A Unigram vocabulary (letters, digits, punctuation, each also with T5's '▁' word start, a few words).

    Built by the `tokenizers` backend that T5Tokenizer is in transformers 5, so no sentencepiece model is
    needed; saved as `tokenizer.json`. T5 puts pad, eos and unk at ids 0, 1, 2.
    """
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()\"")
    words = ["a", "an", "the", "of", "on", "in", "and", "with", "cat", "dog", "photo", "painting", "red", "blue"]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -2.0) for w in words]
    pieces += [(c, -4.0) for c in chars] + [("▁" + c, -4.5) for c in chars]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)
    return _reload(tokenizer, T5TokenizerFast, "T5")


QWEN_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
)

# Qwen3's chat template cut to what the pipelines use: one user turn, the generation prompt, and the
# empty think block Qwen3 writes when thinking is off (FLUX.2 Klein asks for that; Z-Image does not).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE like Qwen2/Qwen3's: the 256 byte symbols, a few merges, the chat and vision tokens."""
    symbols = tiny._byte_symbols()
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("o", "n")]
    vocab = {s: i for i, s in enumerate(symbols)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS),
        model_max_length=32768,
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return _reload(tokenizer, Qwen2Tokenizer, "Qwen")


def _token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


# -- text encoders -------------------------------------------------------------------------------


def build_clip(tokenizer, width: int, *, projection: bool, hidden_act: str = "quick_gelu"):
    """OpenAI CLIP-L (quick_gelu) or OpenCLIP bigG (gelu); SD3 pools the projected outputs, FLUX.1 the hidden."""
    torch.manual_seed(SEED)
    config = tiny._text_config(tokenizer, width, hidden_act=hidden_act)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def build_t5(tokenizer) -> T5EncoderModel:
    """T5 v1.1 layout (gated GELU, no tied embeddings) at width 96, two layers."""
    torch.manual_seed(SEED)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_WIDTH,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config).eval()


def build_qwen25_vl(tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen-Image's encoder: Qwen2.5-VL with a two-block vision tower (Qwen-Image-Edit feeds it the image)."""
    torch.manual_seed(SEED)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=QWEN_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=_token_id(tokenizer, "<|endoftext|>"),
            eos_token_id=_token_id(tokenizer, "<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=QWEN_WIDTH,
            fullatt_block_indexes=[1],
        ),
        image_token_id=_token_id(tokenizer, "<|image_pad|>"),
        video_token_id=_token_id(tokenizer, "<|video_pad|>"),
        vision_start_token_id=_token_id(tokenizer, "<|vision_start|>"),
        vision_end_token_id=_token_id(tokenizer, "<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _qwen3_config(tokenizer, layers: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=QWEN_WIDTH,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,  # Qwen3 defaults to 128 whatever the width
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=_token_id(tokenizer, "<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def build_qwen3_causal_lm(tokenizer) -> Qwen3ForCausalLM:
    torch.manual_seed(SEED)
    return Qwen3ForCausalLM(_qwen3_config(tokenizer, KLEIN_TEXT_LAYERS)).eval()


def build_qwen3_model(tokenizer) -> Qwen3Model:
    torch.manual_seed(SEED)
    return Qwen3Model(_qwen3_config(tokenizer, 2)).eval()


# -- processor (Qwen-Image-Edit) -----------------------------------------------------------------


def build_qwen_image_processor() -> Qwen2VLImageProcessorPil:
    """The PIL-backed Qwen2-VL image processor (the default one needs torchvision).

    Real patch/merge sizes (14, temporal 2, merge 2); `max_pixels` is tiny so the ~1 Mpx image the
    edit pipeline hands over becomes 8x8 patches (16 image tokens), not thousands.
    """
    return Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)


def build_qwen_processor(tokenizer, image_processor) -> Qwen2VLProcessor:
    """A Qwen2VLProcessor without a video processor, which transformers 5.23 cannot make without torchvision.

    `Qwen2VLProcessor.__init__` type-checks every sub-processor, and the video processor's base class
    only exists when torchvision imports; `from_pretrained` fails earlier still, loading
    Qwen2VLVideoProcessor ("requires the Torchvision library"). The edit pipelines only call the
    processor on text and images, so the instance is assembled by hand with the attributes `__init__`
    would set. Without torchvision a saved Qwen-Image-Edit folder therefore loads only with
    `processor=load_qwen_processor(folder / "processor")` passed to `from_pretrained`.
    """
    processor = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    processor.chat_template = None
    processor.tokenizer = tokenizer
    processor.image_processor = image_processor
    processor.video_processor = None
    processor.image_token, processor.video_token = "<|image_pad|>", "<|video_pad|>"
    processor.image_token_id = _token_id(tokenizer, processor.image_token)
    processor.video_token_id = _token_id(tokenizer, processor.video_token)
    return processor


def save_qwen_processor(processor: Qwen2VLProcessor, directory: Path) -> Path:
    """Write the files a real Qwen-Image-Edit `processor/` folder has (tokenizer + image processor config)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(directory)
    processor.image_processor.save_pretrained(directory)
    # The video processor's settings mirror the image processor's, as in the real folder; with torchvision
    # installed Qwen2VLProcessor.from_pretrained reads this file (not testable here).
    video = json.loads((directory / "preprocessor_config.json").read_text(encoding="utf-8"))
    video.pop("image_processor_type", None)
    video["video_processor_type"] = "Qwen2VLVideoProcessor"
    _write_json(directory / "video_preprocessor_config.json", video)
    _write_json(directory / "processor_config.json", {"processor_class": "Qwen2VLProcessor"})
    return directory


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_qwen_processor(directory: Path) -> Qwen2VLProcessor:
    """Load a saved `processor/` folder without torchvision (see `build_qwen_processor`)."""
    tokenizer = Qwen2Tokenizer.from_pretrained(directory)
    if len(tokenizer) <= 2:
        raise RuntimeError(f"the Qwen tokenizer in {directory} did not load its vocabulary")
    return build_qwen_processor(tokenizer, Qwen2VLImageProcessorPil.from_pretrained(directory))


# -- VAEs ----------------------------------------------------------------------------------------


def build_kl_vae(*, scaling_factor: float, shift_factor: float):
    """The SD3 / FLUX.1 / Z-Image VAE layout: 16 latent channels, no quant convs, a scale and a shift."""
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=VAE_WIDTHS,
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=2,
        sample_size=NATIVE_SIZE,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return vae.eval()


def build_qwen_vae():
    """Qwen-Image's causal 3D VAE: three spatial downsamplers (two also temporal, as in the real one)."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(SEED)
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    return vae.eval()  # latents_mean / latents_std keep the real model's 16 values (the class defaults)


def build_flux2_vae():
    """FLUX.2's VAE: 32 latent channels, patchified 2x2 to 128 and batch-normalised."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(SEED)
    vae = AutoencoderKLFlux2(
        block_out_channels=VAE_WIDTHS,
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=2,
        sample_size=NATIVE_SIZE,
    )
    return vae.eval()


# -- schedulers (the real models' scheduler_config.json values) ----------------------------------


def build_scheduler(kind: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    spec = check_kind(kind)
    if spec.family == "sd3":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    if spec.family == "flux" and spec.variant == "schnell":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    if spec.family in ("flux", "flux2"):
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    if spec.family == "qwen-image":
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=0.9,
            base_image_seq_len=256,
            max_image_seq_len=8192,
            shift_terminal=0.02,
            time_shift_type="exponential",
        )
    # Z-Image Turbo
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


# -- transformers --------------------------------------------------------------------------------


def build_transformer(kind: str):
    """The kind's denoising transformer: 1-2 blocks, 2 heads of 16 (8 for SD3), real channel counts."""
    import diffusers

    spec = check_kind(kind)
    torch.manual_seed(SEED)
    if spec.family == "sd3":
        return diffusers.SD3Transformer2DModel(
            sample_size=NATIVE_SIZE // 8,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=T5_WIDTH,
            caption_projection_dim=32,  # = heads x head width: text joins the image stream
            pooled_projection_dim=2 * tiny.PROJECTION_DIM,  # both CLIPs' projected outputs, concatenated
            pos_embed_max_size=32,  # positions for up to 512 px; the real 192 covers 3072 px
            # SD3.5 (Medium) adds q/k RMS norms and a second attention in the first blocks
            qk_norm="rms_norm" if spec.variant == "sd35" else None,
            dual_attention_layers=(0,) if spec.variant == "sd35" else (),
        ).eval()
    if spec.family == "flux":
        return diffusers.FluxTransformer2DModel(
            patch_size=1,
            in_channels=384 if spec.variant == "fill" else 64,  # Fill: + masked image (64) + 8x8 mask pixels x 4 (256)
            out_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=T5_WIDTH,
            pooled_projection_dim=tiny.TEXT_WIDTH,  # FLUX.1 pools CLIP-L's hidden width, not a projection
            guidance_embeds=spec.variant != "schnell",
            axes_dims_rope=(4, 6, 6),
        ).eval()
    if spec.family == "qwen-image":
        return diffusers.QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=QWEN_WIDTH,
            guidance_embeds=False,
            axes_dims_rope=(4, 6, 6),
        ).eval()
    if spec.family == "flux2":
        return diffusers.Flux2Transformer2DModel(
            patch_size=1,
            in_channels=128,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=3 * QWEN_WIDTH,  # three stacked Qwen3 hidden states
            timestep_guidance_channels=256,
            mlp_ratio=3.0,
            axes_dims_rope=(4, 4, 4, 4),
            rope_theta=2000,
            guidance_embeds=False,
        ).eval()
    transformer = diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=QWEN_WIDTH,
        axes_dims=[4, 6, 6],
        axes_lens=[1024, 512, 512],
    )
    # The pad tokens are made with torch.empty (uninitialised memory): seed them, or equal seeds differ.
    generator = torch.Generator("cpu").manual_seed(SEED)
    with torch.no_grad():
        for pad in (transformer.x_pad_token, transformer.cap_pad_token):
            pad.copy_(torch.randn(pad.shape, generator=generator) * 0.02)
    return transformer.eval()


# -- pipelines -----------------------------------------------------------------------------------


def build_components(kind: str) -> dict:
    """Every component of `kind`'s pipeline, tiny and seeded (the same call gives the same weights)."""
    spec = check_kind(kind)
    components = dict(transformer=build_transformer(kind), scheduler=build_scheduler(kind))
    if spec.family == "sd3":
        clip, t5 = tiny.build_tokenizer(), build_t5_tokenizer()
        components.update(
            vae=build_kl_vae(scaling_factor=1.5305, shift_factor=0.0609),
            text_encoder=build_clip(clip, tiny.TEXT_WIDTH, projection=True),
            tokenizer=clip,
            text_encoder_2=build_clip(clip, tiny.TEXT_WIDTH_2, projection=True, hidden_act="gelu"),
            tokenizer_2=clip,
            text_encoder_3=build_t5(t5),
            tokenizer_3=t5,
            image_encoder=None,
            feature_extractor=None,
        )
    elif spec.family == "flux":
        clip, t5 = tiny.build_tokenizer(), build_t5_tokenizer()
        components.update(
            vae=build_kl_vae(scaling_factor=0.3611, shift_factor=0.1159),
            text_encoder=build_clip(clip, tiny.TEXT_WIDTH, projection=False),
            tokenizer=clip,
            text_encoder_2=build_t5(t5),
            tokenizer_2=t5,
        )
        if spec.variant != "fill":
            components.update(image_encoder=None, feature_extractor=None)
    elif spec.family == "qwen-image":
        qwen = build_qwen_tokenizer()
        components.update(vae=build_qwen_vae(), text_encoder=build_qwen25_vl(qwen), tokenizer=qwen)
        if spec.variant == "edit":
            components.update(processor=build_qwen_processor(qwen, build_qwen_image_processor()))
    elif spec.family == "flux2":
        qwen = build_qwen_tokenizer()
        components.update(
            vae=build_flux2_vae(),
            text_encoder=build_qwen3_causal_lm(qwen),
            tokenizer=qwen,
            is_distilled=spec.variant == "distilled",
        )
    else:
        qwen = build_qwen_tokenizer()
        components.update(
            vae=build_kl_vae(scaling_factor=0.3611, shift_factor=0.1159),  # Z-Image uses FLUX.1's VAE
            text_encoder=build_qwen3_model(qwen),
            tokenizer=qwen,
        )
    return components


def build_dit_pipeline(kind: str, task: str | None = None):
    """The diffusers pipeline for `kind` (its first task's class unless `task` is given), all parts tiny."""
    spec = check_kind(kind)
    return pipeline_class(kind, task or next(iter(spec.pipelines)))(**build_components(kind))


def save_dit_folder(kind: str, folder: Path) -> Path:
    """Save the tiny pipeline as a diffusers folder (`model_index.json` + one folder per component).

    Qwen-Image-Edit's processor is written file by file (see `build_qwen_processor`): the folder has
    the layout of the real one, and `model_index.json` names Qwen2VLProcessor.
    """
    folder = Path(folder)
    pipe = build_dit_pipeline(kind)
    processor = getattr(pipe, "processor", None)
    if processor is None:
        pipe.save_pretrained(folder, safe_serialization=True)
        return folder
    pipe.register_modules(processor=None)  # saved below; ProcessorMixin.save_pretrained needs the video processor
    pipe.save_pretrained(folder, safe_serialization=True)
    save_qwen_processor(processor, folder / "processor")
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    _write_json(folder / "model_index.json", index | {"processor": ["transformers", "Qwen2VLProcessor"]})
    return folder


class DitFolders(Mapping):
    """kind -> its saved folder under `root`, each built and saved on first use (most tests need one or two)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._saved: dict[str, Path] = {}

    def __getitem__(self, kind: str) -> Path:
        check_kind(kind)
        if kind not in self._saved:
            self._saved[kind] = save_dit_folder(kind, self.root / kind)
        return self._saved[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(DIT_KINDS)

    def __len__(self) -> int:
        return len(DIT_KINDS)


def load_dit_pipeline(kind: str, folder: Path, task: str | None = None):
    """Load a saved tiny folder through the task's pipeline class, as a real checkpoint loads.

    The one exception is Qwen-Image-Edit without torchvision, whose processor is passed in explicitly.
    """
    from transformers.utils import is_torchvision_available

    spec = check_kind(kind)
    cls = pipeline_class(kind, task or next(iter(spec.pipelines)))
    extra = {}
    if spec.variant == "edit" and spec.family == "qwen-image" and not is_torchvision_available():
        extra["processor"] = load_qwen_processor(Path(folder) / "processor")
    return cls.from_pretrained(folder, local_files_only=True, **extra)


# -- transformer-only files (FLUX.1 / FLUX.2) ---------------------------------------------------
#
# Users download transformer-only checkpoints. FluxTransformer2DModel.from_single_file loads them
# offline when `config=` names a local diffusers folder (plus subfolder="transformer"). Two layouts:
# - "diffusers": the transformer's own state dict; the loader uses it as is when its key set equals
#   the model's, so any width round-trips.
# - "bfl": Black Forest Labs' original names (double_blocks.N.img_attn.qkv, single_blocks.N.linear1, ...).
#   diffusers 0.42.1 converts FLUX.1 with a hard-coded width of 3072 (single_file_utils.py,
#   convert_flux_transformer_checkpoint_to_diffusers: `inner_dim = 3072`), so a tiny FLUX.1 cannot
#   load from it; the FLUX.2 converter reads shapes from the tensors and round-trips.


def _check_flux_kind(kind: str) -> DitSpec:
    spec = check_kind(kind)
    if spec.family not in ("flux", "flux2"):
        choices = ", ".join(FLUX_TRANSFORMER_KINDS)
        raise ValueError(f"transformer-only files are written for FLUX kinds only ({choices}), not {kind!r}")
    return spec


def _swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' final AdaLayerNorm splits (scale, shift); BFL's final layer splits (shift, scale)."""
    scale, shift = weight.chunk(2, dim=0)
    return torch.cat([shift, scale], dim=0)


def flux_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in BFL's original FLUX.1 names (diffusers' converter reversed)."""
    out: dict[str, torch.Tensor] = {}
    embedders = {
        "time_text_embed.timestep_embedder": "time_in",
        "time_text_embed.text_embedder": "vector_in",
        "time_text_embed.guidance_embedder": "guidance_in",
    }
    for prefix, bfl in embedders.items():
        for param in ("weight", "bias"):
            if f"{prefix}.linear_1.{param}" in state:
                out[f"{bfl}.in_layer.{param}"] = state[f"{prefix}.linear_1.{param}"]
                out[f"{bfl}.out_layer.{param}"] = state[f"{prefix}.linear_2.{param}"]
    for param in ("weight", "bias"):
        out[f"txt_in.{param}"] = state[f"context_embedder.{param}"]
        out[f"img_in.{param}"] = state[f"x_embedder.{param}"]
        out[f"final_layer.linear.{param}"] = state[f"proj_out.{param}"]
        out[f"final_layer.adaLN_modulation.1.{param}"] = _swap_scale_shift(state[f"norm_out.linear.{param}"])
    doubles = sorted({int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")})
    for i in doubles:
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for param in ("weight", "bias"):
            out[f"{b}img_mod.lin.{param}"] = state[f"{d}norm1.linear.{param}"]
            out[f"{b}txt_mod.lin.{param}"] = state[f"{d}norm1_context.linear.{param}"]
            out[f"{b}img_attn.qkv.{param}"] = torch.cat([state[f"{d}attn.to_{x}.{param}"] for x in "qkv"])
            out[f"{b}txt_attn.qkv.{param}"] = torch.cat([state[f"{d}attn.add_{x}_proj.{param}"] for x in "qkv"])
            out[f"{b}img_attn.proj.{param}"] = state[f"{d}attn.to_out.0.{param}"]
            out[f"{b}txt_attn.proj.{param}"] = state[f"{d}attn.to_add_out.{param}"]
            out[f"{b}img_mlp.0.{param}"] = state[f"{d}ff.net.0.proj.{param}"]
            out[f"{b}img_mlp.2.{param}"] = state[f"{d}ff.net.2.{param}"]
            out[f"{b}txt_mlp.0.{param}"] = state[f"{d}ff_context.net.0.proj.{param}"]
            out[f"{b}txt_mlp.2.{param}"] = state[f"{d}ff_context.net.2.{param}"]
        for norm, bfl in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm")):
            out[f"{b}{bfl}.scale"] = state[f"{d}attn.{norm}.weight"]
        for norm, bfl in (("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")):
            out[f"{b}{bfl}.scale"] = state[f"{d}attn.{norm}.weight"]
    singles = sorted({int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")})
    for i in singles:
        s, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for param in ("weight", "bias"):
            out[f"{b}modulation.lin.{param}"] = state[f"{s}norm.linear.{param}"]
            parts = [state[f"{s}attn.to_{x}.{param}"] for x in "qkv"] + [state[f"{s}proj_mlp.{param}"]]
            out[f"{b}linear1.{param}"] = torch.cat(parts)
            out[f"{b}linear2.{param}"] = state[f"{s}proj_out.{param}"]
        out[f"{b}norm.query_norm.scale"] = state[f"{s}attn.norm_q.weight"]
        out[f"{b}norm.key_norm.scale"] = state[f"{s}attn.norm_k.weight"]
    return out


def flux2_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Flux2Transformer2DModel state dict in BFL's original FLUX.2 names."""
    renames = {
        "x_embedder": "img_in",
        "context_embedder": "txt_in",
        "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
        "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
        "single_stream_modulation.linear": "single_stream_modulation.lin",
        "proj_out": "final_layer.linear",
    }
    double = {
        "attn.norm_q": "img_attn.norm.query_norm",
        "attn.norm_k": "img_attn.norm.key_norm",
        "attn.to_out.0": "img_attn.proj",
        "ff.linear_in": "img_mlp.0",
        "ff.linear_out": "img_mlp.2",
        "attn.norm_added_q": "txt_attn.norm.query_norm",
        "attn.norm_added_k": "txt_attn.norm.key_norm",
        "attn.to_add_out": "txt_attn.proj",
        "ff_context.linear_in": "txt_mlp.0",
        "ff_context.linear_out": "txt_mlp.2",
    }
    single = {
        "attn.to_qkv_mlp_proj": "linear1",
        "attn.to_out": "linear2",
        "attn.norm_q": "norm.query_norm",
        "attn.norm_k": "norm.key_norm",
    }
    fused = {"attn.to_q": ("img", ("to_q", "to_k", "to_v")), "attn.add_q_proj": ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module == "norm_out.linear":
            out[f"final_layer.adaLN_modulation.1.{param}"] = _swap_scale_shift(value)
        elif module in renames:
            out[f"{renames[module]}.{param}"] = value
        elif key.startswith("transformer_blocks."):
            _, index, rest = module.split(".", 2)
            if rest in fused:  # BFL keeps q, k and v as one tensor per stream
                stream, names = fused[rest]
                parts = [state[f"transformer_blocks.{index}.attn.{n}.{param}"] for n in names]
                out[f"double_blocks.{index}.{stream}_attn.qkv.{param}"] = torch.cat(parts)
            elif rest in double:
                name = double[rest]
                out[f"double_blocks.{index}.{name}.{'scale' if 'norm' in name else param}"] = value
            elif rest not in ("attn.to_k", "attn.to_v", "attn.add_k_proj", "attn.add_v_proj"):
                raise KeyError(f"no BFL name for FLUX.2 key {key}")
        elif key.startswith("single_transformer_blocks."):
            _, index, rest = module.split(".", 2)
            name = single[rest]
            out[f"single_blocks.{index}.{name}.{'scale' if 'norm' in name else param}"] = value
        else:
            raise KeyError(f"no BFL name for FLUX.2 key {key}")
    return out


def _transformer_state(kind: str, layout: str) -> dict[str, torch.Tensor]:
    spec = _check_flux_kind(kind)
    if layout not in ("diffusers", "bfl"):
        raise ValueError(f"layout must be 'diffusers' or 'bfl', not {layout!r}")
    state = {k: v.detach() for k, v in build_transformer(kind).state_dict().items()}
    if layout == "bfl":
        state = (flux2_to_bfl if spec.family == "flux2" else flux_to_bfl)(state)
    return {k: v.contiguous() for k, v in state.items()}


def save_transformer_single_file(kind: str, path: Path, *, layout: str = "diffusers") -> Path:
    """Write `kind`'s transformer alone as one `.safetensors` (layout "diffusers" or "bfl"), the folder's weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_transformer_state(kind, layout), str(path))
    return path


def save_transformer_gguf(kind: str, path: Path, *, quant: str = "Q8_0", layout: str = "diffusers") -> Path:
    """Write `kind`'s transformer as a GGUF file (layout "diffusers" or "bfl", as in `save_transformer_single_file`).

    2-D weights whose rows split into whole 32-value blocks are quantised (`quant`: Q8_0, Q4_0, ...);
    everything else (biases, norms, 1-D tensors) stays F32, as the real converters keep small tensors.
    Needs the `gguf` package.
    """
    import gguf

    state = _transformer_state(kind, layout)
    qtype = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="flux")
    for name, tensor in state.items():
        data = tensor.float().numpy()
        if data.ndim == 2 and data.shape[-1] % block == 0:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
