"""The video inpaint request: the inpaint fields (engine, seed, mask reading, grow, feather, ...: they
drive the image engine that paints what no frame shows) plus how frames are filled over time.

Like every request model it is the one definition the CLI flags (`canvaslab video inpaint`), the
Python keywords (`canvaslab.video.inpaint`) and the HTTP fields (`POST /api/v1/video/inpaint`) come from.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from canvaslab import __version__
from canvaslab.tasks.requests import InpaintArea, InpaintRequest, MaskMode, Tiling


class VideoMethod(str, Enum):
    """How the holes of a clip are filled."""

    propagate = "propagate"  # flow-guided propagation from the other frames, the engine only for what none shows
    per_frame = "per-frame"  # the engine on every frame, the previous result warped in and blended


class FlowPreset(str, Enum):
    ultrafast = "ultrafast"
    fast = "fast"
    medium = "medium"


def _video(**extra: object) -> dict[str, object]:
    return {"panel": "Video", **extra}


class VideoInpaintRequest(InpaintRequest):
    """Remove what the masks cover from every frame of a clip."""

    method: VideoMethod = Field(
        VideoMethod.propagate, description="propagate: fill each hole with what the neighbouring frames show there "
        "(optical flow), and paint only what no frame shows with the engine, on key frames; per-frame: the engine on "
        "every frame, each starting from the previous result (see --temporal-blend)", json_schema_extra=_video(),
    )
    window: int = Field(
        24, ge=2, le=1000, description="frames filled together (memory grows with it, not with the clip's length)",
        json_schema_extra=_video(metavar="FRAMES"),
    )
    context: int = Field(
        12, ge=0, le=1000, description="frames on each side of a window its holes may take content from",
        json_schema_extra=_video(metavar="FRAMES"),
    )
    flow_size: int = Field(
        512, ge=64, le=8192, description="long side (px) optical flow is computed at (smaller: faster, coarser)",
        json_schema_extra=_video(metavar="PX"),
    )
    flow_preset: FlowPreset = Field(
        FlowPreset.medium, description="OpenCV DIS optical flow preset: ultrafast, fast or medium (most accurate)",
        json_schema_extra=_video(),
    )
    temporal_blend: float = Field(
        0.5, ge=0, le=1, description="--method per-frame: share of the previous result (warped by the flow) in each "
        "filled pixel; 0 fills every frame on its own", json_schema_extra=_video(),
    )
    track: bool = Field(
        False, description="the masks are key frames (one image: the first frame; a folder: the frames it names): "
        "carry them to the other frames by the optical flow", json_schema_extra=_video(),
    )
    start: int | None = Field(
        None, ge=0, description="first frame to process (0-based) [default: the first]; the output is frames "
        "start..end-1, audio cut to match", json_schema_extra=_video(metavar="FRAME"),
    )
    end: int | None = Field(
        None, ge=1, description="frame to stop before [default: the clip's end]", json_schema_extra=_video(metavar="FRAME"),
    )
    fps: float | None = Field(
        None, ge=0.001, le=1000, description="frame rate of a frames folder (a video file has its own) [default: 25]; "
        "at least 0.001, the slowest rate the video writer holds",
        json_schema_extra=_video(),
    )

    @model_validator(mode="after")
    def _what_video_does_not_take(self) -> VideoInpaintRequest:
        if self.soft:
            raise ValueError("--soft is not available for video: propagation fills whole pixels; use --feather for a soft edge")
        if self.tiling != Tiling.none:
            raise ValueError("--tiling does not apply to video: frames do not wrap around")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"--end {self.end} must be after --start {self.start}")
        if self.method == VideoMethod.propagate and self.temporal_blend != type(self).model_fields["temporal_blend"].default:
            raise ValueError("--temporal-blend applies to --method per-frame (propagation blends by itself): leave it out")
        return self

    def frame_request(self) -> InpaintRequest:
        """The inpaint request one frame's fill runs with: this one's fields, with the hole already grown and
        the edge feathered once, in the final composite."""
        fields = {name: getattr(self, name) for name in InpaintRequest.model_fields}
        fields.update(grow=0, feather=0.0)
        return InpaintRequest.model_validate(fields)

    def a1111_settings(self, size: tuple[int, int], seed: int) -> dict[str, object]:
        settings = super().a1111_settings(size, seed)
        settings.pop("Version", None)
        if self.area == InpaintArea.whole:
            settings.pop("Inpaint area", None)
        settings["Video method"] = self.method.value
        if self.method == VideoMethod.propagate:
            settings.update({"Video window": self.window, "Video context": self.context, "Flow size": self.flow_size,
                             "Flow preset": self.flow_preset.value})
        else:
            settings["Temporal blend"] = self.temporal_blend
        if self.track:
            settings["Mask tracking"] = True
        settings["Version"] = f"canvaslab {__version__}"
        return settings


class TrackRequest(BaseModel):
    """Carry masks drawn on key frames to every frame of a clip (`canvaslab video track`)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=True)

    mask_mode: MaskMode = InpaintRequest.model_fields["mask_mode"]
    threshold: int = InpaintRequest.model_fields["threshold"]
    start: int | None = VideoInpaintRequest.model_fields["start"]
    end: int | None = VideoInpaintRequest.model_fields["end"]
    fps: float | None = VideoInpaintRequest.model_fields["fps"]
    flow_size: int = VideoInpaintRequest.model_fields["flow_size"]
    flow_preset: FlowPreset = VideoInpaintRequest.model_fields["flow_preset"]

    @model_validator(mode="after")
    def _range(self) -> TrackRequest:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"--end {self.end} must be after --start {self.start}")
        if self.mask_mode == MaskMode.alpha:
            raise ValueError("--mask-mode alpha is for images with transparency; tracking reads key masks: white or black")
        return self
