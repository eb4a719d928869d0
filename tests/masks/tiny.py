"""Tiny random mask models built offline from configs and saved as transformers folders, so the tests
load them through the same code real checkpoints take (`masks.models.resolve` + from_pretrained).

SAM and SAM-HQ work at 64 px (embeddings 8 x 8, masks 32 x 32), SAM 2 at 64 px too (a 4-stage Hiera of
8-64 channels); CLIPSeg, OWL-ViT and OWLv2 at 32 px with the tiny CLIP tokenizer of the diffusion tests;
Grounding DINO with a 2-block Swin, a 1-layer BERT and a 12-word vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffusion.tiny import write_tokenizer_files

MODEL_SIZE = 64

_SAM_VISION = dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=MODEL_SIZE,
                   patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8, mlp_dim=32)
_SAM_PROMPT = dict(hidden_size=16, image_size=MODEL_SIZE, patch_size=8, mask_input_channels=4)
_SAM_DECODER = dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16)


def save_sam(folder: Path, family: str = "sam") -> Path:
    """A tiny SAM ("sam"), SAM-HQ ("sam_hq") or SAM 2 ("sam2") folder."""
    import transformers

    torch.manual_seed(0)
    if family == "sam2":
        backbone = dict(model_type="sam2_hiera_det_model", hidden_size=8, num_attention_heads=1,
                        image_size=[MODEL_SIZE, MODEL_SIZE], blocks_per_stage=[1, 1, 2, 1],
                        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                        window_size_per_stage=[2, 2, 2, 2], global_attention_blocks=[3],
                        window_positional_embedding_background_size=[2, 2])
        vision = dict(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                      backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=16)
        config = transformers.Sam2Config(vision_config=vision, prompt_encoder_config=dict(_SAM_PROMPT, patch_size=16),
                                         mask_decoder_config=_SAM_DECODER)
        transformers.Sam2Model(config).eval().save_pretrained(folder)
        # What the released SAM 2 folders carry (for Sam2ImageProcessor, which needs torchvision).
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "Sam2ImageProcessorFast", "size": {"height": MODEL_SIZE, "width": MODEL_SIZE},
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        }))
        return folder
    if family == "sam_hq":
        config = transformers.SamHQConfig(vision_config=_SAM_VISION, prompt_encoder_config=_SAM_PROMPT,
                                          mask_decoder_config=dict(_SAM_DECODER, vit_dim=16))
        model, processor_class = transformers.SamHQModel(config), transformers.SamHQProcessor
    else:
        config = transformers.SamConfig(vision_config=_SAM_VISION, prompt_encoder_config=_SAM_PROMPT,
                                        mask_decoder_config=_SAM_DECODER)
        model, processor_class = transformers.SamModel(config), transformers.SamProcessor
    model.eval().save_pretrained(folder)
    image_processor = transformers.SamImageProcessorPil(
        size={"longest_edge": MODEL_SIZE}, pad_size={"height": MODEL_SIZE, "width": MODEL_SIZE},
        mask_size={"longest_edge": MODEL_SIZE // 4}, mask_pad_size={"height": MODEL_SIZE // 4, "width": MODEL_SIZE // 4},
    )
    processor_class(image_processor=image_processor).save_pretrained(folder)
    return folder


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    assert len(tokenizer) > 2
    return tokenizer


def _clip_text(tokenizer, positions: int) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=positions, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


_CLIP_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                    patch_size=8)


def save_clipseg(folder: Path) -> Path:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessorPil

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_tokenizer(folder)
    config = CLIPSegConfig(text_config=_clip_text(tokenizer, 77), vision_config=_CLIP_VISION, projection_dim=16,
                           reduce_dim=8, extract_layers=[0, 1], decoder_num_attention_heads=2, decoder_intermediate_size=16)
    CLIPSegForImageSegmentation(config).eval().save_pretrained(folder)
    image_processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                                           image_std=[0.229, 0.224, 0.225])
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_owlvit(folder: Path) -> Path:
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessorPil, OwlViTProcessor

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_tokenizer(folder)
    tokenizer.model_max_length = 16
    config = OwlViTConfig(text_config=_clip_text(tokenizer, 16), vision_config=_CLIP_VISION, projection_dim=16)
    OwlViTForObjectDetection(config).eval().save_pretrained(folder)
    image_processor = OwlViTImageProcessorPil(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_owlv2(folder: Path) -> Path:
    """OWLv2 pads the image to a square (bottom and right) before resizing: boxes come back in that square."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_tokenizer(folder)
    tokenizer.model_max_length = 16
    config = Owlv2Config(text_config=_clip_text(tokenizer, 16), vision_config=_CLIP_VISION, projection_dim=16)
    Owlv2ForObjectDetection(config).eval().save_pretrained(folder)
    image_processor = Owlv2ImageProcessorPil(size={"height": 32, "width": 32})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_grounding_dino(folder: Path) -> Path:
    from transformers import (
        BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,
        GroundingDinoProcessor, SwinConfig,
    )

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "the", "spoon", "a", "cup", "cat", "dog"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    backbone = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2, image_size=64,
                          out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32)
    # decoder_layers >= 2: transformers ties the box heads of layers 1.. to layer 0's
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
                                 encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2,
                                 decoder_attention_heads=2, num_queries=10, num_feature_levels=3, max_text_len=32,
                                 encoder_n_points=1, decoder_n_points=1)
    GroundingDinoForObjectDetection(config).eval().save_pretrained(folder)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
