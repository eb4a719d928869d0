"""What every task returns: the image, the mask that was filled, and the recipe that made it.

What a saved output remembers (`MetadataMode`): by default the A1111 `parameters` text and the
complete recipe, with the local paths of inputs and models so that `canvaslab replay` finds them on
this machine. `private` keeps those paths out (file and folder names and sha256 instead; replay
then finds inputs by name and hash beside the image, models by hash among those hashed here, or
takes --image/--model), for images that leave the machine. The parameters never hold a path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from canvaslab.core.metadata import lora_sha256, model_sha256
from canvaslab.tasks.requests import PATH_OPTIONS, display_name, local_path, parse_lora


class MetadataMode(str, Enum):
    """What a saved output says about how it was made."""

    full = "full"  # parameters + the complete recipe, local paths included (replay here)
    private = "private"  # parameters + the recipe with names and hashes instead of local paths (to share)
    none = "none"  # neither


@dataclass
class Result:
    """The output of a task.

    `image` is HxWx3 uint8 RGB at the output size; `alpha` is re-attached on save when the input had
    one; `mask` marks the pixels the task generated (in output coordinates); `recipe` is the complete
    JSON-able request (with the seed actually used) that `canvaslab replay` re-runs; `parameters` is
    the same recipe as AUTOMATIC1111's `parameters` text.
    """

    image: np.ndarray
    mask: np.ndarray
    seed: int
    recipe: dict[str, Any]
    parameters: str
    alpha: np.ndarray | None = None
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    def to_pil(self) -> Image.Image:
        if self.alpha is not None:
            return Image.fromarray(np.dstack([self.image, self.alpha]), "RGBA")
        return Image.fromarray(self.image, "RGB")

    def encode(self, format: str = "png", quality: int = 95, *, metadata: MetadataMode | str = "full") -> bytes:
        from canvaslab.core.image import encode_image

        return encode_image(
            self.image, alpha=self.alpha, format=format, quality=quality,
            parameters=None if MetadataMode(metadata) == MetadataMode.none else self.parameters,
            recipe=recipe_to_write(self.recipe, metadata),
        )

    def save(
        self, path: str | Path, *, format: str | None = None, quality: int = 95, metadata: MetadataMode | str = "full",
    ) -> Path:
        """Write atomically, with the recipe embedded (PNG text chunks or EXIF for JPEG/WebP) as `metadata` says."""
        from canvaslab.core.image import save_image

        # The quality travels with the recipe: replay needs it to compare lossy outputs pixel for pixel.
        recipe = recipe_to_write({**self.recipe, "output": {"quality": quality}}, metadata)
        return save_image(
            path, self.image, alpha=self.alpha, format=format, quality=quality,
            parameters=None if MetadataMode(metadata) == MetadataMode.none else self.parameters, recipe=recipe,
        )


def recipe_to_write(recipe: dict[str, Any], metadata: MetadataMode | str) -> dict[str, Any] | None:
    """The recipe as an output stores it: with the sha256 of every local model and LoRA ("models"),
    and, when private, names instead of local paths. None for `none`."""
    mode = MetadataMode(metadata)
    if mode == MetadataMode.none:
        return None
    if not isinstance(recipe.get("request"), dict):
        return recipe
    models = model_identities(recipe["request"])
    recipe = {**recipe, **({"models": models} if models else {})}
    return private_recipe(recipe) if mode == MetadataMode.private else recipe


def model_identities(request: dict[str, Any]) -> dict[str, Any]:
    """Name and sha256 of the request's local model and LoRAs (aliases and hub ids are names already)."""
    identities: dict[str, Any] = {}
    model = request.get("model")
    if isinstance(model, str) and (path := local_path(model)) is not None:
        identities["model"] = {"name": display_name(model), "sha256": model_sha256(path)}
    loras = [
        {"name": display_name(name), "weight": weight, "sha256": lora_sha256(path)}
        for name, weight in map(parse_lora, request.get("lora") or []) if (path := local_path(name)) is not None
    ]
    if loras:
        identities["lora"] = loras
    return identities


def private_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """`recipe` without local paths: models, LoRAs, configs, frames and inputs by name (hashes stay)."""
    request = dict(recipe["request"])
    if isinstance(request.get("model"), str):
        request["model"] = display_name(request["model"])
    if request.get("lora"):
        request["lora"] = [f"{display_name(name)}:{weight:g}" for name, weight in map(parse_lora, request["lora"])]
    if request.get("cache_dir") is not None:
        request["cache_dir"] = None  # where models are cached says nothing about the image
    if isinstance(request.get("frames"), str):
        request["frames"] = Path(request["frames"]).name
    if request.get("control"):
        request["control"] = [{**unit, "model": display_name(unit["model"]),
                               "image": Path(unit["image"]).name if unit.get("image") else None}
                              for unit in request["control"] if isinstance(unit, dict)]
    if request.get("ip_adapter"):
        request["ip_adapter"] = [{**item, "model": display_name(item["model"]),
                                  "images": [Path(i).name for i in item["images"]],
                                  "encoder": display_name(item["encoder"]) if item.get("encoder") else None}
                                 for item in request["ip_adapter"] if isinstance(item, dict)]
    if isinstance(request.get("options"), dict):
        request["options"] = {
            key: display_name(value) if key in PATH_OPTIONS and isinstance(value, str) else value
            for key, value in request["options"].items()
        }
    inputs = recipe.get("inputs") or {}
    # inpaint and friends name their inputs ({"image": {...}}); understand lists one entry per image
    inputs = ([_private_input(entry) for entry in inputs] if isinstance(inputs, list)
              else {name: _private_input(entry) for name, entry in inputs.items()})
    return {**recipe, "request": request, "inputs": inputs, "private": True}


def _private_input(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    out = dict(entry)
    if out.get("path"):
        out["name"], out["path"] = Path(out["path"]).name, None
    if isinstance(out.get("files"), list):
        out["files"] = [_private_input(item) for item in out["files"]]
    if isinstance(out.get("made"), dict) and isinstance(out["made"].get("request"), dict):
        out["made"] = private_recipe(out["made"])  # a mask's own recipe names its image too
    return out
