"""Words -> boxes with an open-vocabulary detector (OWL-ViT, OWLv2, Grounding DINO, through transformers'
zero-shot object detection classes), which SAM then turns into masks (the "grounded SAM" recipe).

Each detector's processor has a Pillow image half in transformers 5.23 (OwlViTImageProcessorPil,
Owlv2ImageProcessorPil, GroundingDinoImageProcessorPil) and maps boxes back to image pixels itself
(`post_process_grounded_object_detection` with the image's size; OWLv2's square padding included).
Grounding DINO reads one text of phrases each ending in "." ("the spoon. the cup."), OWL one text per phrase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from canvaslab.masks.models import MaskModel, load_failure, loaded

DEFAULT_BOX_THRESHOLD = 0.3  # the sd-webui-segment-anything extension's default box threshold
MAX_BOXES = 16  # the highest-scoring boxes SAM is given (each one is a mask decode)


@dataclass(frozen=True)
class Box:
    xyxy: tuple[float, float, float, float]  # image pixels: left, top, right, bottom
    score: float
    phrase: str


class Detector:
    """An open-vocabulary detector on a device."""

    def __init__(self, model: MaskModel, device: str) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.model_info, self.device, self._torch = model, device, torch
        try:
            self.processor = AutoProcessor.from_pretrained(model.folder, local_files_only=True)
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(
                model.folder, local_files_only=True
            ).to(device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise load_failure(model, exc) from None
        self.grounding = model.model_type in ("grounding-dino", "mm-grounding-dino")

    def boxes(self, rgb: np.ndarray, phrases: list[str], threshold: float = DEFAULT_BOX_THRESHOLD) -> list[Box]:
        """Boxes scoring at least `threshold` for any phrase, best first (at most MAX_BOXES)."""
        torch = self._torch
        size = [rgb.shape[:2]]
        if self.grounding:
            text = " ".join(p.strip().rstrip(".").lower() + "." for p in phrases)
            inputs = self.processor(images=rgb, text=text, return_tensors="pt")
        else:
            inputs = self.processor(images=rgb, text=[phrases], padding="max_length", truncation=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        if self.grounding:
            [found] = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=threshold, text_threshold=threshold, target_sizes=size
            )
            labels = [_phrase(str(label), phrases) for label in (found["text_labels"] if "text_labels" in found else found["labels"])]
        else:
            [found] = self.processor.post_process_grounded_object_detection(
                outputs, threshold=threshold, target_sizes=size, text_labels=[phrases]
            )
            labels = [str(label) for label in found["text_labels"]]
        height, width = rgb.shape[:2]
        boxes = []
        for xyxy, score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), labels):
            x0, y0, x1, y1 = (min(max(v, 0.0), limit) for v, limit in zip(xyxy, (width, height, width, height)))
            if x1 - x0 >= 1 and y1 - y0 >= 1:  # a box under a pixel wide (clipped at the border) holds nothing
                boxes.append(Box((x0, y0, x1, y1), float(score), label))
        boxes.sort(key=lambda box: -box.score)
        return boxes[:MAX_BOXES]


def _phrase(label: str, phrases: list[str]) -> str:
    """Grounding DINO's label is the decoded tokens above the text threshold ("the spoon. [SEP]"): the
    given phrase it names, else the label without special tokens and dots."""
    words = " ".join(word for word in label.replace(".", " ").split() if not (word.startswith("[") and word.endswith("]")))
    for phrase in phrases:
        if words == phrase.strip().rstrip(".").lower():
            return phrase
    return words


def detector(model: MaskModel, device: str) -> Detector:
    return loaded(model, device, Detector)  # type: ignore[no-any-return]
