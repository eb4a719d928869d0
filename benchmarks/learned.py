"""Speed of the learned erasers (big-LaMa, MI-GAN 512) on one CPU core at 512 px, against PatchMatch and
against the reference-equation forward passes of the parity tests.

    python benchmarks/learned.py [--size 512] [--repeats 3] [--no-reference]

Weights are RANDOM (seeded), at the released architectures' full size (big-LaMa: ngf 64, 3
downsamplings, 18 FFC blocks; MI-GAN: the 512 generator): speed depends on the architecture, not on
the weights, and no real file is downloaded here. Quality is not measured (random weights paint noise).

Each engine runs its whole forward path as the `lama` / `migan` engines do (pre-processing, network,
post-processing: `lama_forward` / `migan_forward`) on skimage's astronaut at `--size` px with a box
hole of 25 % of the area; torch and numba are held to one thread. Times are the median of
`--repeats` runs after one warm-up run each, as wall-clock and as CPU seconds of the process: with one
thread the CPU time is the work itself, the steadier figure when other processes share the cores.

MI-GAN is also timed as an ONNX export of the same network (the generator alone, as MI-GAN's export
script writes it) loaded through `load_migan` and run by onnxruntime on one thread: the path a user
with MI-GAN's released ONNX file takes (needs the `onnx` and `onnxruntime` packages; skipped without).

Named baseline, measured in the same run: PatchMatch (our default engine, `patchmatch_inpaint(threads=1)`)
on the same picture and hole; every ratio is "this method's time / PatchMatch's". Also timed: the
reference forward passes the parity tests derive from the papers' equations
(tests/engines/test_learned_parity.py: float64 functional torch, explicit BatchNorm, numpy FFT for
LaMa's Fourier units, explicit FIR resampling for MI-GAN), once each: what our modules' fp32 forward
gains over a straight transcription of the equations.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

from canvaslab.engines.classical.patchmatch import patchmatch_inpaint  # noqa: E402
from canvaslab.engines.learned.engine import lama_forward, migan_forward  # noqa: E402
from canvaslab.engines.learned.lama import LamaConfig, LamaGenerator, inpaint_tensor  # noqa: E402
from canvaslab.engines.learned.loading import LamaNetwork, MiganNetwork, load_migan  # noqa: E402
from canvaslab.engines.learned.migan import MiganConfig, MiganGenerator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def picture(size: int) -> tuple[np.ndarray, np.ndarray]:
    rgb = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    hole = np.zeros((size, size), bool)
    hole[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    return np.ascontiguousarray(rgb), hole


def random_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights of a trained network's order of magnitude (so activations neither vanish nor blow up)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.dtype.is_floating_point or "filter" in name:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.zero_()
            elif tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
    return module.eval()


def timed(run, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of `repeats` runs after a warm-up run."""
    run()  # warm-up: numba's cache load, torch's first-call allocations
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def timed_once(run) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        run()
    return time.perf_counter() - start, time.process_time() - start_cpu


def migan_onnx_export(migan: torch.nn.Module, size: int) -> tuple[Path | None, str]:
    """The same random-weight MI-GAN exported as MI-GAN's export script writes the generator (one
    (1, 4, R, R) input, opset 12), in a temporary folder; (None, why) without onnx / onnxruntime."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return None, f"{exc.name} is not installed (pip install 'canvaslab[dev]')"
    folder = Path(tempfile.mkdtemp(prefix="canvaslab-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "migan_512.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(migan, (torch.randn(1, 4, size, size),), str(path), dynamo=False,
                          input_names=["input"], output_names=["output"], opset_version=12)
    return path, ""


def reference_forwards():
    """The parity tests' reference functions (imported from the test module, which needs pytest)."""
    sys.path[:0] = [str(ROOT / "tests" / "engines"), str(ROOT / "tests")]
    import test_learned_parity as parity

    return parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="side of the square picture (default 512: MI-GAN's own)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method after a warm-up (median)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference-equation forwards")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rgb, hole = picture(args.size)

    lama = random_weights(LamaGenerator(LamaConfig()), 0)
    migan = random_weights(MiganGenerator(MiganConfig(resolution=args.size)), 1)
    lama_net = LamaNetwork(lambda image, mask: inpaint_tensor(lama, image, mask), 8, torch.device("cpu"), "checkpoint")
    migan_net = MiganNetwork(args.size, torch.device("cpu"), "state-dict", predict=migan)
    params = {name: sum(p.numel() for p in net.parameters()) / 1e6 for name, net in (("lama", lama), ("migan", migan))}

    rows: list[tuple[str, tuple[float, float], str]] = []
    base = timed(lambda: patchmatch_inpaint(rgb, hole, seed=0, threads=1), args.repeats)
    rows.append(("patchmatch (baseline)", base, f"median of {args.repeats}"))
    rows.append((f"migan 512 ({params['migan']:.1f} M parameters)", timed(lambda: migan_forward(migan_net, rgb, hole),
                                                                       args.repeats), f"median of {args.repeats}"))
    onnx_file, why = migan_onnx_export(migan, args.size)
    if onnx_file is not None:
        onnx_net = load_migan(onnx_file)
        rows.append(("migan 512, ONNX export run by onnxruntime", timed(lambda: migan_forward(onnx_net, rgb, hole),
                                                                        args.repeats), f"median of {args.repeats}"))
    else:
        print(f"migan through onnxruntime skipped: {why}")
    rows.append((f"big-lama ({params['lama']:.1f} M parameters)", timed(lambda: lama_forward(lama_net, rgb, hole),
                                                                      args.repeats), f"median of {args.repeats}"))

    if not args.no_reference:
        parity = reference_forwards()
        x_migan = torch.rand(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(2)).double() * 2 - 1
        w_migan = parity._sd64(migan)
        rows.append(("migan, reference equations (float64)",
                     timed_once(lambda: parity.reference_migan(w_migan, args.size, x_migan)), "one run"))
        w_lama = parity._sd64(lama)
        x_lama = torch.rand(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(3)).double()
        rows.append(("big-lama, reference equations (float64)",
                     timed_once(lambda: parity.reference_lama(w_lama, lama.config, x_lama)), "one run"))

    print(f"astronaut {args.size}x{args.size}, box hole {int(hole.sum())} px; one thread (torch "
          f"{torch.get_num_threads()}, numba {os.environ['NUMBA_NUM_THREADS']}); RANDOM weights (speed only); "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("| method | wall s/img | CPU s/img | x PatchMatch (CPU) | timing |")
    print("|---|---:|---:|---:|---|")
    for name, (wall, cpu), how in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {cpu / base[1]:.2f} | {how} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
