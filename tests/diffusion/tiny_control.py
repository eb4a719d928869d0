"""Tiny, seeded ControlNets and IP-Adapters for the tiny models of `tiny.py`, saved in the layouts real
ones come in and loaded back through canvaslab's own loaders.

ControlNets start from the tiny UNet (`ControlNetModel.from_unet`, as the paper initialises them).
Their output layers (the zero convolutions after every block, and the conditioning embedding's last
conv) are zero at initialisation, so a fresh ControlNet adds exactly nothing and no weight would show:
here they are re-seeded with small random values, which is what training would have made of them.

An IP-Adapter is its two weight groups in the original layout (`image_proj.*`: a linear projection of
the CLIP image embedding to 4 tokens + a LayerNorm; `ip_adapter.<k>.to_k_ip/to_v_ip`: one key/value
pair per cross-attention layer, k = 1, 3, 5, ... in the UNet's processor order), saved as one
.safetensors file with a tiny CLIP vision encoder in `image_encoder/` beside it, as h94/IP-Adapter ships.
FLUX.1's is XLabs' layout; SD3's is InstantX's (a resampler with a timestep embedding + one processor per
attention) with a tiny SigLIP vision encoder beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, ControlNetUnionModel, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

SEED = 0
EMBED_CHANNELS = (8, 8, 8, 8)  # the conditioning embedding: 3 downsamplers, 8x like the VAE
IMAGE_EMBED = 32  # the CLIP vision projection width
IP_TOKENS = 4
UNION_TYPES = 8  # xinsir's ControlNet Union ProMax


def _seed_zero_layers(net: torch.nn.Module, seed: int) -> None:
    """Give the zero-initialised output convolutions small random weights (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def build_controlnet(unet: UNet2DConditionModel, *, union: bool = False, seed: int = SEED) -> torch.nn.Module:
    """A ControlNet (or, `union`, a ControlNet Union model with ProMax's 8 control types) of `unet`."""
    torch.manual_seed(seed)
    cls = ControlNetUnionModel if union else ControlNetModel
    net = cls.from_unet(unet, conditioning_embedding_out_channels=EMBED_CHANNELS)
    if union:  # from_unet knows the first release's 6 types; ProMax added inpaint (7) and one more
        torch.manual_seed(seed)
        width = unet.config.block_out_channels[0]  # the union transformer works at the first block's width
        promax = ControlNetUnionModel.from_config(net.config, num_control_type=UNION_TYPES, num_trans_channel=width,
                                                  num_trans_head=2, num_proj_channel=width)
        shapes = {name: p.shape for name, p in promax.state_dict().items()}
        promax.load_state_dict({k: v for k, v in net.state_dict().items() if shapes.get(k) == v.shape}, strict=False)
        net = promax
    _seed_zero_layers(net, seed + 1)
    return net.eval()


def save_controlnet(unet: UNet2DConditionModel, folder: Path, *, union: bool = False, seed: int = SEED) -> Path:
    build_controlnet(unet, union=union, seed=seed).save_pretrained(folder)
    return folder


def build_image_encoder() -> CLIPVisionModelWithProjection:
    torch.manual_seed(SEED)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8, projection_dim=IMAGE_EMBED)
    return CLIPVisionModelWithProjection(config).eval()


def ip_adapter_state_dict(unet: UNet2DConditionModel, *, seed: int = SEED) -> dict[str, torch.Tensor]:
    """The original IP-Adapter layout for `unet`: image_proj.* and ip_adapter.<1,3,5,...>.to_{k,v}_ip.weight."""
    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * 0.2

    tensors = {
        "image_proj.proj.weight": random(cross * IP_TOKENS, IMAGE_EMBED),
        "image_proj.proj.bias": random(cross * IP_TOKENS),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attention.to_k.weight.shape[0]
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = random(hidden, cross)
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = random(hidden, cross)
        key += 2
    return tensors


def save_ip_adapter(unet: UNet2DConditionModel, folder: Path, *, name: str = "ip-adapter_tiny.safetensors",
                    with_encoder: bool = True, seed: int = SEED) -> Path:
    """`folder/name` (+ `folder/image_encoder/` unless told not to); returns the weights file."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(ip_adapter_state_dict(unet, seed=seed), folder / name)
    if with_encoder:
        build_image_encoder().save_pretrained(folder / "image_encoder")
    return folder / name


# -- transformer families (SD3, FLUX.1) ---------------------------------------------------------
#
# Their ControlNets copy the first transformer blocks (`from_transformer`, as the released ones start); the
# output projections after each block and the control image's input embedding are zero-initialised, so they
# are re-seeded like the UNet ControlNets' zero convolutions.

DIT_ZERO_LAYERS = ("controlnet_blocks", "controlnet_single_blocks", "pos_embed_input", "controlnet_x_embedder")


def build_dit_controlnet(transformer: torch.nn.Module, *, inpaint: bool = False, union: bool = False,
                         seed: int = SEED) -> torch.nn.Module:
    """An SD3 ControlNet (`inpaint`: the inpainting kind, whose input is the masked image's latents + the mask,
    one extra channel) or a FLUX.1 ControlNet of the tiny `transformer` (`union`: with InstantX Union's 10
    control modes)."""
    from diffusers import FluxControlNetModel, SD3ControlNetModel

    torch.manual_seed(seed)
    if type(transformer).__name__ == "SD3Transformer2DModel":
        # the first blocks only, as the released ones (the last transformer block is context-pre-only)
        net = SD3ControlNetModel.from_transformer(transformer, num_layers=transformer.config.num_layers - 1,
                                                  num_extra_conditioning_channels=1 if inpaint else 0)
    else:
        if inpaint:
            raise ValueError("FLUX.1 inpainting ControlNets need their own pipeline; build a plain one")
        config = transformer.config
        net = FluxControlNetModel.from_transformer(
            transformer, num_layers=config.num_layers, num_single_layers=config.num_single_layers,
            attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads)
        if union:  # from_transformer makes single-type ones; the mode embedding is new (seeded below)
            torch.manual_seed(seed)
            modal = FluxControlNetModel.from_config(net.config, num_mode=10)
            modal.load_state_dict(net.state_dict(), strict=False)
            net = modal
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(DIT_ZERO_LAYERS):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return net.eval()


def save_dit_controlnet(transformer: torch.nn.Module, folder: Path, *, inpaint: bool = False, union: bool = False,
                        seed: int = SEED) -> Path:
    build_dit_controlnet(transformer, inpaint=inpaint, union=union, seed=seed).save_pretrained(folder)
    return folder


def flux_ip_adapter_state_dict(transformer: torch.nn.Module, *, seed: int = SEED) -> dict[str, torch.Tensor]:
    """XLabs' FLUX.1 IP-Adapter layout for the tiny `transformer`: ip_adapter_proj_model.* (the CLIP image
    embedding to 4 tokens of the text width + a LayerNorm) and, per double block, key/value projections
    with biases under double_blocks.<k>.processor.ip_adapter_double_stream_{k,v}_proj."""
    generator = torch.Generator().manual_seed(seed)
    text = transformer.config.joint_attention_dim
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * 0.2

    tensors = {
        "ip_adapter_proj_model.proj.weight": random(text * IP_TOKENS, IMAGE_EMBED),
        "ip_adapter_proj_model.proj.bias": random(text * IP_TOKENS),
        "ip_adapter_proj_model.norm.weight": torch.ones(text),
        "ip_adapter_proj_model.norm.bias": torch.zeros(text),
    }
    for block in range(transformer.config.num_layers):
        for kv in ("k", "v"):
            prefix = f"double_blocks.{block}.processor.ip_adapter_double_stream_{kv}_proj"
            tensors[f"{prefix}.weight"] = random(hidden, text)
            tensors[f"{prefix}.bias"] = random(hidden)
    return tensors


def save_flux_ip_adapter(transformer: torch.nn.Module, folder: Path, *, name: str = "ip_adapter_flux.safetensors") -> Path:
    """`folder/name` in XLabs' layout + the tiny CLIP vision encoder in `folder/image_encoder/`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(flux_ip_adapter_state_dict(transformer), folder / name)
    build_image_encoder().save_pretrained(folder / "image_encoder")
    return folder / name


# InstantX/SD3.5-Large-IP-Adapter's layout: the resampler (`image_proj.*`, 4 blocks, 64-wide heads; its block
# keys as `layers.<i>.0.norm1` ... `layers.<i>.2.1`, which diffusers renames on load) and, per attention
# processor of the transformer, `ip_adapter.<i>.norm_ip/to_k_ip/to_v_ip/norm_*` (SD3IPAdapterJointAttnProcessor2_0).
# The image encoder is a SigLIP vision model whose penultimate hidden states feed the resampler.
SD3_IP_HIDDEN = 64  # the resampler's width (one 64-wide head) = the timestep embedding the processors take
_INSTANTX_NAMES = (("ln0", "0.norm1"), ("ln1", "0.norm2"), ("attn.to_q", "0.to_q"), ("attn.to_kv", "0.to_kv"),
                   ("attn.to_out.0", "0.to_out"), ("adaln_norm", "1.0"), ("ff.net.0.proj", "1.1"),
                   ("ff.net.2", "1.3"), ("adaln_proj", "2.1"))


def build_siglip_encoder():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(SEED)
    config = SiglipVisionConfig(hidden_size=IMAGE_EMBED, intermediate_size=64, num_attention_heads=4,
                                num_hidden_layers=2, image_size=32, patch_size=8)
    return SiglipVisionModel(config).eval()


def sd3_ip_adapter_state_dict(transformer: torch.nn.Module, *, seed: int = SEED) -> dict[str, torch.Tensor]:
    """The InstantX SD3 IP-Adapter layout for the tiny SD3 `transformer`, random but seeded."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    torch.manual_seed(seed)
    resampler = IPAdapterTimeImageProjection(embed_dim=IMAGE_EMBED, output_dim=hidden, hidden_dim=SD3_IP_HIDDEN,
                                             heads=SD3_IP_HIDDEN // 64, num_queries=IP_TOKENS, timestep_in_dim=32)
    tensors = {}
    for key, value in resampler.state_dict().items():
        if key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            for ours, theirs in _INSTANTX_NAMES:
                if rest.startswith(ours + "."):
                    rest = theirs + rest[len(ours):]
                    break
            key = f"layers.{index}.{rest}"
        tensors[f"image_proj.{key}"] = value.clone()
    generator = torch.Generator().manual_seed(seed)
    for index in range(len(transformer.attn_processors)):
        processor = SD3IPAdapterJointAttnProcessor2_0(hidden_size=hidden, ip_hidden_states_dim=hidden,
                                                      head_dim=transformer.config.attention_head_dim,
                                                      timesteps_emb_dim=SD3_IP_HIDDEN)
        for key, value in processor.state_dict().items():
            # fresh norms are ones / zeros and AdaLayerNorm's linear random: give every weight some spread
            tensors[f"ip_adapter.{index}.{key}"] = value + torch.randn(value.shape, generator=generator) * 0.2
    return tensors


def save_sd3_ip_adapter(transformer: torch.nn.Module, folder: Path, *, name: str = "ip-adapter_sd3_tiny.safetensors",
                        with_encoder: bool = True) -> Path:
    """`folder/name` in InstantX's layout + a tiny SigLIP vision encoder in `folder/image_encoder/`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd3_ip_adapter_state_dict(transformer), folder / name)
    if with_encoder:
        build_siglip_encoder().save_pretrained(folder / "image_encoder")
    return folder / name


# -- learned preprocessors -------------------------------------------------------------------------


def save_depth_model(folder: Path) -> Path:
    """A tiny random Depth Anything (DINOv2 backbone, DPT head) with its image processor's config, in the layout
    of depth-anything/Depth-Anything-V2-Small-hf (preprocessors.py reads that from the Hugging Face cache)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    torch.manual_seed(SEED)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 8, 8],
                                 fusion_hidden_size=8, head_hidden_size=8, patch_size=14,
                                 depth_estimation_type="relative")
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(folder)
    # the real processor's settings, at a tiny size (the real one resizes to 518, a multiple of the 14 px patch)
    DPTImageProcessorPil(do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resample=3, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder
