"""canvaslab: masked image completion (inpaint, outpaint, ...) from the CLI, Python and HTTP.

    import canvaslab
    result = canvaslab.inpaint("photo.jpg", "mask.png", engine="patchmatch", seed=1)
    result.save("out.png")            # the PNG carries its recipe
    wider = canvaslab.outpaint("photo.jpg", right=256, steps=2)
    winter = canvaslab.edit("photo.jpg", instruction="make it winter")
    image = canvaslab.generate(prompt="a lighthouse at dawn", seed=7)
    answers = canvaslab.understand("photo.jpg", questions=["What is in the picture?"])  # Show-o
    tile = canvaslab.texture_seamless("wood.jpg", axes="both")  # tiles without a seam
    canvaslab.seam_report(tile.image).seamless                    # True when no seam shows
    spoon = canvaslab.make_mask("photo.jpg", points=[(320, 240)]).mask  # Segment Anything; also text=, auto=

Names are imported on first use so that `import canvaslab` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "inpaint": "canvaslab.tasks.inpaint",
    "outpaint": "canvaslab.tasks.outpaint",
    "edit": "canvaslab.tasks.edit",
    "generate": "canvaslab.tasks.generate",
    "understand": "canvaslab.tasks.understand",
    "texture_seamless": "canvaslab.tasks.texture",
    "seam_report": "canvaslab.core.seams",
    "make_mask": "canvaslab.tasks.mask",
    "MaskRequest": "canvaslab.tasks.requests",
    "Result": "canvaslab.tasks.result",
    "InpaintRequest": "canvaslab.tasks.requests",
    "OutpaintRequest": "canvaslab.tasks.requests",
    "EditRequest": "canvaslab.tasks.requests",
    "GenerateRequest": "canvaslab.tasks.requests",
    "UnderstandRequest": "canvaslab.tasks.requests",
    "TextureRequest": "canvaslab.tasks.requests",
    "load_image": "canvaslab.core.image",
    "load_mask": "canvaslab.core.image",
    "read_metadata": "canvaslab.core.metadata",
    "CanvaslabError": "canvaslab.errors",
    "InputError": "canvaslab.errors",
    "EngineError": "canvaslab.errors",
}

_SUBPACKAGES = ("video",)  # canvaslab.video.inpaint(...) after a plain `import canvaslab`

__all__ = ["__version__", *_LAZY, *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"canvaslab.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'canvaslab' has no attribute {name!r}")
