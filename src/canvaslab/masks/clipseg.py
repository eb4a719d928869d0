"""Words -> mask with CLIPSeg (transformers' CLIPSegForImageSegmentation): a per-pixel score for each
phrase, thresholded.

CLIPSeg reads a fixed square (352 x 352 for the released model: its processor resizes without keeping
the aspect ratio) and answers at that size; the score map is resized back to the image bilinearly, so
a pixel's score is the model's at the same relative position. Several phrases give one map each; the
mask is their union. Its processor's image half is ViTImageProcessorPil in transformers 5.23 (Pillow,
no torchvision).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from canvaslab.masks.models import MaskModel, load_failure, loaded

DEFAULT_THRESHOLD = 0.4  # sigmoid score; CLIPSeg's own examples cut at 0.4-0.5


class TextSegmenter:
    """A CLIPSeg model on a device."""

    def __init__(self, model: MaskModel, device: str) -> None:
        import torch
        from transformers import AutoProcessor, CLIPSegForImageSegmentation

        self.model_info, self.device, self._torch = model, device, torch
        try:
            self.processor = AutoProcessor.from_pretrained(model.folder, local_files_only=True)
            self.model = CLIPSegForImageSegmentation.from_pretrained(model.folder, local_files_only=True).to(device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise load_failure(model, exc) from None

    def scores(self, rgb: np.ndarray, phrases: list[str]) -> np.ndarray:
        """(phrases, H, W) float32 scores in [0, 1] at the image's size."""
        torch = self._torch
        inputs = self.processor(text=phrases, images=[rgb] * len(phrases), padding=True, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.inference_mode():
            logits: Any = self.model(**inputs).logits
            if logits.ndim == 2:  # one phrase: some versions drop the batch axis
                logits = logits[None]
            full = torch.nn.functional.interpolate(
                logits[:, None].float(), size=rgb.shape[:2], mode="bilinear", align_corners=False
            )[:, 0]
        return torch.sigmoid(full).cpu().numpy().astype(np.float32)

    def mask(self, rgb: np.ndarray, phrases: list[str], threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, float]:
        """The pixels any phrase scores above `threshold`, and the highest score seen."""
        scores = self.scores(rgb, phrases)
        return (scores > threshold).any(axis=0), float(scores.max())


def text_segmenter(model: MaskModel, device: str) -> TextSegmenter:
    return loaded(model, device, TextSegmenter)  # type: ignore[no-any-return]
