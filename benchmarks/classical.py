"""Compare canvaslab's PatchMatch engine with other weight-free inpainting methods on real photos.

    python benchmarks/classical.py [--size 512] [--quick] [--images astronaut,chelsea]
    python benchmarks/classical.py --wide

Photos: skimage.data astronaut, chelsea, coffee and rocket, resized so the long side is `--size`.
Masks (seeded, so every run sees the same holes):

- scribbles: 8 random polyline strokes, 5-9 px wide;
- box: an axis-aligned box of ~25% of the image area, near the centre;
- band: the right 20% of the width (outpainting).

`--wide` is the wider set the PatchMatch goal is judged on: ten photos and textures that ship with
scikit-image (the four above, stereo_motorcycle's left view, immunohistochemistry, retina, and the
grey camera, brick and grass as RGB), at long sides 256 and 512, with a fourth mask kind,
small-box (a box of ~6% of the area, off centre); every figure is the mean over photos and sizes
of one mask kind.

Methods: canvaslab `patchmatch`, OpenCV Telea (the baseline every ratio is taken against),
OpenCV Navier-Stokes, skimage `inpaint_biharmonic`, and `pypatchmatch` (PyPI) when it imports.
With `--against COMMIT`, also our PatchMatch as it was at that commit (its patchmatch.py, loaded
from git), to compare an engine change on the same photos in the same run: its quality columns,
and the median of per-image time ratios old / new.

Metrics, computed per image and averaged over images:

- PSNR (dB): over the hole pixels only, all channels; higher is better.
- SSIM: the skimage SSIM map (7x7 window, per channel), averaged over the hole pixels; higher is
  better.
- detail: gradient energy in the hole of the result divided by the same in the ground truth, where
  gradient energy is the mean squared Sobel magnitude of the grey image over the hole pixels.
  1.0 means as much texture as the real photo; smooth fills (diffusion) score low, noisy or
  over-sharp fills above 1.
- seam: mean |G(result) - G(truth)| over a band of pixels within 3 px of the hole boundary (both
  sides; the image border is not a boundary), divided by the mean G(truth) in that band, where G
  is the Sobel gradient magnitude of the grey image.  0 is ideal: no gradient that the real photo
  does not have.  Visible seams and smeared edges both raise it.
- s/img: wall-clock seconds per image, after a numba warm-up; 2 CPU cores here.

    python benchmarks/classical.py --frontier

measures what texture that is not the hidden content costs in hole SSIM, on the --wide set: next to
Telea and our PatchMatch, two reference fills that use the real photo (so they cannot be run on a
user's image; they only map the trade-off between the goal's two halves): "real content", the hole
filled with the photo's own pixels from half an image away (np.roll by half the height and width:
real texture at full contrast, not the content behind the hole), and "Telea + real detail xA", Telea's
fill plus A times the high-pass part (minus a Gaussian blur, sigma 2) of that same rolled content.

    python benchmarks/classical.py --cancel [--cancel-size 2048]

measures instead how long a big PatchMatch fill (astronaut at --cancel-size px, box hole) goes on
after its cancel flag is set (core.progress, as the server sets it), at 10-90 % of its run.
Named baseline: the engine before it checked for cancellation inside the fill (d5ab27a): it ran
each fill to its end, so its delay is the rest of the run, i.e. the whole fill's time (measured in
the same run; the kernels' speed is unchanged) minus the moment the flag was set.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", str(os.cpu_count() or 2))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage import data  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402
from skimage.restoration import inpaint_biharmonic  # noqa: E402

from canvaslab.core.progress import Cancelled, progress_listener  # noqa: E402
from canvaslab.engines.classical.patchmatch import patchmatch_inpaint  # noqa: E402

IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
MASKS = ("scribbles", "box", "band")
WIDE_IMAGES = IMAGES + ("stereo_motorcycle", "immunohistochemistry", "retina", "camera", "brick", "grass")
WIDE_MASKS = ("scribbles", "small-box", "box", "band")
WIDE_SIZES = (256, 512)
SEED = 0


# ---------------------------------------------------------------------------------------------
# Data


def load_photo(name: str, size: int) -> np.ndarray:
    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo pairs: the left view
        img = img[0]
    if img.ndim == 2:  # grey photos and textures, as RGB
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(img, new, interpolation=interp))


def make_mask(kind: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    h, w = shape
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    if kind == "scribbles":
        for _ in range(8):
            pts = np.cumsum(rng.normal(0, min(h, w) / 8, size=(5, 2)), axis=0)
            pts += rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h])
            pts = np.clip(pts, 0, [w - 1, h - 1]).astype(np.int32)
            cv2.polylines(mask, [pts], False, 1, thickness=int(rng.integers(5, 10)))
    elif kind == "box":
        bh, bw = round(h * 0.5), round(w * 0.5)
        y0 = (h - bh) // 2 + int(rng.integers(-h // 16, h // 16 + 1))
        x0 = (w - bw) // 2 + int(rng.integers(-w // 16, w // 16 + 1))
        mask[y0 : y0 + bh, x0 : x0 + bw] = 1
    elif kind == "small-box":
        bh, bw = round(h * 0.25), round(w * 0.25)
        y0 = int(rng.integers(h // 8, h - bh - h // 8))
        x0 = int(rng.integers(w // 8, w - bw - w // 8))
        mask[y0 : y0 + bh, x0 : x0 + bw] = 1
    elif kind == "band":
        mask[:, w - round(0.2 * w) :] = 1
    else:
        raise ValueError(kind)
    return mask.astype(bool)


def case_seed(index: int, kind_index: int) -> int:
    """The mask seed of picture number `index` (sizes outer, photos inner) and mask kind number `kind_index`."""
    return SEED + 10 * index + kind_index


def cases(names, sizes, masks):
    """Every (photo, size, mask kind) case with its seeded hole, pictures ordered sizes first:
    (name, size, kind, truth, hole, damaged), the damaged copy white in the hole (methods must not peek)."""
    pictures = [(name, size) for size in sizes for name in names]
    for i, (name, size) in enumerate(pictures):
        truth = load_photo(name, size)
        for j, kind in enumerate(masks):
            hole = make_mask(kind, truth.shape[:2], case_seed(i, j))
            damaged = truth.copy()
            damaged[hole] = 255
            yield name, size, kind, truth, hole, damaged


# ---------------------------------------------------------------------------------------------
# Methods: each takes (RGB uint8 image, bool hole) and returns an RGB uint8 image


TUNING: dict[str, float] = {}  # --tuning: patchmatch knobs to try without editing the engine


def run_patchmatch(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    return patchmatch_inpaint(img, hole, seed=SEED, **TUNING)


def run_telea(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    return cv2.inpaint(img, hole.astype(np.uint8), 3, cv2.INPAINT_TELEA)


def run_ns(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    return cv2.inpaint(img, hole.astype(np.uint8), 3, cv2.INPAINT_NS)


def run_biharmonic(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    out = inpaint_biharmonic(img, hole, channel_axis=-1)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def _module_from_source(folder: Path, name: str, source: str):
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def patchmatch_at(commit: str):
    """Our PatchMatch as of `commit` (its patchmatch.py from git, with that commit's numba kernels when
    they were a module of their own), as a method."""
    root = Path(__file__).resolve().parent.parent

    def show(name: str) -> str | None:
        run = subprocess.run(["git", "show", f"{commit}:src/canvaslab/engines/classical/{name}"], cwd=root,
                             capture_output=True, text=True)
        return run.stdout if run.returncode == 0 else None

    source = show("patchmatch.py")
    if source is None:
        raise SystemExit(f"no src/canvaslab/engines/classical/patchmatch.py at {commit}")
    folder = Path(tempfile.mkdtemp(prefix="canvaslab-patchmatch-"))  # numba caches its kernels beside it
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    kernels = show("patchmatch_kernels.py")
    if kernels is not None:
        _module_from_source(folder, f"patchmatch_kernels_{commit}", kernels)
        source = source.replace("canvaslab.engines.classical.patchmatch_kernels", f"patchmatch_kernels_{commit}")
    module = _module_from_source(folder, f"patchmatch_{commit}", source)

    def run(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
        return module.patchmatch_inpaint(img, hole, seed=SEED, **TUNING)

    return run


def pypatchmatch_runner():
    """The pypatchmatch method, or (None, reason) when it cannot be used here."""
    try:
        from patchmatch import patch_match
    except Exception as exc:  # any import failure just means "not available"
        return None, f"{type(exc).__name__}: {exc}"
    if not getattr(patch_match, "patchmatch_available", False):
        return None, "its native library failed to load"

    def run(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
        patch_match.set_random_seed(SEED)
        # patch_size is a radius there: 3 gives 7x7 patches, the same as ours.
        out = patch_match.inpaint(img, hole.astype(np.uint8), patch_size=3)
        result = img.copy()
        result[hole] = out[hole]
        return result

    return run, ""


# ---------------------------------------------------------------------------------------------
# Metrics


def grey(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)


def sobel_magnitude(img: np.ndarray) -> np.ndarray:
    g = grey(img)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return np.sqrt(gx * gx + gy * gy)


def boundary_band(hole: np.ndarray, width: int = 3) -> np.ndarray:
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    h8 = hole.astype(np.uint8)
    # Replicated borders keep the image edge from counting as a hole boundary.
    grown = cv2.dilate(h8, kernel, borderType=cv2.BORDER_REPLICATE) > 0
    shrunk = cv2.erode(h8, kernel, borderType=cv2.BORDER_REPLICATE) > 0
    return grown & ~shrunk


def metrics(result: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    diff = result[hole].astype(np.float64) - truth[hole].astype(np.float64)
    mse = float(np.mean(diff**2))
    psnr = 10 * np.log10(255.0**2 / max(mse, 1e-10))
    _, ssim_map = structural_similarity(truth, result, channel_axis=2, data_range=255, full=True)
    g_res, g_true = sobel_magnitude(result), sobel_magnitude(truth)
    detail = float(np.mean(g_res[hole] ** 2) / max(np.mean(g_true[hole] ** 2), 1e-6))
    band = boundary_band(hole)
    seam = float(np.mean(np.abs(g_res[band] - g_true[band])) / max(np.mean(g_true[band]), 1e-6))
    return {"psnr": psnr, "ssim": float(ssim_map[hole].mean()), "detail": detail, "seam": seam}


# ---------------------------------------------------------------------------------------------
# Report


COLUMNS = (("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("detail", "detail", "{:.2f}"),
           ("seam", "seam", "{:.3f}"), ("seconds", "s/img", "{:.3f}"))


def print_tables(results: dict, methods: list[str], masks: tuple[str, ...]) -> None:
    print("| mask | method | " + " | ".join(c[1] for c in COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for kind in masks:
        for m in methods:
            row = results[(m, kind)]
            cells = [fmt.format(np.mean(row[key])) for key, _, fmt in COLUMNS]
            print(f"| {kind} | {m} | " + " | ".join(cells) + " |")
    print()
    print("Relative to Telea (PSNR as a difference in dB, the rest as ratios; seam < 1 is better):")
    print()
    print("| mask | method | dPSNR | SSIM x | detail x | seam x | time x |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind in masks:
        base = {k: np.mean(v) for k, v in results[("telea", kind)].items()}
        for m in methods:
            if m == "telea":
                continue
            cur = {k: np.mean(v) for k, v in results[(m, kind)].items()}
            print(
                f"| {kind} | {m} | {cur['psnr'] - base['psnr']:+.2f} | {cur['ssim'] / base['ssim']:.3f} | "
                f"{cur['detail'] / base['detail']:.2f} | {cur['seam'] / base['seam']:.2f} | "
                f"{cur['seconds'] / max(base['seconds'], 1e-9):.1f} |"
            )


def print_goal(results: dict, masks: tuple[str, ...]) -> None:
    """PatchMatch's own goal, per mask kind: hole SSIM >= Telea's and a detail ratio within 0.8-1.2."""
    print()
    print("| mask | SSIM ours / Telea | detail ours | goal |")
    print("|---|---:|---:|---|")
    for kind in masks:
        ssim = np.mean(results[("patchmatch", kind)]["ssim"]) / np.mean(results[("telea", kind)]["ssim"])
        detail = np.mean(results[("patchmatch", kind)]["detail"])
        met = ssim >= 1 and 0.8 <= detail <= 1.2
        missed = [what for what, ok in (("SSIM", ssim >= 1), ("detail", 0.8 <= detail <= 1.2)) if not ok]
        print(f"| {kind} | {ssim:.3f} | {detail:.2f} | {'met' if met else 'missed: ' + ', '.join(missed)} |")


def frontier() -> int:
    """SSIM ratio to Telea and detail, per mask kind, of fills with real texture that does not match
    the hidden content (see the module docstring), beside our PatchMatch."""
    methods = ("patchmatch", "real content", "Telea + real detail x0.5", "Telea + real detail x1")
    results: dict = defaultdict(lambda: defaultdict(list))
    warm = load_photo(WIDE_IMAGES[0], 64)
    run_patchmatch(warm, make_mask("box", warm.shape[:2], SEED))
    for _, _, kind, truth, hole, damaged in cases(WIDE_IMAGES, WIDE_SIZES, WIDE_MASKS):
        h, w = truth.shape[:2]
        elsewhere = np.roll(truth, (h // 2, w // 2), axis=(0, 1)).astype(np.float32)
        detail = elsewhere - cv2.GaussianBlur(elsewhere, (0, 0), 2)
        telea = run_telea(damaged, hole)
        fills = {"telea": telea, "patchmatch": run_patchmatch(damaged, hole)}
        copy = damaged.astype(np.float32)
        copy[hole] = elsewhere[hole]
        fills["real content"] = copy
        for amount, label in ((0.5, methods[2]), (1.0, methods[3])):
            mixed = telea.astype(np.float32)
            mixed[hole] += amount * detail[hole]
            fills[label] = mixed
        for method, out in fills.items():
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
            for key, value in metrics(out, truth, hole).items():
                results[(method, kind)][key].append(value)
    print(f"images: {', '.join(WIDE_IMAGES)} at long side {', '.join(map(str, WIDE_SIZES))}")
    print()
    print("| fill | " + " | ".join(f"{kind}: SSIM / Telea, detail" for kind in WIDE_MASKS) + " |")
    print("|---|" + "---:|" * len(WIDE_MASKS))
    for method in ("telea",) + methods:
        cells = []
        for kind in WIDE_MASKS:
            ssim = np.mean(results[(method, kind)]["ssim"]) / np.mean(results[("telea", kind)]["ssim"])
            cells.append(f"{ssim:.3f} / {np.mean(results[(method, kind)]['detail']):.2f}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


def cancel_delays(size: int) -> int:
    """Seconds from setting the cancel flag to the fill raising Cancelled, at points across a fill."""
    truth = load_photo("astronaut", size)
    hole = make_mask("box", truth.shape[:2], SEED)
    warm = load_photo("astronaut", 96)
    run_patchmatch(warm, make_mask("box", warm.shape[:2], SEED))
    started = time.perf_counter()
    run_patchmatch(truth, hole)
    full = time.perf_counter() - started
    print(f"astronaut {truth.shape[1]}x{truth.shape[0]}, box hole of {int(hole.sum())} px; one whole fill: "
          f"{full:.1f} s; threads (NUMBA_NUM_THREADS): {os.environ.get('NUMBA_NUM_THREADS')}")
    print()
    print("| cancel at | ours: runs on for s | baseline (d5ab27a, no checks in the fill): runs on for s |")
    print("|---:|---:|---:|")
    delays = []
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9):
        flag = threading.Event()
        set_at: list[float] = []

        def cancel_later(wait: float = fraction * full) -> None:
            time.sleep(wait)
            set_at.append(time.perf_counter())
            flag.set()

        began = time.perf_counter()
        timer = threading.Thread(target=cancel_later)
        timer.start()
        try:
            with progress_listener(None, flag):
                run_patchmatch(truth, hole)
        except Cancelled:
            stopped = time.perf_counter()
        else:
            raise SystemExit(f"the fill finished before its cancel at {fraction:.0%}")
        timer.join()
        delays.append(stopped - set_at[0])
        rest = full - (set_at[0] - began)
        print(f"| {fraction:.0%} | {delays[-1]:.3f} | {rest:.1f} |")
    print()
    print(f"ours: median {statistics.median(delays):.3f} s, worst {max(delays):.3f} s after the cancel; "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="long side of the photos (default 512)")
    parser.add_argument("--quick", action="store_true", help="two photos at 256 px, no biharmonic")
    parser.add_argument("--images", default=",".join(IMAGES), help="comma-separated skimage.data names")
    parser.add_argument("--wide", action="store_true", help="the wider set: 10 photos, 2 sizes, 4 mask kinds")
    parser.add_argument("--save", default="", help="folder to write every result PNG to")
    parser.add_argument("--tuning", default="", help="patchmatch knobs, e.g. final_top=3,poisson=0")
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods to run")
    parser.add_argument("--against", default="", help="also run our PatchMatch as of this commit")
    parser.add_argument("--frontier", action="store_true",
                        help="what real texture that is not the hidden content costs in SSIM, instead")
    parser.add_argument("--cancel", action="store_true", help="measure how fast a cancelled fill stops instead")
    parser.add_argument("--cancel-size", type=int, default=2048, help="long side of the photo for --cancel")
    args = parser.parse_args(argv)
    for item in filter(None, args.tuning.split(",")):
        key, value = item.split("=")
        TUNING[key] = float(value)
    if args.cancel:
        return cancel_delays(args.cancel_size)
    if args.frontier:
        return frontier()

    names = args.images.split(",")
    sizes, masks = (args.size,), MASKS
    if args.wide:
        names, sizes, masks = list(WIDE_IMAGES), WIDE_SIZES, WIDE_MASKS
    methods = {"patchmatch": run_patchmatch, "telea": run_telea, "ns": run_ns, "biharmonic": run_biharmonic}
    if args.quick:
        names, sizes = names[:2], (min(args.size, 256),)
        del methods["biharmonic"]
    pyp, why = pypatchmatch_runner()
    if pyp is None:
        print(f"pypatchmatch unavailable ({why}); install the PyPI package 'pypatchmatch' to compare.")
    else:
        methods["pypatchmatch"] = pyp
    old = f"patchmatch@{args.against}"
    if args.against:
        methods[old] = patchmatch_at(args.against)
    if args.methods:
        # Telea is the baseline every ratio is taken against, so it always runs.
        keep = set(args.methods.split(",")) | {"telea"} | ({old} if args.against else set())
        methods = {m: fn for m, fn in methods.items() if m in keep}

    # Compile (or load from the numba cache) before anything is timed.
    warm = load_photo(names[0], 64)
    for method in ("patchmatch", old):
        if method in methods:
            methods[method](warm, make_mask("box", warm.shape[:2], SEED))

    print(f"images: {', '.join(names)} at long side {', '.join(map(str, sizes))}; masks: {', '.join(masks)}; "
          f"threads (NUMBA_NUM_THREADS): {os.environ.get('NUMBA_NUM_THREADS')}")
    print()
    results: dict = defaultdict(lambda: defaultdict(list))
    outputs: dict = defaultdict(list)
    for number, (name, size, kind, truth, hole, damaged) in enumerate(cases(names, sizes, masks)):
        # A different method goes first on each image, so none always runs right after another.
        turn = list(methods.items())
        shift = number % len(turn)
        for m, fn in turn[shift:] + turn[:shift]:
            start = time.perf_counter()
            out = fn(damaged, hole)
            seconds = time.perf_counter() - start
            row = results[(m, kind)]
            for key, value in metrics(out, truth, hole).items():
                row[key].append(value)
            row["seconds"].append(seconds)
            if m.startswith("patchmatch"):
                outputs[m].append(out)
            if args.save:
                os.makedirs(args.save, exist_ok=True)
                cv2.imwrite(os.path.join(args.save, f"{name}_{size}_{kind}_{m}.png"),
                            cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    print_tables(results, list(methods), masks)
    if "patchmatch" in methods:
        print_goal(results, masks)
    if args.against and "patchmatch" in methods:
        ratios = [a / b for kind in masks for a, b in zip(results[(old, kind)]["seconds"], results[("patchmatch", kind)]["seconds"])]
        same = all(np.array_equal(a, b) for a, b in zip(outputs[old], outputs["patchmatch"]))
        print()
        print(f"time {old} / patchmatch: {statistics.median(ratios):.2f}x (median of {len(ratios)} images, "
              f"{min(ratios):.2f}-{max(ratios):.2f}); outputs {'identical' if same else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
