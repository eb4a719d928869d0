"""Video: frames in, frames out. Object removal from a clip by flow-guided propagation around any image engine.

    import canvaslab.video
    result = canvaslab.video.inpaint("clip.mp4", "mask.png", "clean.mp4", grow=4, seed=1)
    result.path, result.frames, result.key_frames     # the engine painted only the key frames
    canvaslab.video.track("clip.mp4", "first-frame-mask.png", "masks/")   # masks for every frame, to correct

See docs/video.md. Names load on first use: PyAV and OpenCV only when a clip is read.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "inpaint": "canvaslab.video.inpainting",
    "VideoResult": "canvaslab.video.inpainting",
    "track": "canvaslab.video.tracking",
    "TrackResult": "canvaslab.video.tracking",
    "VideoInpaintRequest": "canvaslab.video.requests",
    "TrackRequest": "canvaslab.video.requests",
    "synthetic_clip": "canvaslab.video.synthetic",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'canvaslab.video' has no attribute {name!r}")
