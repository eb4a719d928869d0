"""Overhead of canvaslab's diffusion inpaint over the raw diffusers pipeline call.

Same tiny offline models (tests/diffusion/tiny.py, tiny_dit.py), same image, mask, prompt, steps and seed. The
named baseline is the pipeline's `__call__` itself; canvaslab adds mask handling,
alignment, compositing and the recipe. With an aligned size (no padding) and no feather, the masked
pixels must be identical to the raw call's.

    python benchmarks/diffusion.py [--runs 40] [--size 128] [--steps 4] [--only sd|flux-fill]

Measured for tiny SD 1.5 inpainting (UNet) and tiny FLUX.1 Fill (transformer, FluxFillPipeline).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from diffusion import tiny  # noqa: E402

import canvaslab  # noqa: E402
from canvaslab.engines.diffusion.models import load_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", choices=("sd", "flux-fill"), help="measure one model only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    if args.only in (None, "sd"):
        folder = tiny.save_pipeline_folder("sd-inpaint", root / "sd-inpaint")
        overhead("tiny sd-inpaint", folder, args, guidance=7.5)
    if args.only in (None, "flux-fill"):
        from diffusion import tiny_dit

        fill = tiny_dit.save_dit_folder("flux-fill", root / "flux-fill")
        overhead("tiny FLUX.1 Fill", fill, args, guidance=30.0)
    if args.only in (None, "sd"):
        tiled_cost(folder, args.steps)


def overhead(label: str, folder: Path, args: argparse.Namespace, *, guidance: float) -> None:
    """canvaslab.inpaint against the raw pipeline call it makes, on the same inputs; interleaved runs."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    mask = np.zeros((args.size, args.size), bool)
    mask[args.size // 4 : 3 * args.size // 4, args.size // 4 : 3 * args.size // 4] = True
    pipe = load_pipeline(str(folder), task="inpaint", dtype="fp32", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    negative = {"negative_prompt": None} if "negative_prompt" in inspect.signature(pipe.__call__).parameters else {}

    def raw() -> np.ndarray:
        out = pipe(prompt="a table", image=Image.fromarray(image), mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
                   height=args.size, width=args.size, strength=1.0, num_inference_steps=args.steps,
                   guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(1), output_type="np",
                   **negative).images[0]
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)

    def ours() -> np.ndarray:
        return canvaslab.inpaint(image, mask, engine="diffusion", model=str(folder), prompt="a table",
                                 steps=args.steps, guidance_scale=guidance, strength=1.0, seed=1, dtype="fp32",
                                 device="cpu").image

    raw(), ours()  # warm-up: first calls pay for lazy initialisation
    raw_times, our_times = [], []
    for _ in range(args.runs):  # interleaved, so machine load hits both alike
        started = time.perf_counter()
        raw_out = raw()
        raw_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        our_out = ours()
        our_times.append(time.perf_counter() - started)
    raw_s, our_s = statistics.median(raw_times), statistics.median(our_times)
    # Each pair ran back to back, so its ratio cancels slow drifts in machine load; take their median.
    ratio = statistics.median(ours / raw for ours, raw in zip(our_times, raw_times))
    same = np.array_equal(raw_out[mask], our_out[mask])
    print(f"\n{label} ({type(pipe).__name__}), {args.size}x{args.size}, {args.steps} steps, {args.runs} runs, 1 torch thread")
    print("| call | median s |")
    print("|---|---:|")
    print(f"| diffusers pipeline (baseline) | {raw_s:.4f} |")
    print(f"| canvaslab.inpaint | {our_s:.4f} |")
    print(f"overhead ratio (median of paired ours / baseline): {ratio:.3f}  (goal <= 1.03)")
    print(f"masked pixels identical to the raw call: {same}")
    print(f"unmasked pixels identical to the input: {np.array_equal(our_out[~mask], image[~mask])}")


def tiled_cost(folder: Path, steps: int) -> None:
    """Tiled outpainting: seconds per generated megapixel should stay flat as the canvas grows."""
    print(f"\ntiled outpainting (64 px windows, {steps} steps): height 128, right side extended")
    print("| canvas | new px | s | s per new Mpx | ratio to first |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    first = None
    for extra in (128, 384, 896):
        started = time.perf_counter()
        # outpaint's `steps` counts outpaint steps; the sampler's are `sampling_steps`
        canvaslab.outpaint(image, right=extra, engine="diffusion", model=str(folder), sampling_steps=steps, seed=0,
                           tile=64, dtype="fp32", device="cpu")
        seconds = time.perf_counter() - started
        per_mpx = seconds / (128 * extra / 1e6)
        first = first or per_mpx
        print(f"| 128x{128 + extra} | {128 * extra} | {seconds:.2f} | {per_mpx:.1f} | {per_mpx / first:.2f} |")


if __name__ == "__main__":
    main()
