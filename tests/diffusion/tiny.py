"""Tiny, randomly initialised, seeded Stable Diffusion family components, built fully offline.

Every diffusion code path is tested with these: they are saved to disk (as diffusers folders or as
original-layout single files) and loaded back through the same public loader a real checkpoint goes
through, so a real model only changes the numbers, not the code path.

Sizes follow what keeps a pipeline fast on a 2-core CPU: the VAE downsamples by 8 like the real one
(small latents), the UNet has two blocks of width 8/16, the text encoders are 32/48 wide. Each module
is built right after `torch.manual_seed`, so the same call gives bitwise-identical weights.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

Kind = Literal["sd-txt2img", "sd-inpaint", "sd-pix2pix", "sd2-txt2img", "sdxl-txt2img", "sdxl-inpaint"]

# kind -> (family, UNet input channels: 4 text to image, 9 inpainting, 8 InstructPix2Pix)
KIND_SPECS: dict[str, tuple[str, int]] = {
    "sd-txt2img": ("sd1", 4),
    "sd-inpaint": ("sd1", 9),
    "sd-pix2pix": ("sd1", 8),
    "sd2-txt2img": ("sd2", 4),
    "sdxl-txt2img": ("sdxl", 4),
    "sdxl-inpaint": ("sdxl", 9),
}
KINDS: tuple[Kind, ...] = tuple(KIND_SPECS)  # type: ignore[assignment]

# kind -> the task its pipeline runs
NATURAL_TASK = {
    "sd-txt2img": "txt2img",
    "sd-inpaint": "inpaint",
    "sd-pix2pix": "edit",
    "sd2-txt2img": "txt2img",
    "sdxl-txt2img": "txt2img",
    "sdxl-inpaint": "inpaint",
}

SEED = 0
MAX_LENGTH = 77  # CLIP's context; pipelines pad every prompt to the tokenizer's model_max_length
TEXT_WIDTH = 32
# SDXL's two encoders must differ in width: diffusers' single-file loader tells them apart by the
# position-embedding width (768 vs 1280 in the real model).
TEXT_WIDTH_2 = 48
PROJECTION_DIM = 32
TIME_EMBED_DIM = 8  # SDXL micro-conditioning: 6 numbers, each embedded to this width
UNET_WIDTHS = (8, 16)
LAYERS_PER_BLOCK = 2  # as in the real UNets; it also exercises the single-file block numbering
NATIVE_SIZE = 64  # pixels: UNet sample_size 8 x VAE factor 8


# -- tokenizer ---------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2 / CLIP table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shift)
            shift += 1
    return [symbols[b] for b in range(256)]


def write_tokenizer_files(directory: Path) -> Path:
    """Write a tiny CLIP BPE vocabulary (`vocab.json` + `merges.txt`) without any download."""
    directory.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n</w>"), ("c", "a")]
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(pair) for pair in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def build_tokenizer() -> CLIPTokenizer:
    """Load the tiny vocabulary through `from_pretrained`, the way a saved pipeline's tokenizer loads."""
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_files(Path(directory)), model_max_length=MAX_LENGTH)
    # transformers 5 quietly returns a 2-token tokenizer when the vocabulary did not load.
    if len(tokenizer) <= 2:
        raise RuntimeError("the tiny CLIP tokenizer did not load its vocabulary")
    return tokenizer


# -- models ------------------------------------------------------------------------------------


def _text_config(tokenizer: CLIPTokenizer, width: int, *, hidden_act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=PROJECTION_DIM,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_encoder(tokenizer: CLIPTokenizer, *, hidden_act: str = "quick_gelu") -> CLIPTextModel:
    """SD 1.x uses OpenAI CLIP (quick_gelu); SD 2.x uses OpenCLIP (gelu)."""
    torch.manual_seed(SEED)
    return CLIPTextModel(_text_config(tokenizer, TEXT_WIDTH, hidden_act=hidden_act)).eval()


def build_text_encoder_2(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    """SDXL's second (OpenCLIP bigG) encoder; its projected output is the pooled conditioning."""
    torch.manual_seed(SEED)
    return CLIPTextModelWithProjection(_text_config(tokenizer, TEXT_WIDTH_2, hidden_act="gelu")).eval()


def build_unet(in_channels: int, *, family: str = "sd1") -> UNet2DConditionModel:
    """A two-block UNet; `family` picks the SD 1.x, SD 2.x or SDXL flavour of the same layout."""
    torch.manual_seed(SEED)
    common = dict(
        sample_size=NATIVE_SIZE // 8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=LAYERS_PER_BLOCK,
        block_out_channels=UNET_WIDTHS,
        norm_num_groups=4,
    )
    if family == "sdxl":
        unet = UNet2DConditionModel(
            **common,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=TEXT_WIDTH + TEXT_WIDTH_2,  # both encoders' hidden states, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + PROJECTION_DIM,  # time ids + pooled text
        )
    else:
        unet = UNet2DConditionModel(
            **common,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4) if family == "sd2" else 2,
            use_linear_projection=family == "sd2",  # the SD 2.x transformer uses linear in/out projections
            cross_attention_dim=TEXT_WIDTH,
        )
    return unet.eval()


def build_vae() -> AutoencoderKL:
    """Four blocks, three downsamplers: 8x smaller latents, like the real SD VAE."""
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=NATIVE_SIZE,
    )
    return vae.eval()


def build_scheduler(kind: str, prediction_type: str) -> DDIMScheduler | EulerDiscreteScheduler:
    """DDIM for SD, Euler for SDXL, Euler ancestral for InstructPix2Pix, all on SD's noise schedule."""
    schedule = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        steps_offset=1,
        timestep_spacing="leading",
    )
    if kind.startswith("sdxl"):
        return EulerDiscreteScheduler(**schedule)
    if kind == "sd-pix2pix":
        return EulerAncestralDiscreteScheduler(**schedule)
    return DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False)


# -- pipelines ---------------------------------------------------------------------------------

_SD_PIPELINES = {
    "sd-txt2img": StableDiffusionPipeline,
    "sd-inpaint": StableDiffusionInpaintPipeline,
    "sd-pix2pix": StableDiffusionInstructPix2PixPipeline,
    "sd2-txt2img": StableDiffusionPipeline,
}
_SDXL_PIPELINES = {"sdxl-txt2img": StableDiffusionXLPipeline, "sdxl-inpaint": StableDiffusionXLInpaintPipeline}


def _check_kind(kind: str) -> tuple[str, int]:
    if kind not in KIND_SPECS:
        raise ValueError(f"unknown tiny kind {kind!r}: choose one of {', '.join(KINDS)}")
    return KIND_SPECS[kind]


def build_pipeline(kind: Kind, *, prediction_type: str = "epsilon"):
    """The diffusers pipeline for `kind`, all components tiny and seeded."""
    family, in_channels = _check_kind(kind)
    tokenizer = build_tokenizer()
    components = dict(
        vae=build_vae(),
        tokenizer=tokenizer,
        unet=build_unet(in_channels, family=family),
        scheduler=build_scheduler(kind, prediction_type),
    )
    if family == "sdxl":
        components.update(
            text_encoder=build_text_encoder(tokenizer),
            text_encoder_2=build_text_encoder_2(tokenizer),
            tokenizer_2=tokenizer,
        )
        return _SDXL_PIPELINES[kind](**components)
    act = "gelu" if family == "sd2" else "quick_gelu"
    components.update(text_encoder=build_text_encoder(tokenizer, hidden_act=act))
    return _SD_PIPELINES[kind](
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def save_pipeline_folder(kind: Kind, path: Path, *, prediction_type: str = "epsilon") -> Path:
    """Save the tiny pipeline as a diffusers folder (`model_index.json` + one folder per component)."""
    path = Path(path)
    pipe = build_pipeline(kind, prediction_type=prediction_type)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_frames_pipeline(frames: int):
    """The tiny InstructPix2Pix pipeline widened to a multi-frame editing model (UNet of 4 + 4N channels).

    `expand_conv_in` keeps the old weights and zeroes the new ones, which would make frames 2..N
    invisible; seeded small random values there make every frame change the output, as a trained
    model's would.
    """
    from canvaslab.train.expand import expand_conv_in

    pipe = build_pipeline("sd-pix2pix")
    expand_conv_in(pipe.unet, 4 + 4 * frames)
    generator = torch.Generator("cpu").manual_seed(SEED + frames)
    with torch.no_grad():
        new = pipe.unet.conv_in.weight[:, 8:]
        new.copy_(torch.randn(new.shape, generator=generator) * 0.1)
    return pipe


def save_frames_folder(path: Path, *, frames: int = 3) -> Path:
    """Save `build_frames_pipeline(frames)` as a diffusers folder (the layout canvaslab's trainer writes)."""
    path = Path(path)
    build_frames_pipeline(frames).save_pretrained(path, safe_serialization=True)
    return path


# -- single files in the original (LDM / A1111) layout -------------------------------------------
#
# diffusers converts original checkpoints to its own layout when loading (`from_single_file`);
# these functions do the reverse renaming so a tiny model can be written the way real .safetensors
# checkpoints are, and loaded back through that same conversion.

_RESNET_TO_LDM = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def _rename_resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return dict(_RESNET_TO_LDM).get(head, head) + "." + tail


def _unet_key_to_ldm(key: str, config) -> str:
    """One diffusers UNet key -> its name in the original `model.diffusion_model` layout."""
    step = config.layers_per_block + 1  # each level: its resnets, then one down/upsampler slot
    fixed = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for prefix, ldm in fixed.items():
        if key.startswith(prefix + "."):
            return ldm + key[len(prefix) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, part, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * step + layer
        return f"input_blocks.{index}.0.{_rename_resnet(rest)}" if part == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * step + config.layers_per_block}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, part, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * step + layer
        return f"output_blocks.{index}.0.{_rename_resnet(rest)}" if part == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        # the upsampler follows the attention in blocks that have one
        slot = 2 if "CrossAttn" in config.up_block_types[block] else 1
        return f"output_blocks.{block * step + config.layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no original-layout name for UNet key {key}")


_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_key_to_ldm(key: str, levels: int) -> str:
    """One diffusers VAE key -> its name in the original `first_stage_model` layout."""
    side, _, rest = key.partition(".")
    rest = rest.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        rest = f"down.{m[1]}.block.{m[2]}.{m[3]}"
    elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest):
        rest = f"down.{m[1]}.downsample.{m[2]}"
    elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        rest = f"up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"  # the original counts up blocks from the bottom
    elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        rest = f"up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        rest = f"mid.block_{int(m[1]) + 1}.{m[2]}"
    elif m := re.match(r"mid_block\.attentions\.0\.(.+)", rest):
        name, _, param = m[1].rpartition(".")
        rest = f"mid.attn_1.{_VAE_ATTENTION_TO_LDM[name]}.{param}"
    return f"{side}.{rest}" if side in ("encoder", "decoder") else key


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    return {f"model.diffusion_model.{_unet_key_to_ldm(k, unet.config)}": v for k, v in unet.state_dict().items()}


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = _vae_key_to_ldm(key, levels)
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention uses 1x1 convolutions
        out[f"first_stage_model.{ldm}"] = value
    return out


def clip_to_ldm(encoder: CLIPTextModel, prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP keeps the transformers names under `<prefix>text_model.`."""
    return {f"{prefix}text_model.{k.removeprefix('text_model.')}": v for k, v in encoder.state_dict().items()}


def open_clip_to_ldm(encoder: CLIPTextModel | CLIPTextModelWithProjection, prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP names, with q/k/v fused into one `in_proj` and the projection stored transposed."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {}
    for key, value in state.items():
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.rpartition(".")[2]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)", key):
            out.update(_open_clip_layer(int(m[1]), m[2], value, state))
    return {prefix + k: v for k, v in out.items()}


def _open_clip_layer(layer: int, rest: str, value: torch.Tensor, state: dict) -> dict[str, torch.Tensor]:
    base = f"transformer.resblocks.{layer}"
    if m := re.match(r"self_attn\.q_proj\.(weight|bias)", rest):
        parts = [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{m[1]}"] for p in "qkv"]
        return {f"{base}.attn.in_proj_{m[1]}": torch.cat(parts)}
    if re.match(r"self_attn\.[kv]_proj\.", rest):
        return {}  # fused into in_proj with q
    renames = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
    renames |= {"mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    module, _, param = rest.rpartition(".")
    return {f"{base}.{renames[module]}.{param}": value}


def single_file_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict (the keys A1111/ComfyUI checkpoints use)."""
    state = unet_to_ldm(pipe.unet) | vae_to_ldm(pipe.vae)
    if hasattr(pipe, "text_encoder_2"):
        state |= clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer.")
        state |= open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model.")
    elif pipe.text_encoder.config.hidden_act == "gelu":  # SD 2.x: OpenCLIP
        state |= open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model.")
    else:
        state |= clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer.")
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_single_file(
    kind: Kind, path: Path, *, prediction_type: str = "epsilon", mark_v_prediction: bool = False
) -> Path:
    """Write the tiny pipeline as one original-layout checkpoint (`.safetensors`, or `.ckpt` via torch.save).

    `mark_v_prediction` adds the empty `v_pred` tensor that ComfyUI writes into v-prediction checkpoints.
    The weights equal those of `save_pipeline_folder(kind, ...)`: both build from the same seed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(kind, prediction_type=prediction_type)
    state = single_file_state_dict(pipe)
    if mark_v_prediction:
        state["v_pred"] = torch.zeros(0)
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 1}, path)
    else:
        save_file(state, str(path))
    return path


# -- a Hugging Face cache without the network ---------------------------------------------------


def install_in_hub_cache(folder: Path, hub_id: str, cache_dir: Path, *, commit: str = "0" * 40) -> Path:
    """Lay `folder` out as the cached `main` snapshot of `hub_id`, as a download would have.

    The real cache keeps files as blobs with symlinks in `snapshots/<commit>/`; plain copies are
    enough for every lookup (`refs/main` -> commit -> snapshot folder).
    """
    import shutil

    repo = Path(cache_dir) / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot
