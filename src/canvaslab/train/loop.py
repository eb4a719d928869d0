"""Pieces every training loop here shares (`trainer.train` for diffusion, `unified.train_unified`):
the accelerate set-up, the per-step random stream, signals, progress lines, checkpoints, the NaN stop
and publishing a finished folder.

The loops pass their config; these read only the settings both configs have under the same names
(`train.mixed_precision`, `train.gradient_accumulation`, `log.trackers`, `output`, `checkpoints.keep`).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from canvaslab.errors import EngineError, InputError
from canvaslab.train import checkpoints as ckpt

Reporter = Callable[[str], None]
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class StopFlag:
    """SIGTERM/SIGINT ask the loop to save a checkpoint and stop at the end of the current step."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_accelerator(config: Any) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InputError("train.mixed_precision=fp16 needs a CUDA GPU; on the CPU use bf16 or no")
    trackers = [t for t in config.log.trackers]
    if "wandb" in trackers:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise InputError("log.trackers includes wandb, which is not installed; pip install wandb or drop it")
    if "tensorboard" in trackers:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise InputError("log.trackers includes tensorboard, which is not installed; pip install tensorboard "
                             "or set log.trackers=[]")
    output = config.output_dir
    # accelerate keeps its settings in process-wide singletons; a second `train` in one process (notebooks,
    # tests, sweeps) with another precision or accumulation would be refused. The process group stays.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # Without a GPU, accelerate only sets up gloo when told it runs on the CPU; otherwise every process
    # of `accelerate launch --num_processes N` would silently train alone on all the data.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("LOCAL_RANK") is not None
    return Accelerator(
        cpu=launched and not torch.cuda.is_available(),
        gradient_accumulation_steps=config.train.gradient_accumulation,
        mixed_precision=config.train.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )


def step_generator(seed: int, epoch: int, process: int, batch: int, stream: int = 0) -> torch.Generator:
    """The random stream of one micro-batch (noise, timesteps, dropout draws): a function of where the
    run is, not of what ran before, so a resumed run draws exactly what an unbroken one would.
    (Integers only: Python randomises the hashes of strings per process.)"""
    return torch.Generator().manual_seed(hash((seed, epoch, process, batch, stream)) & 0x7FFF_FFFF_FFFF_FFFF)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def any_process(accelerator: Any, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def set_deepspeed_micro_batch(accelerator: Any, size: int) -> None:
    """DeepSpeed reads the micro-batch size from a prepared DataLoader; ours are not prepared (we shard)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = size


def save_checkpoint(accelerator: Any, config: Any, state: ckpt.TrainerState, say: Reporter) -> str:
    folder = ckpt.checkpoint_dir(config.output_dir, state.step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.mark_complete(folder, state, {"processes": accelerator.num_processes,
                                           "mode": getattr(config.train, "mode", "full")})
        ckpt.prune(config.output_dir, config.checkpoints.keep)
        say(f"saved checkpoint {folder}")
    accelerator.wait_for_everyone()
    return str(folder)


def append_samples(output: Path, process: int, samples: list[str]) -> None:
    """`log.samples`: add this process's sample ids, in the order it trained on them, to its log file."""
    log = output / "logs" / f"samples_rank{process}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.writelines(f"{sample}\n" for sample in samples)


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen modules run in under `train.mixed_precision`."""
    return WEIGHT_DTYPES[mixed_precision]


def check_finite(loss: float, step: int) -> None:
    """Stop the run, naming the step, when the loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise EngineError(
            f"the loss became {loss} at step {step}; lower train.learning_rate, use "
            "bf16 instead of fp16, or resume from the last checkpoint with resume=latest"
        )


class StepClock:
    """Steps per second since the last log line, and the time left at that pace."""

    def __init__(self, step: int, max_steps: int) -> None:
        self.max_steps = max_steps
        self.tick, self.ticked = time.perf_counter(), step

    def line(self, step: int, loss: float, detail: str) -> str:
        now = time.perf_counter()
        rate = (step - self.ticked) / max(now - self.tick, 1e-9)
        self.tick, self.ticked = now, step
        left = (self.max_steps - step) / max(rate, 1e-9)
        return f"step {step}/{self.max_steps}  loss {loss:.4f}  {detail}  {rate:.2f} steps/s  eta {duration(left)}"


def publish_folder(staging: Path, final: Path) -> None:
    """Put a fully written `staging` folder in place of `final`: readers never see a half-written one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old)
    else:
        staging.rename(final)


def fresh_staging(final: Path) -> Path:
    """An empty-to-be staging path beside `final` (a leftover from a killed run is removed)."""
    staging = final.with_name(f".{final.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    return staging
