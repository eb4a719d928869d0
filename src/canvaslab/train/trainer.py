"""The training loop: one function for every objective, mode and launcher.

Runs as is on one CPU/GPU and under `accelerate launch` (DDP, DeepSpeed, FSDP): accelerate owns the
device placement, mixed precision, gradient accumulation and distributed wrapping; we own the data
order (`BucketBatchSampler` deals batches to processes, so each sample is seen once per epoch),
the per-step random stream (seeded by step and process: a resumed run draws the same noise) and the
checkpoint contents.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from canvaslab.core.image import atomic_write_bytes
from canvaslab.errors import InputError
from canvaslab.train import checkpoints as ckpt
from canvaslab.train.batches import EpochBatches, TrainingSamples, collate, plan_layout
from canvaslab.train.components import Components, encode_text, load_components, make_trainable, trained_modules
from canvaslab.train.config import TrainConfig, dump_config
from canvaslab.train.loop import (
    Reporter, StepClock, StopFlag, any_process, append_samples, check_finite, make_accelerator,
    save_checkpoint, set_deepspeed_micro_batch, step_generator, weight_dtype,
)
from canvaslab.train.objectives import StepInputs, diffusion_loss

@dataclass
class TrainReport:
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step, across processes
    checkpoints: list[str] = field(default_factory=list)
    validations: list[str] = field(default_factory=list)
    export: str | None = None
    stopped_by: str | None = None  # signal name when interrupted
    resumed_from: str | None = None
    seconds: float = 0.0
    samples_seen: list[str] = field(default_factory=list)  # with log.samples: this process's sample keys, in order


def open_training_data(config: TrainConfig) -> Any:
    """The dataset for the objective; an edit dataset with a frames column trains a multi-frame model."""
    from canvaslab.data.datasets import guess_kind, open_dataset

    columns = config.data.columns or None
    if config.objective == "inpaint":
        kind = "inpaint"
    elif (config.model.frames or 0) > 1 or guess_kind(config.data.path, columns) == "frames":
        kind = "frames"
    else:
        kind = "edit"
    return open_dataset(config.data.path, kind, columns=columns)


def _optimizer(params: list[torch.nn.Parameter], config: TrainConfig, text_params: list[torch.nn.Parameter]) -> Any:
    section = config.train
    groups = [{"params": params, "lr": section.learning_rate}]
    if text_params:
        groups.append({"params": text_params, "lr": section.text_encoder_lr or section.learning_rate})
    kwargs = dict(betas=(section.adam_beta1, section.adam_beta2), weight_decay=section.weight_decay, eps=section.adam_epsilon)
    if section.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InputError("train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes); or use adamw") from None
        return bnb.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def train(config: TrainConfig, *, report: Reporter | None = None, stop_after: int | None = None) -> TrainReport:
    """Train as `config` says and return what happened. `stop_after` (tests) ends the loop after that
    many optimizer steps of this call without the final validation/export, like a killed process."""
    say = report or (lambda text: None)
    from canvaslab.engines.diffusion.engine import _quiet_libraries

    _quiet_libraries()
    started = time.perf_counter()
    output = config.output_dir
    accelerator = make_accelerator(config)
    main = accelerator.is_main_process
    from accelerate.utils import set_seed

    set_seed(config.train.seed)  # adapter initialisation: identical on every process
    if config.train.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # -- data and models
    data = open_training_data(config)
    if len(data) == 0:
        raise InputError(f"dataset {config.data.path!r} has no samples")
    components = load_components(config, dataset_frames=data.frames if config.objective == "edit" else 0)
    prior = None
    if config.prior.enabled:  # before any adapter exists: class images come from the base model
        from canvaslab.train.prior import PriorBatches, ensure_class_images

        prior = PriorBatches(config, ensure_class_images(config, components, accelerator, say))
    params = make_trainable(components, config)
    unet_params = [p for p in components.unet.parameters() if p.requires_grad]
    text_params = [p for e in components.text_encoders for p in e.parameters() if p.requires_grad] if config.train.text_encoder else []
    layout = plan_layout(data, config)

    from canvaslab.data.buckets import BucketBatchSampler

    sampler = EpochBatches(BucketBatchSampler(
        layout.bucket_ids, config.train.batch_size, seed=config.train.seed, rank=accelerator.process_index,
        world_size=accelerator.num_processes, shuffle=True,
    ))
    if len(sampler) == 0:
        raise InputError("the dataset is smaller than one batch per process; lower train.batch_size")

    dtype = weight_dtype(config.train.mixed_precision)
    device = accelerator.device
    components.vae.to(device, dtype=dtype)
    for encoder in components.text_encoders:
        if not config.train.text_encoder:
            encoder.to(device, dtype=dtype)

    lr = config.train.learning_rate
    if config.train.scale_lr:
        lr *= config.train.batch_size * config.train.gradient_accumulation * accelerator.num_processes
        config.train.learning_rate = lr
    optimizer = _optimizer(unet_params, config, text_params)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(
        config.train.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=config.train.warmup_steps * accelerator.num_processes,
        num_training_steps=config.train.max_steps * accelerator.num_processes,
    )
    set_deepspeed_micro_batch(accelerator, config.train.batch_size)
    modules = trained_modules(components, config)
    prepared = accelerator.prepare(*modules, optimizer, scheduler)
    unet, optimizer, scheduler = prepared[0], prepared[-2], prepared[-1]
    trained = list(prepared[: len(modules)])
    # The loss must call the prepared (e.g. DDP-wrapped) encoders so their gradients are synchronised.
    loss_components = dataclasses.replace(components, text_encoders=trained[1:]) if config.train.text_encoder else components

    ema = None
    if config.train.ema.enabled:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.train.ema.decay, use_ema_warmup=config.train.ema.warmup)
        accelerator.register_for_checkpointing(ema)
    state = ckpt.TrainerState()
    accelerator.register_for_checkpointing(state)
    _register_weight_hooks(accelerator, config, components)

    # -- resume
    resumed = ckpt.resolve_resume(output, config.resume)
    if resumed is not None:
        accelerator.load_state(str(resumed))
        say(f"resumed from {resumed} at step {state.step} (epoch {state.epoch}, batch {state.batch})")
    elif config.resume == "latest":
        say(f"no checkpoint in {output / 'checkpoints'} yet: starting from step 0")

    if main:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(output / "config.yaml", dump_config(config).encode())
        accelerator.init_trackers(config.log.project, config=_flat_config(config))

    # -- caches
    samples: torch.utils.data.Dataset = TrainingSamples(data, layout, config)
    text_cache = None
    if config.cache.latents:
        samples = _latent_cache(config, components, data, layout, accelerator, say, dtype)
    if config.cache.text:
        from canvaslab.train.cache import TextCache

        text_cache = TextCache()
        captions = [data.record(i).caption for i in range(len(data))]  # no image decoded
        if prior is not None:
            captions += [prior.data.record(i).caption for i in range(len(prior.data))]
        text_cache.build(components, captions + [""], device)
    null_text = None
    if components.frames:
        with torch.no_grad():
            null_text = encode_text(components, [""], device) if text_cache is None else text_cache.lookup([""], device)

    loader = torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, collate_fn=collate, num_workers=config.data.workers,
        persistent_workers=False,
        # Its own generator: creating an iterator must not draw from the global RNG, which the
        # checkpoint restores for dropout; otherwise a resumed run would drift from an unbroken one.
        generator=torch.Generator().manual_seed(config.train.seed),
    )

    stop = StopFlag()
    stop.install()
    result = TrainReport(steps=state.step, resumed_from=str(resumed) if resumed else None)
    steps_this_call = 0
    running: list[float] = []
    clock = StepClock(state.step, config.train.max_steps)
    try:
        while state.step < config.train.max_steps:
            sampler.set_epoch(state.epoch)
            sampler.set_start(state.batch)
            finished_epoch = True
            for batch in loader:
                micro = state.batch
                inputs = StepInputs(device, dtype,
                                    step_generator(config.train.seed, state.epoch, accelerator.process_index, micro))
                if config.log.samples:
                    result.samples_seen.extend(batch["key"])
                with accelerator.accumulate(*trained):
                    loss = diffusion_loss(loss_components, unet, batch, config, inputs, text_cache=text_cache, null_text=null_text)
                    if prior is not None:
                        prior_inputs = StepInputs(device, dtype, step_generator(
                            config.train.seed, state.epoch, accelerator.process_index, micro, stream=1))
                        prior_batch = prior.batch(state.epoch, accelerator.process_index, micro)
                        loss = loss + config.prior.weight * diffusion_loss(
                            loss_components, unet, prior_batch, config, prior_inputs, text_cache=text_cache)
                    mean_loss = accelerator.gather(loss.detach()[None]).mean().item()
                    check_finite(mean_loss, state.step + 1)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.train.max_grad_norm:
                        accelerator.clip_grad_norm_(params, config.train.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batch += 1
                running.append(mean_loss)
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                steps_this_call += 1
                if ema is not None:
                    ema.step(params)
                step_loss = sum(running) / len(running)
                running.clear()
                result.losses.append(step_loss)
                accelerator.log({"loss": step_loss, "lr": scheduler.get_last_lr()[0]}, step=state.step)
                if main and (state.step % config.log.every == 0 or state.step == config.train.max_steps):
                    say(clock.line(state.step, step_loss, f"lr {scheduler.get_last_lr()[0]:.2e}"))
                interrupted = any_process(accelerator, stop.signal is not None)
                if config.validation.every and state.step % config.validation.every == 0:
                    result.validations += _validate(config, components, accelerator, ema, params, data, layout, state.step, say)
                last = state.step >= config.train.max_steps
                if state.step % config.checkpoints.every == 0 or interrupted or last:
                    result.checkpoints.append(save_checkpoint(accelerator, config, state, say))
                if interrupted:
                    result.stopped_by = stop.signal or "signal"
                    say(f"stopped by {result.stopped_by} at step {state.step}; resume with resume=latest")
                    break
                if last or (stop_after is not None and steps_this_call >= stop_after):
                    finished_epoch = False
                    break
            if result.stopped_by or (stop_after is not None and steps_this_call >= stop_after):
                break
            if finished_epoch and state.step < config.train.max_steps:
                state.epoch += 1
                state.batch = 0
        if config.log.samples:
            append_samples(output, accelerator.process_index, result.samples_seen)
        done = state.step >= config.train.max_steps and not result.stopped_by and stop_after is None
        if done:
            if config.validation.every == 0 or state.step % config.validation.every:
                result.validations += _validate(config, components, accelerator, ema, params, data, layout, state.step, say)
            if config.export != "none":
                result.export = _export(config, components, accelerator, ema, params, say)
    finally:
        stop.restore()
        accelerator.end_training()
    result.steps = state.step
    result.seconds = time.perf_counter() - started
    return result


# -- pieces of the loop ------------------------------------------------------------------------------


def _register_weight_hooks(accelerator: Any, config: TrainConfig, components: Components) -> None:
    """In lora/partial mode, checkpoints hold the trainable tensors only, not a copy of the base model."""
    from accelerate.utils import DistributedType

    if config.train.mode == "full" or accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return

    def trainable_state(model: Any) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        from safetensors.torch import save_file

        if accelerator.is_main_process:
            for i, model in enumerate(models):
                save_file(trainable_state(model), str(Path(output_dir) / f"trainable_{i}.safetensors"))
        weights.clear()  # accelerate would otherwise save each full model

    def load_hook(models: list[Any], input_dir: str) -> None:
        from safetensors.torch import load_file

        for i in range(len(models)):
            model = models.pop()  # accelerate then skips its own loading of this model
            index = len(models)
            saved = load_file(str(Path(input_dir) / f"trainable_{index}.safetensors"))
            target = accelerator.unwrap_model(model)
            expected = {n for n, p in target.named_parameters() if p.requires_grad}
            if set(saved) != expected:
                raise InputError(f"checkpoint {input_dir} was saved with other trainable parameters "
                                 "(different train.mode, LoRA targets or rank); resume with the same config")
            with torch.no_grad():
                named = dict(target.named_parameters())
                for name, tensor in saved.items():
                    named[name].copy_(tensor)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _latent_cache(config: TrainConfig, components: Components, data: Any, layout: Any, accelerator: Any,
                  say: Reporter, dtype: torch.dtype) -> torch.utils.data.Dataset:
    from canvaslab.train.cache import CachedSamples, LatentCache, cache_identity, encode_sample

    folder = Path(config.cache.dir) if config.cache.dir else config.output_dir / "cache" / "latents"
    cache = LatentCache(folder, cache_identity(config, components, data.keys()))
    if accelerator.is_main_process and not cache.valid():
        cache.reset()
    accelerator.wait_for_everyone()
    full = TrainingSamples(data, layout, config)
    mine = list(range(accelerator.process_index, len(data), accelerator.num_processes))
    todo = cache.missing(mine)
    if todo:
        say(f"caching latents of {len(todo)} samples in {folder}")
    for index in todo:
        cache.store(index, encode_sample(components, full[(0, index)], accelerator.device, dtype))
    accelerator.wait_for_everyone()
    # Editing needs no pixels once cached; inpainting still needs them for the masked image.
    return CachedSamples(TrainingSamples(data, layout, config, pixels=config.objective == "inpaint"), cache)


def _validate(config: TrainConfig, components: Components, accelerator: Any, ema: Any, params: list, data: Any,
              layout: Any, step: int, say: Reporter) -> list[str]:
    from canvaslab.train.validation import render_validation

    accelerator.wait_for_everyone()
    written: list[str] = []
    if accelerator.is_main_process:
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        try:
            path = render_validation(config, components, accelerator, data, layout, step)
        finally:
            if ema is not None:
                ema.restore(params)
        if path is not None:
            written.append(str(path))
            say(f"validation grid {path}")
    accelerator.wait_for_everyone()
    return written


def _export(config: TrainConfig, components: Components, accelerator: Any, ema: Any, params: list, say: Reporter) -> str | None:
    from canvaslab.train.export import export_model

    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(params)
        path = export_model(config, components, accelerator)
        say(f"exported {path}")
    accelerator.wait_for_everyone()
    return str(path) if path else None


def _flat_config(config: TrainConfig) -> dict[str, Any]:
    """Trackers take flat scalar hyper-parameters."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[prefix] = value if value is not None else "null"
        else:
            flat[prefix] = json.dumps(value)

    walk("", config.model_dump(mode="json"))
    return flat
