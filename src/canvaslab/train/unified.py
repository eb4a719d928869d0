"""`canvaslab train unified CONFIG.yaml`: the unified (Show-o) model's training loop.

Each optimizer step mixes t2i, lm and mmu rows (train/unified_losses.py), weighted by t2i_coeff,
lm_coeff and mmu_coeff, with per-kind batch sizes. Rows stream from parquet (data/streaming.py):
sharded by process and worker, shuffled through a buffer, repeating, resumable. MAGVIT is frozen and
tokenizes images on the fly. accelerate runs it from one CPU to DDP/DeepSpeed; checkpoints are
accelerate states plus the stream positions (exact resume); validation renders prompts to a grid and
answers questions; the result is a self-contained folder in the released layout (plus tokenizer and
magvit/), which `load_bundle` and every `--engine unified` command read.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from canvaslab.core.image import atomic_write_bytes
from canvaslab.errors import InputError
from canvaslab.data.records import decode_image
from canvaslab.train import checkpoints as ckpt
from canvaslab.train.batches import to_tensor
from canvaslab.train.loop import (
    StepClock, StopFlag, any_process, append_samples, check_finite, fresh_staging, make_accelerator, publish_folder,
    save_checkpoint, set_deepspeed_micro_batch, step_generator, weight_dtype,
)
from canvaslab.train.unified_config import UnifiedTrainConfig
from canvaslab.train.unified_losses import lm_loss, mmu_loss, t2i_loss

KINDS = ("t2i", "lm", "mmu")


@dataclass
class UnifiedReport:
    steps: int
    losses: list[float] = field(default_factory=list)  # total loss per optimizer step (mean over processes)
    parts: list[dict[str, float]] = field(default_factory=list)  # t2i / lm / mmu / mask_ratio per step
    checkpoints: list[str] = field(default_factory=list)
    validations: list[str] = field(default_factory=list)
    samples_seen: list[str] = field(default_factory=list)  # with log.samples: "<kind> <key>" of this process's rows, in order
    export: str | None = None
    stopped_by: str | None = None
    resumed_from: str | None = None
    seconds: float = 0.0


# -- rows -> tensors -----------------------------------------------------------------------------------


def image_tensor(value: Any, resolution: int) -> torch.Tensor:
    """Encoded image bytes (or a {bytes, path} struct, or a path) -> (3, R, R) in [-1, 1]:
    short side resized to R (bicubic), centre crop, as the reference's default transform.
    Decoding is the datasets' (EXIF, modes, pixel limit; an unreadable image is one clear error)."""
    from PIL import Image, ImageOps

    from canvaslab.data.check import unified_image_ref

    rgb = decode_image(unified_image_ref(value), what="image", key="parquet row")
    fitted = ImageOps.fit(Image.fromarray(rgb), (resolution, resolution), Image.Resampling.BICUBIC)
    return to_tensor(np.asarray(fitted))


def image_ids(bundle: Any, rows: list[dict], column: str, resolution: int, device: torch.device) -> torch.Tensor:
    pixels = torch.stack([image_tensor(row[column], resolution) for row in rows]).to(device)
    codes = bundle.image_codes(pixels.to(bundle.magvit.encoder.conv_in.weight.dtype))
    return bundle.layout.codes_to_ids(codes.flatten(1))


def caption_of(row: dict, config: UnifiedTrainConfig) -> str:
    caption = row.get(config.data.caption_column)
    if caption is None or (isinstance(caption, str) and not caption.strip()):
        caption = row.get(config.data.class_column) or ""
    return str(caption)


# -- the loop --------------------------------------------------------------------------------------------


def step_losses(bundle: Any, model: Any, batches: dict[str, list[dict]], config: UnifiedTrainConfig,
                generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the kinds present in `batches`, and each part for logging."""
    layout, data, section = bundle.layout, config.data, config.train
    total = torch.zeros((), device=device)
    parts: dict[str, float] = {}
    if batches.get("t2i"):
        rows = batches["t2i"]
        ids = image_ids(bundle, rows, data.image_column, data.resolution, device)
        texts = bundle.text_ids([caption_of(r, config) for r in rows])
        loss, ratio = t2i_loss(model, layout, texts, ids, generator, max_text_len=data.max_text_len,
                               caption_dropout=section.caption_dropout, min_masking_rate=section.min_masking_rate,
                               label_smoothing=section.label_smoothing, dtype=dtype)
        total = total + section.t2i_coeff * loss
        parts.update(t2i=loss.item(), mask_ratio=ratio.item())
    if batches.get("lm"):
        texts = bundle.text_ids([str(r.get(data.text_column) or "") for r in batches["lm"]])
        loss = lm_loss(model, layout, texts, max_seq_len=data.max_seq_len, label_smoothing=section.label_smoothing,
                       dtype=dtype, device=device)
        total = total + section.lm_coeff * loss
        parts["lm"] = loss.item()
    if batches.get("mmu"):
        rows = batches["mmu"]
        ids = image_ids(bundle, rows, data.image_column, data.resolution, device)
        questions = bundle.text_ids([str(r.get(data.question_column) or "") for r in rows])
        answers = bundle.text_ids([str(r.get(data.answer_column) or r.get(data.caption_column) or "") for r in rows])
        loss = mmu_loss(model, layout, ids, questions, answers, max_seq_len=data.max_seq_len,
                        label_smoothing=section.label_smoothing, dtype=dtype)
        total = total + section.mmu_coeff * loss
        parts["mmu"] = loss.item()
    return total, parts


class Streams:
    """One resumable row stream per kind in use; `next(kind, n)` gives the next n rows (repeating)."""

    def __init__(self, config: UnifiedTrainConfig, rank: int, world: int) -> None:
        from canvaslab.data.streaming import ParquetStream

        data = config.data
        columns = {
            "t2i": [data.image_column, data.caption_column, data.class_column, data.key_column],
            "lm": [data.text_column, data.key_column],
            "mmu": [data.image_column, data.question_column, data.answer_column, data.caption_column, data.key_column],
        }
        self.streams: dict[str, Any] = {}
        self.iterators: dict[str, Any] = {}
        for kind in KINDS:
            if getattr(config.train, f"batch_size_{kind}") == 0:
                continue
            self.streams[kind] = ParquetStream(
                getattr(data, kind), columns=columns[kind], optional_columns=True, rank=rank, world_size=world,
                seed=config.train.seed + KINDS.index(kind), shuffle_buffer=data.shuffle_buffer, repeat=True,
            )

    def next(self, kind: str, count: int) -> list[dict]:
        if kind not in self.iterators:
            self.iterators[kind] = iter(self.streams[kind])
        iterator = self.iterators[kind]
        return [next(iterator) for _ in range(count)]

    def state_dict(self) -> dict[str, Any]:
        return {kind: stream.state_dict() for kind, stream in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for kind, value in state.items():
            if kind in self.streams:
                self.streams[kind].load_state_dict(value)
        self.iterators.clear()  # the next read starts from the restored position


def train_unified(config: UnifiedTrainConfig, *, report: Any = None, stop_after: int | None = None) -> UnifiedReport:
    """Train the unified model as `config` says; `stop_after` (tests) ends after that many steps of this
    call without the final validation/export, like a killed process."""
    from accelerate.utils import set_seed

    from canvaslab.engines.unified.bundle import load_bundle

    say = report or (lambda text: None)
    started = time.perf_counter()
    output = config.output_dir
    accelerator = make_accelerator(config)  # same setting names as the diffusion trainer's config
    set_seed(config.train.seed)
    section = config.train
    dtype = weight_dtype(section.mixed_precision)
    bundle = load_bundle(config.model.base, magvit=config.model.magvit, tokenizer=config.model.tokenizer)
    side = config.data.resolution // bundle.downsample
    if side * side != bundle.config.num_vq_tokens:
        raise InputError(f"data.resolution {config.data.resolution} gives {side}x{side} image tokens, but the model "
                         f"takes {bundle.config.num_vq_tokens}; use {int(math.isqrt(bundle.config.num_vq_tokens)) * bundle.downsample}")
    bundle.magvit.requires_grad_(False).eval().to(accelerator.device, dtype=dtype if dtype != torch.float16 else torch.float32)
    model = bundle.model.train()
    if section.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); older versions only have the old one
        getattr(model.showo, "activation_checkpointing_enable", model.showo.gradient_checkpointing_enable)()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "norm" in name or "embed" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": section.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=section.learning_rate, betas=(section.adam_beta1, section.adam_beta2), eps=section.adam_epsilon,
    )
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(section.lr_scheduler, optimizer=optimizer,
                              num_warmup_steps=section.warmup_steps * accelerator.num_processes,
                              num_training_steps=section.max_steps * accelerator.num_processes)
    set_deepspeed_micro_batch(accelerator, section.batch_size_t2i + section.batch_size_lm + section.batch_size_mmu)
    prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    streams = Streams(config, accelerator.process_index, accelerator.num_processes)
    state = ckpt.TrainerState()
    accelerator.register_for_checkpointing(state)
    accelerator.register_for_checkpointing(streams)

    resumed = ckpt.resolve_resume(output, config.resume)
    if resumed is not None:
        accelerator.load_state(str(resumed))
        say(f"resumed from {resumed} at step {state.step}")
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        import yaml

        atomic_write_bytes(output / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode())
        accelerator.init_trackers(config.log.project)

    result = UnifiedReport(steps=state.step, resumed_from=str(resumed) if resumed else None)
    stop = StopFlag()
    stop.install()
    steps_this_call = 0
    running: list[float] = []
    running_parts: dict[str, list[float]] = {}
    clock = StepClock(state.step, section.max_steps)
    sizes = {kind: getattr(section, f"batch_size_{kind}") for kind in KINDS}
    try:
        while state.step < section.max_steps:
            micro = state.batch
            generator = step_generator(section.seed, 0, accelerator.process_index, micro)
            batches = {kind: streams.next(kind, n) for kind, n in sizes.items() if n}
            if config.log.samples:
                result.samples_seen += [f"{kind} {row.get(config.data.key_column)}" for kind, rows in batches.items() for row in rows]
            with accelerator.accumulate(prepared):
                loss, parts = step_losses(bundle, prepared, batches, config, generator, accelerator.device, dtype)
                mean = accelerator.gather(loss.detach()[None]).mean().item()
                check_finite(mean, state.step + 1)
                accelerator.backward(loss)
                if accelerator.sync_gradients and section.max_grad_norm:
                    accelerator.clip_grad_norm_(prepared.parameters(), section.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batch += 1
            running.append(mean)
            for name, value in parts.items():
                running_parts.setdefault(name, []).append(value)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            steps_this_call += 1
            step_parts = {name: sum(v) / len(v) for name, v in running_parts.items()}
            result.losses.append(sum(running) / len(running))
            result.parts.append(step_parts)
            running.clear()
            running_parts.clear()
            accelerator.log({"loss": result.losses[-1], **{f"loss_{k}" if k != "mask_ratio" else k: v for k, v in step_parts.items()},
                             "lr": scheduler.get_last_lr()[0]}, step=state.step)
            if accelerator.is_main_process and (state.step % config.log.every == 0 or state.step == section.max_steps):
                detail = "  ".join(f"{k} {v:.3f}" for k, v in step_parts.items())
                say(clock.line(state.step, result.losses[-1], detail))
            interrupted = any_process(accelerator, stop.signal is not None)
            if config.validation.every and state.step % config.validation.every == 0:
                result.validations += _validate(config, bundle, accelerator, state.step, say)
            last = state.step >= section.max_steps
            if state.step % config.checkpoints.every == 0 or interrupted or last:
                result.checkpoints.append(save_checkpoint(accelerator, config, state, say))
                if accelerator.is_main_process:  # a checkpoint is also a model every unified command loads
                    from canvaslab.engines.unified.bundle import write_checkpoint_metadata

                    write_checkpoint_metadata(bundle, result.checkpoints[-1])
            if interrupted:
                result.stopped_by = stop.signal or "signal"
                say(f"stopped by {result.stopped_by} at step {state.step}; resume with resume=latest")
                break
            if stop_after is not None and steps_this_call >= stop_after:
                break
        if config.log.samples:
            append_samples(output, accelerator.process_index, result.samples_seen)
        if state.step >= section.max_steps and not result.stopped_by and stop_after is None:
            if config.validation.every == 0 or state.step % config.validation.every:
                result.validations += _validate(config, bundle, accelerator, state.step, say)
            result.export = _export(config, bundle, accelerator, say)
    finally:
        stop.restore()
        accelerator.end_training()
    result.steps = state.step
    result.seconds = time.perf_counter() - started
    return result


def _validate(config: UnifiedTrainConfig, bundle: Any, accelerator: Any, step: int, say: Any) -> list[str]:
    """Prompts -> a grid of generated images; questions about images -> answers.txt; both to the trackers."""
    from canvaslab.engines.unified.sampling import generate_image_codes, generate_text

    section = config.validation
    written: list[str] = []
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and (section.prompts or section.images):
        from canvaslab.core.grid import make_grid
        from canvaslab.core.image import save_image

        model = bundle.model
        was_training = model.training
        model.eval()
        folder = config.output_dir / "validation"
        try:
            with torch.no_grad():
                if section.prompts:
                    side = math.isqrt(bundle.config.num_vq_tokens)
                    blank = torch.full((len(section.prompts), side, side), -1, dtype=torch.long)
                    codes = generate_image_codes(model, bundle.text_ids(section.prompts), blank,
                                                 max_text_len=config.data.max_text_len, guidance_scale=section.guidance_scale,
                                                 steps=section.steps, generator=torch.Generator().manual_seed(section.seed))
                    pixels = bundle.decode_codes(codes.to(bundle.magvit.quantize.embedding.device).reshape(-1, side, side))
                    images = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
                    grid = make_grid([[im] for im in images], row_labels=[p[:40] for p in section.prompts])
                    path = folder / f"step_{step:06d}.png"
                    save_image(path, grid)
                    written.append(str(path))
                    for tracker in accelerator.trackers:
                        if tracker.name == "tensorboard":
                            tracker.writer.add_image("validation", grid, step, dataformats="HWC")
                if section.images:
                    answers = _answers(config, bundle, generate_text)
                    path = folder / f"step_{step:06d}-answers.txt"
                    atomic_write_bytes(path, "".join(f"{img}\t{ans}\n" for img, ans in answers).encode())
                    written.append(str(path))
                    for tracker in accelerator.trackers:
                        if tracker.name == "tensorboard":
                            tracker.writer.add_text("answers", "\n\n".join(f"{i}: {a}" for i, a in answers), step)
        finally:
            model.train(was_training)
        for path in written:
            say(f"validation {path}")
    accelerator.wait_for_everyone()
    return written


def _answers(config: UnifiedTrainConfig, bundle: Any, generate_text: Any) -> list[tuple[str, str]]:
    from canvaslab.engines.unified.prompts import mmu_sequences

    section = config.validation
    rows = [{"image": Path(p).read_bytes()} for p in section.images]
    ids = image_ids(bundle, rows, "image", config.data.resolution, bundle.model.device)
    prompts = mmu_sequences(bundle.layout, ids, bundle.text_ids([section.question] * len(rows)))
    tokens = generate_text(bundle.model, prompts, max_new_tokens=section.max_new_tokens)
    return [(p, bundle.decode_text([t for t in row if t != bundle.layout.eot_id])) for p, row in zip(section.images, tokens)]


def _export(config: UnifiedTrainConfig, bundle: Any, accelerator: Any, say: Any) -> str | None:
    from canvaslab.engines.unified.bundle import save_bundle

    accelerator.wait_for_everyone()
    final = config.output_dir / "final"
    if accelerator.is_main_process:
        staging = fresh_staging(final)
        save_bundle(bundle, staging)
        publish_folder(staging, final)
        say(f"exported {final}")
    accelerator.wait_for_everyone()
    return str(final)
