"""CLIP metrics, from one set of embeddings per case (transformers' CLIP, from a local folder):

- clip_score: max(100 cos(E_I(output), E_T(text)), 0), torchmetrics' CLIPScore (Hessel et al. without
  their 2.5 weight); the text is the output caption when the case has one, else the prompt or the
  instruction;
- clip_t: cos(E_I(output), E_T(text)), MagicBrush's CLIP-T;
- clip_i: cos(E_I(output), E_I(reference)), MagicBrush's CLIP-I;
- clip_img: cos(E_I(output), E_I(input)), InstructPix2Pix's "CLIP image similarity" (edits only:
  how much of the input survived);
- clip_dir: cos(E_I(output) - E_I(input), E_T(output caption) - E_T(input caption)),
  InstructPix2Pix's directional CLIP similarity (edits with both captions).

Images go through the folder's own preprocessing (CLIPImageProcessorPil: the PIL implementation, no
torchvision), texts through its tokenizer, truncated to the model's context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from canvaslab.errors import ModelNotAvailableError
from canvaslab.eval.metrics.base import Metric, Sample
from canvaslab.eval.metrics.weights import Weights

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


def load_clip(name: str) -> tuple[Any, Any, Any]:
    """(model, image processor, tokenizer) from a folder or a hub id in the local cache, offline."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    local = Path(name).expanduser()
    source = str(local) if local.exists() else name
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=True)
        processor = CLIPImageProcessorPil.from_pretrained(source, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelNotAvailableError(
            f"the CLIP metrics need a transformers CLIP model (config, weights, preprocessor_config.json, tokenizer) "
            f"at {name}, which is not on this machine ({first}); pass --clip DIR or a hub id already in HF_HOME"
        ) from None
    return model.eval().requires_grad_(False), processor, tokenizer


def _unit(x: Any) -> Any:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _tensor(output: Any) -> Any:
    # transformers 5 may return a model output with the projected embeddings as pooler_output
    return output if hasattr(output, "norm") else output.pooler_output


class CLIPMetrics(Metric):
    names: ClassVar[tuple[str, ...]] = ("clip",)
    columns: ClassVar[dict[str, bool | None]] = {
        "clip_score": True, "clip_t": True, "clip_i": True, "clip_dir": True, "clip_img": None,
    }
    needs_input = True

    def __init__(self, wanted: list[str], weights: Weights) -> None:
        super().__init__(wanted, weights)
        self.model, self.processor, self.tokenizer = load_clip(weights.clip or DEFAULT_MODEL)
        self.model.to(weights.device)

    def image_embeddings(self, images: list[np.ndarray]) -> Any:
        import torch

        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return _unit(_tensor(self.model.get_image_features(pixel_values=pixels.to(self.weights.device))).float())

    def text_embeddings(self, texts: list[str]) -> Any:
        import torch

        limit = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        with torch.inference_mode():
            features = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.weights.device),
                                                    attention_mask=tokens["attention_mask"].to(self.weights.device))
        return _unit(_tensor(features).float())

    def score(self, samples: list[Sample]) -> list[dict[str, Any]]:
        out = self.image_embeddings([s.output for s in samples])
        rows: list[dict[str, Any]] = [{} for _ in samples]
        self._with_texts(samples, out, rows)
        self._with_images(samples, out, rows, "reference", "clip_i")
        self._with_images(samples, out, rows, "input", "clip_img")
        self._directional(samples, out, rows)
        return rows

    def _with_texts(self, samples: list[Sample], out: Any, rows: list[dict]) -> None:
        picked = [(i, s.output_caption or s.text) for i, s in enumerate(samples) if s.output_caption or s.text]
        if not picked:
            return
        texts = self.text_embeddings([t for _, t in picked])
        for (i, _), text in zip(picked, texts):
            cos = float((out[i] * text).sum())
            rows[i].update(clip_t=cos, clip_score=max(100.0 * cos, 0.0))

    def _with_images(self, samples: list[Sample], out: Any, rows: list[dict], attribute: str, column: str) -> None:
        picked = [(i, getattr(s, attribute)) for i, s in enumerate(samples) if getattr(s, attribute) is not None]
        if not picked or (attribute == "input" and any(s.mask is not None for s in samples)):
            return  # an inpainting input is the blanked image: similarity to it means nothing
        other = self.image_embeddings([image for _, image in picked])
        for (i, _), embedding in zip(picked, other):
            rows[i][column] = float((out[i] * embedding).sum())

    def _directional(self, samples: list[Sample], out: Any, rows: list[dict]) -> None:
        picked = [i for i, s in enumerate(samples) if s.input is not None and s.input_caption and s.output_caption]
        if not picked:
            return
        inputs = self.image_embeddings([samples[i].input for i in picked])
        before = self.text_embeddings([samples[i].input_caption for i in picked])
        after = self.text_embeddings([samples[i].output_caption for i in picked])
        image_dir = _unit(out[picked] - inputs)
        text_dir = _unit(after - before)
        for k, i in enumerate(picked):
            rows[i]["clip_dir"] = float((image_dir[k] * text_dir[k]).sum())
