"""Segment Anything (SAM, SAM-HQ, SAM 2) through transformers: one image embedding, many prompts.

The image encoder is the slow part (a ViT over 1024 x 1024: seconds on a CPU); the prompt encoder and
mask decoder take milliseconds. So an image is embedded once and kept (`EmbeddingCache`, keyed by the
model and the image's pixels), and every click after the first reuses it: that is what makes clicking
feel live, in the CLI's repeated calls within one process and in the server's Select tool.

Coordinates are image pixels as displayed (EXIF orientation applied by core.image), x to the right and
y down. SAM and SAM-HQ scale the long side to the model's size and pad the rest (their processor,
`SamImageProcessorPil`, does it and maps masks back); points follow the same scale per axis. SAM 2 has
only a torchvision image processor in transformers 5.23, so its documented preprocessing is done here
with Pillow: a plain resize to the model's square size, ImageNet mean/std from its
preprocessor_config.json; masks come back by the bilinear resize its processor uses.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from canvaslab.errors import InputError
from canvaslab.masks.models import MaskModel, load_failure, loaded

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_THRESHOLD = 0.0  # SAM's decoder logits: > 0 is inside the object


@dataclass(frozen=True)
class Prompt:
    """Where the object is: points (x, y) with labels (1 = on it, 0 = not on it) and/or boxes (x0, y0, x1, y1).

    Several boxes give one mask each (united); points then belong to none of them and are refused.
    """

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    def check(self, size: tuple[int, int]) -> None:
        width, height = size
        if not self.points and not self.boxes:
            raise InputError("SAM needs a point (--point X,Y) or a box (--box X0,Y0,X1,Y1) on the object")
        if len(self.labels) != len(self.points):
            raise InputError(f"{len(self.points)} points but {len(self.labels)} labels")
        if not any(self.labels) and not self.boxes:
            raise InputError("only negative points: add a --point on the object (or a --box around it)")
        if self.points and len(self.boxes) > 1:
            raise InputError("points go with at most one box: each of several boxes makes a mask of its own")
        for x, y in self.points:
            if not (0 <= x < width and 0 <= y < height):
                raise InputError(f"point {_num(x)},{_num(y)} is outside the {width}x{height} image")
        for x0, y0, x1, y1 in self.boxes:
            if not (x0 < x1 and y0 < y1):
                raise InputError(f"box {_num(x0)},{_num(y0)},{_num(x1)},{_num(y1)} must have x0 < x1 and y0 < y1")
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise InputError(f"box {_num(x0)},{_num(y0)},{_num(x1)},{_num(y1)} lies outside the {width}x{height} image")


@dataclass
class Proposals:
    """SAM's candidate masks for one prompt (HxW bool each, best first by predicted IoU) and their scores."""

    masks: list[np.ndarray]
    scores: list[float]
    cached: bool = False  # the image embedding was reused, not computed

    @property
    def best(self) -> np.ndarray:
        return self.masks[0]


@dataclass
class Embedding:
    """An image's encoder output and the geometry needed to map prompts in and masks out."""

    features: Any  # what the model's decoder takes: a tensor (SAM), (tensor, list) (SAM-HQ), a list (SAM 2)
    original: tuple[int, int]  # (height, width) of the image
    resized: tuple[int, int]  # (height, width) the image was scaled to before padding


class EmbeddingCache:
    """The last few image embeddings, each dropped `ttl` seconds after its last use (a server's "for a while").

    Keys are (model folder, sha256 of the pixels), so the same picture opened twice is embedded once.
    `hits`/`misses` count lookups (the server reports whether a click reused an embedding).
    """

    def __init__(self, size: int = 4, ttl: float | None = None) -> None:
        self.size, self.ttl = size, ttl
        self._items: OrderedDict[tuple[str, str], tuple[float, Embedding]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, str]) -> Embedding | None:
        with self._lock:
            self._expire()
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items[key] = (time.monotonic(), found[1])
            self._items.move_to_end(key)
            self.hits += 1
            return found[1]

    def put(self, key: tuple[str, str], value: Embedding) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def has(self, key: tuple[str, str]) -> bool:
        with self._lock:
            self._expire()
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _expire(self) -> None:
        if self.ttl is None:
            return
        now = time.monotonic()
        for key in [k for k, (used, _) in self._items.items() if now - used > self.ttl]:
            del self._items[key]


# One per process: CLI calls within a process and every server request share it.
EMBEDDINGS = EmbeddingCache()


def image_digest(rgb: np.ndarray) -> str:
    """sha256 of the pixels and their shape: the embedding cache's key for an image."""
    digest = hashlib.sha256(f"{rgb.shape}".encode())
    digest.update(np.ascontiguousarray(rgb).data)
    return digest.hexdigest()


class Segmenter:
    """A SAM-family model on a device, ready to embed images and decode prompts."""

    def __init__(self, model: MaskModel, device: str) -> None:
        import torch
        import transformers

        self.model_info, self.device = model, device
        self.family = model.model_type  # "sam", "sam_hq" or "sam2"
        classes = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model"}
        try:
            self.model = getattr(transformers, classes[self.family]).from_pretrained(
                model.folder, local_files_only=True
            ).to(device).eval()
            if self.family == "sam2":
                self.size, self.mean, self.std = _sam2_preprocessing(model.folder, self.model.config)
            else:
                from transformers import SamImageProcessorPil

                # The Pil processor, explicitly: the default one needs torchvision, which we do not install.
                self.processor = SamImageProcessorPil.from_pretrained(model.folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise load_failure(model, exc) from None
        self._torch = torch

    # -- image ----------------------------------------------------------------------------------

    def embed(self, rgb: np.ndarray, cache: EmbeddingCache = EMBEDDINGS) -> tuple[Embedding, bool]:
        """The image's embedding, from `cache` when it is there; and whether it was."""
        key = (f"{self.model_info.folder}|{self.device}", image_digest(rgb))
        found = cache.get(key)
        if found is not None:
            return found, True
        embedding = self._encode(rgb)
        cache.put(key, embedding)
        return embedding, False

    def _encode(self, rgb: np.ndarray) -> Embedding:
        torch = self._torch
        height, width = rgb.shape[:2]
        with torch.inference_mode():
            if self.family == "sam2":
                pixels = self._sam2_pixels(rgb)
                features = self.model.get_image_embeddings(pixels)
                return Embedding(features, (height, width), (self.size, self.size))
            inputs = self.processor(images=rgb, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device)
            features = self.model.get_image_embeddings(pixels)
            resized = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
            return Embedding(features, (height, width), resized)  # type: ignore[arg-type]

    def _sam2_pixels(self, rgb: np.ndarray) -> Any:
        resized = Image.fromarray(rgb).resize((self.size, self.size), Image.Resampling.BILINEAR)
        values = (np.asarray(resized, np.float32) / 255.0 - self.mean) / self.std
        return self._torch.from_numpy(values.transpose(2, 0, 1).copy())[None].to(self.device)

    # -- prompts --------------------------------------------------------------------------------

    def to_model_frame(self, xy: np.ndarray, embedding: Embedding) -> np.ndarray:
        """Image pixel coordinates (..., 2) as x, y in the model's input frame (what its prompt encoder reads)."""
        (old_h, old_w), (new_h, new_w) = embedding.original, embedding.resized
        out = np.asarray(xy, np.float64).copy()
        out[..., 0] *= new_w / old_w
        out[..., 1] *= new_h / old_h
        return out

    def predict(self, embedding: Embedding, prompt: Prompt, *, multimask: bool = False) -> Proposals:
        """SAM's masks for `prompt`: with `multimask`, its three candidates best first, else its single answer."""
        torch = self._torch
        height, width = embedding.original
        prompt.check((width, height))
        kwargs: dict[str, Any] = {}
        if prompt.points:
            points = self.to_model_frame(np.array(prompt.points), embedding)
            kwargs["input_points"] = torch.tensor(points[None, None], dtype=torch.float32, device=self.device)
            kwargs["input_labels"] = torch.tensor([[list(prompt.labels)]], dtype=torch.long, device=self.device)
        if prompt.boxes:
            boxes = self.to_model_frame(np.array(prompt.boxes).reshape(-1, 2, 2), embedding).reshape(-1, 4)
            kwargs["input_boxes"] = torch.tensor(boxes[None], dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            out = self.model(**self._features(embedding), multimask_output=multimask, **kwargs)
            logits = self._to_image(out.pred_masks[0], embedding)  # (prompts, candidates, H, W)
        scores = out.iou_scores[0].float().cpu().numpy()  # (prompts, candidates)
        # Several boxes: candidate k of every box united, scored by their mean predicted IoU.
        masks = (logits > MASK_THRESHOLD).any(dim=0).cpu().numpy()
        mean_scores = scores.mean(axis=0)
        order = np.argsort(-mean_scores, kind="stable")
        return Proposals([masks[i] for i in order], [float(mean_scores[i]) for i in order])

    def _features(self, embedding: Embedding) -> dict[str, Any]:
        if self.family == "sam_hq":
            image_embeddings, intermediate = embedding.features
            return {"image_embeddings": image_embeddings, "intermediate_embeddings": intermediate}
        return {"image_embeddings": embedding.features}

    def _to_image(self, low_res: Any, embedding: Embedding) -> Any:
        """Decoder logits (prompts, candidates, h, w) -> logits at the image's size."""
        torch = self._torch
        if self.family == "sam2":
            return torch.nn.functional.interpolate(
                low_res.float(), embedding.original, mode="bilinear", align_corners=False
            )
        [full] = self.processor.post_process_masks(
            [low_res.float().cpu()], [list(embedding.original)], [list(embedding.resized)], binarize=False
        )
        return full


def segmenter(model: MaskModel, device: str) -> Segmenter:
    """The process's loaded Segmenter for `model` on `device` (loaded on first use)."""
    return loaded(model, device, Segmenter)  # type: ignore[no-any-return]


def _sam2_preprocessing(folder: Path, config: Any) -> tuple[int, np.ndarray, np.ndarray]:
    """SAM 2's square input size and normalisation, from preprocessor_config.json or the model config."""
    size = int(config.vision_config.backbone_config.image_size[0])
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    path = folder / "preprocessor_config.json"
    if path.is_file():
        settings = json.loads(path.read_text())
        size = int((settings.get("size") or {}).get("height", size))
        mean = tuple(settings.get("image_mean", mean))
        std = tuple(settings.get("image_std", std))
    return size, np.array(mean, np.float32), np.array(std, np.float32)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
