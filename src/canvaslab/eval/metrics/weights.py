"""Where learned metrics find their weights: local files only, never a download.

Looked for, first match wins: the folder given with ``--weights DIR`` (Python: `Weights(folder=...)`),
``$CANVASLAB_EVAL_WEIGHTS``, then torch's hub cache (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``), where pytorch-fid, lpips and torchvision leave the same files, so
people who have used those tools already have them. Each file keeps its published name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from canvaslab.errors import ModelNotAvailableError


def torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(home) / "hub" / "checkpoints"


@dataclass
class Weights:
    """Where to look for weight files, and how to run the networks."""

    folder: Path | None = None
    clip: str | None = None  # a transformers CLIP folder, or a hub id already in the local cache
    device: str = "cpu"
    seed: int = 0  # KID subsets and IS splits

    def folders(self) -> list[Path]:
        found = [self.folder] if self.folder is not None else []
        if os.environ.get("CANVASLAB_EVAL_WEIGHTS"):
            found.append(Path(os.environ["CANVASLAB_EVAL_WEIGHTS"]))
        found.append(torch_hub_checkpoints())
        return found

    def find(self, *names: str, what: str, source: str) -> Path:
        """The first existing file among `names` (paths relative to each folder), or one sentence saying
        which file is missing, where it was looked for, and where it comes from."""
        for folder in self.folders():
            for name in names:
                if (folder / name).is_file():
                    return folder / name
        where = ", ".join(str(f) for f in self.folders())
        raise ModelNotAvailableError(
            f"{what}: {names[0]} is not in {where}; put the file there or pass --weights DIR (it comes from {source})"
        )
