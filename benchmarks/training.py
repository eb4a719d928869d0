"""Training speed: canvaslab's trainer against the diffusers InstructPix2Pix example loop.

Same tiny offline 8-channel InstructPix2Pix model (tests/diffusion/tiny.py, saved as a diffusers
folder), same synthetic edit dataset (`canvaslab.data.mini`, edit-jsonl layout), batch size, steps,
learning rate, trained parameters (`--mode`), fp32 on the CPU, 1 torch thread, all in one run.

The named baseline is our own re-implementation of the training loop of diffusers'
examples/instruct_pix2pix/train_instruct_pix2pix.py with its semantics: accelerate Accelerator and a
prepared DataLoader whose dataset decodes, resizes and tokenizes every sample on every access; per
step, VAE encodes of the edited (posterior sample x scaling factor) and original (posterior mode)
images, CLIP encodes of the batch's prompts and of the empty prompt, the 3-way conditioning dropout,
noise, timesteps and add_noise, the UNet forward, the MSE loss, gradient clipping and an AdamW step.

Steps/s are steady state, steps --warmup+1 .. --steps of each run, timed inside the loop: the
baseline stamps each step itself; canvaslab's trainer logs every step (log.every=1) to a reporter
that stamps it. Model loading, first-step costs and canvaslab's final checkpoint are excluded. The
figure of a run is its median epoch-long window (each crosses one epoch start), so a burst of load
from other processes on a shared machine moves it less than the whole span would (also printed).
The first cached run builds the latent cache (timed as its extra seconds up to the end of step 1
over the later cached runs', which find the cache complete). The three loops run interleaved,
--repeats times; each figure is the median, each ratio the median of the per-repeat ratios.

    python benchmarks/training.py [--mode full|lora] [--size 128] [--steps 80] [--warmup 10] [--repeats 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no torchvision fallback notices
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # the example's vae.to(dtype) notice

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from diffusion import tiny  # noqa: E402

from canvaslab.data.mini import write_mini  # noqa: E402
from canvaslab.train.config import validate_config  # noqa: E402
from canvaslab.train.trainer import train  # noqa: E402

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
CONDITIONING_DROPOUT = 0.05  # the example's --conditioning_dropout_prob in its README; canvaslab's default
MAX_GRAD_NORM = 1.0  # both defaults
WEIGHT_DECAY = 1e-2  # both defaults


# -- baseline: the diffusers example's loop, re-implemented -----------------------------------------


class EditFiles(torch.utils.data.Dataset):
    """metadata.jsonl rows -> the example's `preprocess_train` output, computed on every access."""

    def __init__(self, root: Path, resolution: int, tokenizer) -> None:
        self.root, self.resolution, self.tokenizer = root, resolution, tokenizer
        lines = (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
        self.rows = [json.loads(line) for line in lines if line.strip()]

    def __len__(self) -> int:
        return len(self.rows)

    def _to_np(self, name: str) -> np.ndarray:  # the example's convert_to_np: square resize, CHW uint8
        image = Image.open(self.root / name).convert("RGB").resize((self.resolution, self.resolution))
        return np.array(image).transpose(2, 0, 1)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        images = torch.tensor(np.concatenate([self._to_np(row["input_image"]), self._to_np(row["edited_image"])]))
        images = 2 * (images / 255) - 1
        r = self.resolution  # CenterCrop(resolution) of an image already resolution x resolution: no-op
        top, left = (images.shape[-2] - r) // 2, (images.shape[-1] - r) // 2
        images = images[..., top:top + r, left:left + r]
        original, edited = images.chunk(2)
        ids = self.tokenizer([row["edit_prompt"]], max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids[0]
        return {"original_pixel_values": original.reshape(3, r, r), "edited_pixel_values": edited.reshape(3, r, r),
                "input_ids": ids}


def collate_fn(examples: list[dict]) -> dict:
    def stack(name: str) -> torch.Tensor:
        return torch.stack([e[name] for e in examples]).to(memory_format=torch.contiguous_format).float()

    return {"original_pixel_values": stack("original_pixel_values"),
            "edited_pixel_values": stack("edited_pixel_values"),
            "input_ids": torch.stack([e["input_ids"] for e in examples])}


def baseline(folder: Path, data: Path, args: argparse.Namespace) -> dict:
    """Train --steps steps: the seconds since the loop started after each step, and the losses."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    set_seed(0)
    generator = torch.Generator(device=accelerator.device).manual_seed(0)
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    # The example widens a 4-channel conv_in to 8; this base already has 8 input channels.
    assert unet.config.in_channels == 8
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if args.mode == "lora":  # as diffusers' train_text_to_image_lora.py adds adapters
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY, eps=1e-8)

    def tokenize_captions(captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                         return_tensors="pt").input_ids

    loader = torch.utils.data.DataLoader(EditFiles(data, args.resolution, tokenizer), shuffle=True,
                                         collate_fn=collate_fn, batch_size=args.batch, num_workers=0)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.steps)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    weight_dtype = torch.float32
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=weight_dtype)

    p = CONDITIONING_DROPOUT
    global_step, times, losses, started = 0, [], [], time.perf_counter()
    while global_step < args.steps:
        unet.train()
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["edited_pixel_values"].to(weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps.long())
                encoder_hidden_states = text_encoder(batch["input_ids"])[0]
                original_image_embeds = vae.encode(batch["original_pixel_values"].to(weight_dtype)).latent_dist.mode()
                random_p = torch.rand(bsz, device=latents.device, generator=generator)
                prompt_mask = (random_p < 2 * p).reshape(bsz, 1, 1)
                null_conditioning = text_encoder(tokenize_captions([""]).to(accelerator.device))[0]
                encoder_hidden_states = torch.where(prompt_mask, null_conditioning, encoder_hidden_states)
                image_mask_dtype = original_image_embeds.dtype
                image_mask = 1 - ((random_p >= p).to(image_mask_dtype) * (random_p < 3 * p).to(image_mask_dtype))
                original_image_embeds = image_mask.reshape(bsz, 1, 1, 1) * original_image_embeds
                concatenated = torch.cat([noisy_latents, original_image_embeds], dim=1)
                target = noise  # epsilon prediction
                model_pred = unet(concatenated, timesteps, encoder_hidden_states).sample
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(args.batch)).mean()
                train_loss = avg_loss.item()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                global_step += 1
                losses.append(train_loss)
                times.append(time.perf_counter() - started)
            _logs = {"step_loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}  # progress bar postfix
            if global_step >= args.steps:
                break
    accelerator.end_training()
    return {"times": times, "losses": losses}


# -- canvaslab ------------------------------------------------------------------------------------


def ours(folder: Path, data: Path, out: Path, args: argparse.Namespace, cache: Path | None) -> dict:
    """One `train` call of --steps steps: the seconds since the call after each step, and the losses."""
    config = validate_config({
        "objective": "edit",
        "output": str(out),
        "model": {"base": str(folder)},
        # buckets off: every image gets one square centre crop, as the example trains one square size
        "data": {"path": str(data), "resolution": args.resolution, "buckets": False},
        "train": {"max_steps": args.steps, "batch_size": args.batch, "learning_rate": args.lr, "mode": args.mode,
                  "conditioning_dropout": CONDITIONING_DROPOUT, "max_grad_norm": MAX_GRAD_NORM,
                  "weight_decay": WEIGHT_DECAY},
        "cache": {"latents": cache is not None, "text": cache is not None, "dir": str(cache) if cache else None},
        "checkpoints": {"every": 1_000_000, "keep": 1},
        "validation": {"count": 0},
        "log": {"trackers": [], "every": 1},  # a report line after every step: its time stamps the step
        "export": "none",
    })
    started = time.perf_counter()
    times: list[float] = []

    def stamp(message: str) -> None:
        if re.match(r"step \d+/", message):
            times.append(time.perf_counter() - started)

    report = train(config, report=stamp)
    seconds = time.perf_counter() - started
    assert report.steps == args.steps == len(times), (report.steps, len(times))
    return {"seconds": seconds, "times": times, "losses": report.losses}


# -- the benchmark -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("full", "lora"), default="full",
                        help="train the whole UNet, or LoRA adapters (rank 16, alpha 16, attention projections)")
    parser.add_argument("--size", type=int, default=128, help="dataset image size (wide/tall items are 1.5x longer)")
    parser.add_argument("--resolution", type=int, default=None, help="training resolution (default: --size)")
    parser.add_argument("--count", type=int, default=32, help="dataset samples")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=80, help="steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="first steps of each run, not timed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile summary of one run of each")
    parser.add_argument("--profile-lines", type=int, default=12)
    args = parser.parse_args()
    args.resolution = args.resolution or args.size
    torch.set_num_threads(1)
    if args.steps - args.warmup < args.count // args.batch or args.warmup < 1:
        parser.error("--steps must exceed --warmup (at least 1) by one epoch (--count / --batch steps) or more")

    with tempfile.TemporaryDirectory(prefix="canvaslab-bench-train-") as directory:
        run(args, Path(directory))


def run(args: argparse.Namespace, root: Path) -> None:
    folder = tiny.save_pipeline_folder("sd-pix2pix", root / "sd-pix2pix")
    data = next(d.path for d in write_mini(root / "data", kind="edit", count=args.count, size=args.size)
                if d.layout == "edit-jsonl")
    runs = iter(range(10**6))

    def fresh() -> Path:
        return root / "runs" / f"run{next(runs):03d}"

    epoch = args.count // args.batch  # steps per epoch: each window of this many steps crosses one epoch start

    def rate(times: list[float]) -> float:
        """Steps/s of the median epoch-long window in steps warmup+1 .. steps: a burst of load from other
        processes on the shared machine slows a window or two, not the figure."""
        ends = range(args.warmup - 1, args.steps, epoch)
        return epoch / statistics.median(b - a for a, b in zip(times[ends[0]::epoch], times[ends[1]::epoch]))

    def span(times: list[float]) -> float:  # steps/s over all of steps warmup+1 .. steps
        return (args.steps - args.warmup) / (times[args.steps - 1] - times[args.warmup - 1])

    # Warm-up: lazy imports and first-call initialisation, paid before any timing.
    warm = argparse.Namespace(**{**vars(args), "steps": 2})
    baseline(folder, data, warm)
    ours(folder, data, fresh(), warm, None)

    cache_dir = root / "cache"  # the first cached run builds it; the later ones find it complete
    rates: dict[str, list[float]] = {"base": [], "plain": [], "cached": []}  # median epoch windows
    spans: dict[str, list[float]] = {"base": [], "plain": [], "cached": []}  # whole timed spans
    firsts: list[float] = []  # cached runs: seconds from the call to the end of step 1
    losses: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so machine load hits all three alike
        result = baseline(folder, data, args)
        rates["base"].append(rate(result["times"]))
        spans["base"].append(span(result["times"]))
        losses["base"] = result["losses"]
        for name, cache in (("plain", None), ("cached", cache_dir)):
            result = ours(folder, data, fresh(), args, cache)
            rates[name].append(rate(result["times"]))
            spans[name].append(span(result["times"]))
            losses[name] = result["losses"]
            if cache is not None:
                firsts.append(result["times"][0])
    plain, cached = statistics.median(rates["plain"]), statistics.median(rates["cached"])

    def paired(top: str, bottom: str) -> str:  # each repeat's runs ran back to back: their ratio cancels drift
        ratios = [a / b for a, b in zip(rates[top], rates[bottom])]
        whole = statistics.median(a / b for a, b in zip(spans[top], spans[bottom]))
        return f"{statistics.median(ratios):.2f}x (repeats: {fmt(ratios)}; whole spans {whole:.2f}x)"

    def loss_cell(values: list[float]) -> str:
        return f"{statistics.fmean(values[:5]):.4f} | {statistics.fmean(values[-10:]):.4f}"

    print(f"tiny sd-pix2pix (8 ch UNet), edit objective, {args.mode} mode, {args.count} samples of {args.size} px, "
          f"resolution {args.resolution}, batch {args.batch}, lr {args.lr:g}, fp32 CPU, 1 torch thread")
    print(f"steps/s in steps {args.warmup + 1}..{args.steps} of each run: median {epoch}-step (one epoch) window, "
          f"median of {args.repeats} interleaved repeats; 'span' = all those steps, median of repeats")
    print("| loop | steps/s | repeats | span steps/s | loss, steps 1-5 | loss, last 10 steps |")
    print("|---|---:|---|---:|---:|---:|")
    for key, name in (("base", "diffusers example loop (baseline)"), ("plain", "canvaslab, no cache"),
                      ("cached", "canvaslab, cache.latents + cache.text")):
        print(f"| {name} | {statistics.median(rates[key]):.2f} | {fmt(rates[key])} | "
              f"{statistics.median(spans[key]):.2f} | {loss_cell(losses[key])} |")
    same = np.allclose(losses["cached"], losses["plain"], rtol=1e-4)
    print(f"cached losses equal the uncached ones (rtol 1e-4): {same}")
    if len(firsts) > 1:
        build = firsts[0] - statistics.median(firsts[1:])
        print(f"latent cache build ({args.count} samples): ~{build:.2f} s (call to end of step 1: first cached run "
              f"{firsts[0]:.2f} s, later ones {statistics.median(firsts[1:]):.2f} s); it pays for itself after "
              f"~{max(0.0, build) / max(1e-9, 1 / plain - 1 / cached):.0f} steps")
    print(f"canvaslab / baseline, no cache: {paired('plain', 'base')}")
    print(f"canvaslab cached / baseline: {paired('cached', 'base')}  (goal >= 1.2)")
    print(f"latent-cache speed-up, cached / uncached: {paired('cached', 'plain')}")
    if args.profile:
        profile(folder, data, args, fresh, cache_dir)


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def profile(folder: Path, data: Path, args: argparse.Namespace, fresh, cache_dir: Path) -> None:
    """Where the time of one --steps run goes (model loading included): top functions by own time."""
    for name, call in (("baseline", lambda: baseline(folder, data, args)),
                       ("canvaslab, no cache", lambda: ours(folder, data, fresh(), args, None)),
                       ("canvaslab, cached", lambda: ours(folder, data, fresh(), args, cache_dir))):
        profiler = cProfile.Profile()
        profiler.runcall(call)
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        print(f"\ncProfile, {name}, {args.steps} steps, {stats.total_tt:.2f} s in all:")
        stats.sort_stats("tottime").print_stats(args.profile_lines)
        lines = text.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print("\n".join(line for line in lines[start:] if line.strip()))


if __name__ == "__main__":
    main()
