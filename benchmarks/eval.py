"""How long `canvaslab eval run` takes to score 1,000 512 px cases with the weight-free metrics, against a
plain scikit-image loop computing the same numbers, in the same run.

    python benchmarks/eval.py [--cases 1000] [--work DIR]
    python benchmarks/eval.py --photos DIR     # only write the shipped photos (for docs/eval.md's table)
    python benchmarks/eval.py --screenshot report.html docs/eval-report.png   # a report page as a PNG

Cases: LaMa's thick-512 protocol (`canvaslab eval protocol lama-thick-512`) drawn from the ten photos and
textures that ship with scikit-image (astronaut, chelsea, coffee, rocket, stereo_motorcycle's left view,
immunohistochemistry, retina, and camera, brick, grass as RGB), `--cases / 10` masks per photo, 512x512
crops. The outputs to score are a cheap, deterministic smooth fill (a normalised Gaussian convolution of
the known pixels), written as PNGs like another tool's outputs: making them is not what is measured.
The protocol and the outputs are kept in `--work` (default: a temporary folder), so a rerun measures
only the scoring.

Measured, one after the other on the same files:

1. canvaslab: `run_eval` with `--predictions` (as `canvaslab eval run --protocol P --predictions DIR
   --metrics pixels`): read output, reference and mask, every weight-free metric (psnr/ssim/l1 over the
   hole and the image, detail, seam, outside change), a score file per case, run.json; OpenCV filters in
   2 threads (the default);
2. the same with one thread for the metrics (OpenCV's and ours; files are still read in 2 threads);
3. a plain loop: skimage.io.imread, skimage.metrics' PSNR and SSIM (Gaussian 11x11, sigma 1.5, as
   ours), numpy L1 and outside change, scipy.ndimage's Sobel and binary dilation/erosion for detail
   and seam, on the same definitions (grey = ITU-R 601 luma, as OpenCV's).

Printed: wall seconds, cases/s and CPU seconds (all threads) for each, the ratio plain / canvaslab
(wall), the load average (the machine's cores are shared), and the largest difference between the two
sets of numbers per metric (the loop is the reference implementation).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "immunohistochemistry", "retina", "camera",
          "brick", "grass")
PROTOCOL = "lama-thick-512"
COLUMNS = ("psnr_hole", "ssim_hole", "l1_hole", "psnr", "ssim", "l1", "detail", "seam", "outside_changed", "outside_l1")


def write_photos(folder: Path) -> Path:
    """The shipped photos as PNGs, full size (the protocol resizes and crops them)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        path = folder / f"{name}.png"
        if path.exists():
            continue
        image = getattr(data, name)()
        if isinstance(image, tuple):  # stereo pairs: the left view
            image = image[0]
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        Image.fromarray(np.ascontiguousarray(image[..., :3])).save(path)
    return folder


def screenshot(page: Path, png: Path) -> None:
    """The whole page in headless chromium (Debian's, through Playwright), 1360 px wide, scaled to 1020
    and reduced to 256 colours to keep the PNG small."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1360, "height": 900})
        tab.goto(page.resolve().as_uri())
        shot = tab.screenshot(full_page=True)
        browser.close()
    import io

    image = Image.open(io.BytesIO(shot)).convert("RGB")
    image = image.resize((1020, round(image.height * 1020 / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(png, optimize=True)


def smooth_fill(given: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Known pixels kept, the hole filled by a normalised Gaussian convolution of the known ones."""
    known = (~hole).astype(np.float32)
    image = given.astype(np.float32) * known[..., None]
    sigma = 24
    num = cv2.GaussianBlur(image, (0, 0), sigma)
    den = cv2.GaussianBlur(known, (0, 0), sigma)[..., None]
    fill = np.clip(num / np.maximum(den, 1e-3) + 0.5, 0, 255).astype(np.uint8)
    out = given.copy()
    out[hole] = fill[hole]
    return out


def prepare(work: Path, cases: int) -> tuple[Path, Path]:
    from canvaslab.eval.protocols import build_protocol, load_manifest

    photos = write_photos(work / "photos")
    protocol = work / "protocol"
    if not (protocol / "protocol.json").exists():
        started = time.perf_counter()
        build_protocol(PROTOCOL, photos, protocol, seed=0, per_image=math.ceil(cases / len(PHOTOS)))
        print(f"protocol {PROTOCOL}: written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    manifest = load_manifest(protocol)
    predictions = work / "predictions"
    predictions.mkdir(exist_ok=True)
    for case in manifest.cases:
        target = predictions / f"{case.id}.png"
        if not target.exists():
            given = np.asarray(Image.open(manifest.file(case.input)).convert("RGB"))
            hole = np.asarray(Image.open(manifest.file(case.mask))) > 127
            Image.fromarray(smooth_fill(given, hole)).save(target, compress_level=1)
    return protocol, predictions


def run_canvaslab(protocol: Path, predictions: Path, work: Path, cases: int, *, threads: int) -> tuple[float, float, dict]:
    from canvaslab.eval.metrics.pixels import PixelMetrics
    from canvaslab.eval.protocols import load_manifest
    from canvaslab.eval.run import RunSpec, run_eval

    manifest = load_manifest(protocol)
    manifest.cases = manifest.cases[:cases]
    output = work / f"run-{threads}.json"
    shutil.rmtree(output.with_suffix(""), ignore_errors=True)  # score everything again
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    PixelMetrics.threads = threads
    try:
        started, cpu = time.perf_counter(), time.process_time()
        result = run_eval(RunSpec(manifest, output, ["pixels"], predictions=predictions))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        cv2.setNumThreads(before)
        PixelMetrics.threads = 2
    assert result.record is not None and not result.failed, result.failed[:3]
    return seconds, cpu, {case["id"]: case for case in result.record["cases"]}


def plain_metrics(out: np.ndarray, ref: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    from scipy import ndimage
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return 100.0 if np.array_equal(a, b) else min(100.0, peak_signal_noise_ratio(a, b, data_range=255))

    ssim, smap = structural_similarity(ref, out, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255, channel_axis=2, full=True)
    diff = np.abs(out.astype(np.float64) - ref)

    def gradient(rgb: np.ndarray) -> np.ndarray:
        grey = rgb @ np.array([0.299, 0.587, 0.114])
        return np.hypot(ndimage.sobel(grey, axis=1, mode="reflect"), ndimage.sobel(grey, axis=0, mode="reflect"))

    g_out, g_ref = gradient(out.astype(np.float64)), gradient(ref.astype(np.float64))
    square = np.ones((7, 7), bool)
    band = ndimage.binary_dilation(hole, square) & ~ndimage.binary_erosion(hole, square, border_value=1)
    outside = ~hole
    return {
        "psnr_hole": psnr(ref[hole], out[hole]), "ssim_hole": float(smap.mean(axis=2)[hole].mean()),
        "l1_hole": float(diff[hole].mean() / 255), "psnr": psnr(ref, out), "ssim": float(ssim), "l1": float(diff.mean() / 255),
        "detail": float((g_out[hole] ** 2).mean() / (g_ref[hole] ** 2).mean()),
        "seam": float(np.abs(g_out - g_ref)[band].mean() / g_ref[band].mean()),
        "outside_changed": float((diff.max(axis=2) > 0)[outside].mean()), "outside_l1": float(diff[outside].mean() / 255),
    }


def run_plain(protocol: Path, predictions: Path, cases: int) -> tuple[float, float, dict]:
    from skimage import io

    from canvaslab.eval.protocols import load_manifest

    manifest = load_manifest(protocol)
    rows = {}
    started, cpu = time.perf_counter(), time.process_time()
    for case in manifest.cases[:cases]:
        ref = io.imread(manifest.file(case.reference))
        hole = io.imread(manifest.file(case.mask)) > 127
        out = io.imread(predictions / f"{case.id}.png")
        rows[case.id] = plain_metrics(out, ref, hole)
    return time.perf_counter() - started, time.process_time() - cpu, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="cases scored (10 photos x ceil(cases / 10) masks)")
    parser.add_argument("--work", type=Path, help="keep the protocol and the outputs here (default: a temporary folder)")
    parser.add_argument("--photos", type=Path, help="only write the shipped photos into this folder and exit")
    parser.add_argument("--screenshot", type=Path, nargs=2, metavar=("HTML", "PNG"), help="only screenshot a report and exit")
    args = parser.parse_args()
    if args.photos:
        print(write_photos(args.photos))
        return
    if args.screenshot:
        screenshot(*args.screenshot)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="canvaslab-eval-bench-"))
    protocol, predictions = prepare(work, args.cases)
    load = f"{os.getloadavg()[0]:.1f}"
    print(f"{args.cases} cases of {PROTOCOL} (512x512) from {len(PHOTOS)} shipped photos; {os.cpu_count()} CPUs; "
          f"work folder {work}")
    ours, ours_cpu, values = run_canvaslab(protocol, predictions, work, args.cases, threads=2)
    single, single_cpu, _ = run_canvaslab(protocol, predictions, work, args.cases, threads=1)
    plain, plain_cpu, reference = run_plain(protocol, predictions, args.cases)
    print(f"{'':44s} {'seconds':>8s} {'cases/s':>8s} {'CPU s':>7s} {'plain / this':>13s}")
    for name, seconds, cpu in (("canvaslab eval run --predictions (2 threads)", ours, ours_cpu),
                               ("canvaslab, metrics in 1 thread", single, single_cpu), ("plain scikit-image loop", plain, plain_cpu)):
        print(f"{name:44s} {seconds:8.1f} {args.cases / seconds:8.1f} {cpu:7.1f} {plain / seconds:12.1f}x")
    print(f"load average before/after: {load} / {os.getloadavg()[0]:.1f} (the cores are shared: wall time grows with it, CPU time less)")
    print("largest |canvaslab - plain| per metric over the cases:")
    for column in COLUMNS:
        gap = max(abs(values[cid][column] - reference[cid][column]) for cid in reference)
        print(f"  {column:16s} {gap:.2e}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
