"""What every metric implements, and what it is given."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from canvaslab.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from canvaslab.eval.metrics.weights import Weights


@dataclass(eq=False)
class Sample:
    """One scored case: the system's output and what it is measured against (uint8 RGB, bool mask)."""

    id: str
    output: np.ndarray
    reference: np.ndarray | None = None
    mask: np.ndarray | None = None  # True = filled by the system
    input: np.ndarray | None = None  # what the system was given (edits: for CLIP's image similarity)
    text: str = ""  # the prompt or the instruction
    input_caption: str = ""
    output_caption: str = ""


class Metric(ABC):
    """A family of metrics computed together (they share a network or a pass over the pixels).

    `names` are what users ask for (``--metrics``); `columns` what the family writes, each with
    whether higher is better (None: no direction, e.g. a standard deviation). `score` returns one dict
    per sample: numbers are that case's values, arrays are features kept for `finish`, which gets
    each feature stacked over all cases and returns the set-level values (FID, KID, ...).
    """

    names: ClassVar[tuple[str, ...]]
    columns: ClassVar[dict[str, bool | None]]
    ideal: ClassVar[dict[str, float]] = {}  # columns with a target value instead of a direction
    needs_input: ClassVar[bool] = False  # load the system's input image too

    def __init__(self, wanted: list[str], weights: Weights) -> None:
        self.wanted = wanted
        self.weights = weights

    @abstractmethod
    def score(self, samples: list[Sample]) -> list[dict[str, Any]]: ...

    def finish(self, features: dict[str, np.ndarray]) -> dict[str, float]:
        return {}


def load_state_dict(path: str | Path, what: str) -> dict[str, Any]:
    """A state dict from a .pth/.pt (tensors only) or .safetensors file, with one-line errors."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise ModelNotAvailableError(f"cannot read {what} from {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelNotAvailableError(f"{path} holds a {type(state).__name__}, not the state dict of {what}")
    return state
