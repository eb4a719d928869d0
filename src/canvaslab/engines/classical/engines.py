"""The weight-free engines: our PatchMatch (default) and OpenCV's Telea and Navier-Stokes."""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
from pydantic import Field

from canvaslab.core.progress import check_cancelled, report_progress
from canvaslab.engines.base import Engine, EngineOptions, Generation


class PatchMatchOptions(EngineOptions):
    patch_size: int = Field(7, ge=3, le=31, description="patch width in pixels (odd)")


class PatchMatchEngine(Engine):
    name: ClassVar[str] = "patchmatch"
    description: ClassVar[str] = "exemplar fill that copies texture from the image (multi-scale PatchMatch); sharp, no weights"
    Options: ClassVar[type[EngineOptions]] = PatchMatchOptions

    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int, options: EngineOptions, generation: Generation
    ) -> np.ndarray:
        from canvaslab.engines.classical.patchmatch import patchmatch_inpaint

        # Reports one step per EM iteration and stops within a fraction of a second of a cancel.
        # --tiling: the image is a torus, so patches are found and copied across its edges.
        return patchmatch_inpaint(image, mask, seed=seed, patch_size=options.patch_size, wrap=generation.tiling)


class OpenCVOptions(EngineOptions):
    radius: int = Field(5, ge=1, le=64, description="neighbourhood radius in pixels")


class _OpenCVEngine(Engine):
    Options: ClassVar[type[EngineOptions]] = OpenCVOptions
    flag: ClassVar[int]

    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int, options: EngineOptions, generation: Generation
    ) -> np.ndarray:
        # OpenCV works in BGR; converting both ways keeps our engines RGB in, RGB out.
        check_cancelled()
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        out = cv2.inpaint(bgr, mask.astype(np.uint8) * 255, options.radius, self.flag)
        report_progress(1, 1)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


class TeleaEngine(_OpenCVEngine):
    name: ClassVar[str] = "telea"
    description: ClassVar[str] = "OpenCV fast marching (Telea 2004): smooth, fast, blurs large holes"
    flag: ClassVar[int] = cv2.INPAINT_TELEA


class NavierStokesEngine(_OpenCVEngine):
    name: ClassVar[str] = "ns"
    description: ClassVar[str] = "OpenCV Navier-Stokes (Bertalmio 2001): smooth, for thin scratches"
    flag: ClassVar[int] = cv2.INPAINT_NS
