"""Checkpoints: `OUTPUT/checkpoints/step_N/`, newest K kept, exact resume.

A checkpoint is accelerate's `save_state` folder (model or trainable weights, optimizer, LR
scheduler, gradient scaler, every process's RNG states, EMA and our `TrainerState` with the data
position) plus `trainer_state.json`, written last and atomically: a folder without it was cut short
(killed mid-save) and is ignored by `resume=latest` and removed by the pruning.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from canvaslab.core.image import atomic_write_bytes
from canvaslab.errors import InputError

MARKER = "trainer_state.json"
_NAME = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """Where the run is: optimizer steps done, and the data position (epoch, batches of it consumed)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.epoch, self.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])


def checkpoint_dir(output: Path, step: int) -> Path:
    return Path(output) / "checkpoints" / f"step_{step:06d}"


def complete_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """(step, folder) of finished checkpoints, oldest first."""
    root = Path(output) / "checkpoints"
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            match = _NAME.match(folder.name)
            if match and (folder / MARKER).is_file():
                found.append((int(match.group(1)), folder))
    return sorted(found)


def mark_complete(folder: Path, state: TrainerState, extra: dict) -> None:
    atomic_write_bytes(folder / MARKER, json.dumps({**state.state_dict(), **extra}, indent=2).encode())


def prune(output: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` finished checkpoints, and unfinished ones older than the newest."""
    done = complete_checkpoints(output)
    removed = [folder for _, folder in done[:-keep]] if len(done) > keep else []
    newest = done[-1][0] if done else None
    root = Path(output) / "checkpoints"
    if root.is_dir() and newest is not None:
        for folder in root.iterdir():
            match = _NAME.match(folder.name)
            if match and not (folder / MARKER).is_file() and int(match.group(1)) < newest:
                removed.append(folder)
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def resolve_resume(output: Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from: None (fresh run), 'latest' (None if there is none yet), a path."""
    if resume is None:
        return None
    if resume == "latest":
        done = complete_checkpoints(output)
        return done[-1][1] if done else None
    folder = Path(resume)
    if not (folder / MARKER).is_file():
        raise InputError(
            f"resume={resume!r} is not a finished checkpoint folder (no {MARKER}); "
            f"use resume=latest or a folder under {Path(output) / 'checkpoints'}"
        )
    return folder
