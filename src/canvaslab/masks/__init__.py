"""Masks without painting: by click (Segment Anything), by words (CLIPSeg, or a detector's boxes fed to
SAM), by rule (watermarks, text, damage), and mask editing (ops).

A layer between the engines and the tasks: it builds on the engines' device handling, and the tasks
(`canvaslab mask`, its batch, replay, the server's Select tool) build on it. Mask sources take plain
arrays and settings, never request models, so they stay usable on their own:

    from canvaslab.masks import rule
    mask = rule("damage")(rgb)                       # HxW bool, True = fill

Adding a rule means one line in RULES and one small module with a function and its Options model;
adding a model kind, one line in models.KIND_OF and a module like sam.py, clipseg.py or detect.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

# name -> "module:function" and "module:Options"; imported only when used
RULES: dict[str, tuple[str, str]] = {
    "damage": ("canvaslab.masks.damage:find_damage", "canvaslab.masks.damage:DamageOptions"),
    "text": ("canvaslab.masks.text:find_text", "canvaslab.masks.text:TextOptions"),
    "watermark": ("canvaslab.masks.watermark:find_watermark", "canvaslab.masks.watermark:WatermarkOptions"),
}
# Rules that look at many images at once (and make one mask for all of them).
FOLDER_RULES = frozenset({"watermark"})


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def rule(name: str) -> Callable[..., Any]:
    """The function of rule `name`: (rgb or list of rgb, options) -> HxW bool mask."""
    return _load(RULES[name][0])  # type: ignore[no-any-return]


def rule_options(name: str) -> type[BaseModel]:
    """The rule's options model (the `--opt KEY=VALUE` it takes)."""
    return _load(RULES[name][1])  # type: ignore[no-any-return]
