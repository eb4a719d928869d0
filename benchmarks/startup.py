"""Start-up cost of `canvaslab inpaint` with PatchMatch: the first run (numba compiles) and a warm start.

    python benchmarks/startup.py [--baseline d5ab27a] [--repeats 3] [--warm-runs 3]

Each measurement is one process, `python -m canvaslab inpaint examples/coffee.png --mask
examples/coffee_mask.png --seed 0 -o OUT` (600x400, the default engine), with NUMBA_CACHE_DIR set:

- first run: NUMBA_CACHE_DIR a new, empty folder: what a new user gets (and anyone after a numba
  upgrade, or on another CPU model);
- warm start: the same folder again, once the first run filled it (the median of --warm-runs runs);
- `warm()` in a new, empty folder (what `canvaslab doctor --warm` costs), then a warm start from it;
- floor: the same command with `--engine telea`, which imports no numba: the CLI's own cost.

Named baseline: the classical engine folder (src/canvaslab/engines/classical/) of commit
--baseline (default d5ab27a: numba `parallel=True` kernels, every function cached, nothing said
while compiling), put into a copy of the current source tree, so that nothing else differs. Ours:
a copy of the current tree. Both run in the same session, interleaved, --repeats times (baseline
first in odd repeats, ours first in even ones).

Reported: wall seconds and CPU seconds (user + sys of the child: less disturbed by other load on a
shared machine), medians; ratios baseline / ours are medians of the per-repeat ratios. The two
outputs are compared pixel for pixel and the result is printed: identical up to e85813c; since then
the fill has a rarity cost the baseline lacks (about 0.05 s of extra work on this picture), so they
differ. The script checks that our first run prints the compile notice and our warm starts do not.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_DIR = "src/canvaslab/engines/classical"
IMAGE, MASK = "examples/coffee.png", "examples/coffee_mask.png"
NOTICE = "compiling PatchMatch"


def copy_tree(target: Path, baseline: str | None) -> Path:
    """A copy of the current src/ (the classical engine from `baseline` when given); returns its src."""
    src = target / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if baseline is not None:
        engine = target / ENGINE_DIR
        shutil.rmtree(engine)
        engine.mkdir()
        names = subprocess.run(["git", "ls-tree", "--name-only", baseline, ENGINE_DIR + "/"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        for name in names:
            blob = subprocess.run(["git", "show", f"{baseline}:{name}"], cwd=ROOT, capture_output=True, check=True)
            (target / name).write_bytes(blob.stdout)
    return src


def run(src: Path, cache: Path, args: list[str]) -> dict:
    """One child process; wall and CPU seconds, and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(src), "NUMBA_CACHE_DIR": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "stderr": done.stderr}


def inpaint(src: Path, cache: Path, out: Path, engine: str = "patchmatch") -> dict:
    args = ["-m", "canvaslab", "inpaint", IMAGE, "--mask", MASK, "--seed", "0", "--engine", engine, "-o", str(out)]
    return run(src, cache, args)


def same_pixels(a: Path, b: Path) -> bool:
    import numpy as np
    from PIL import Image

    return np.array_equal(np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB")))


def measure(side: str, src: Path, work: Path, repeat: int, warm_runs: int) -> dict:
    cache = work / f"cache-{side}-{repeat}"
    out = work / f"{side}-{repeat}.png"
    first = inpaint(src, cache, out)
    warm = [inpaint(src, cache, work / f"{side}-{repeat}-warm.png") for _ in range(warm_runs)]
    result = {"first": first, "warm": warm, "out": out}
    if side == "ours":
        if NOTICE not in first["stderr"]:
            raise SystemExit(f"our first run did not print the compile notice:\n{first['stderr']}")
        if any(NOTICE in w["stderr"] for w in warm):
            raise SystemExit("a warm start of ours printed the compile notice: the cache was not used")
        fresh = work / f"cache-warm-{repeat}"
        result["warm()"] = run(src, fresh, ["-c", "from canvaslab.engines.classical.warm import warm; print(warm())"])
        result["after warm()"] = inpaint(src, fresh, work / f"after-warm-{repeat}.png")
        if NOTICE in result["after warm()"]["stderr"]:
            raise SystemExit("the inpaint after warm() compiled again")
    return result


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="d5ab27a", help="commit whose classical engine is the baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm-runs", type=int, default=3, help="warm starts per repeat (their median counts)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="canvaslab-bench-startup-") as folder:
        work = Path(folder)
        trees = {"baseline": copy_tree(work / "baseline", args.baseline), "ours": copy_tree(work / "ours", None)}
        print(f"baseline: classical engine of {args.baseline}; ours: working tree of {commit}; "
              f"{os.cpu_count()} CPUs; {args.repeats} repeats x ({args.warm_runs} warm starts)", flush=True)
        results: dict[str, list[dict]] = {"baseline": [], "ours": []}
        floor = []
        for repeat in range(args.repeats):
            order = ["baseline", "ours"] if repeat % 2 == 0 else ["ours", "baseline"]
            for side in order:
                results[side].append(measure(side, trees[side], work, repeat, args.warm_runs))
            floor.append(inpaint(trees["ours"], work / "cache-telea", work / "telea.png", engine="telea"))
            same = same_pixels(results["baseline"][-1]["out"], results["ours"][-1]["out"])
            outputs = "outputs identical" if same else "outputs differ: the engine's defaults changed since the baseline"
            print(f"repeat {repeat + 1}/{args.repeats} done ({outputs})", flush=True)
        report(results, floor)


def report(results: dict[str, list[dict]], floor: list[dict]) -> None:
    def warm_of(r: dict, key: str) -> float:
        return median([w[key] for w in r["warm"]])

    rows = [
        ("first run, empty cache", lambda r, k: r["first"][k]),
        ("warm start", warm_of),
    ]
    print()
    print("| run | baseline wall s | ours wall s | baseline CPU s | ours CPU s | wall ratio | CPU ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, get in rows:
        cells = []
        for key in ("wall", "cpu"):
            base = [get(r, key) for r in results["baseline"]]
            ours = [get(r, key) for r in results["ours"]]
            cells.append((median(base), median(ours), median([b / o for b, o in zip(base, ours)])))
        (bw, ow, rw), (bc, oc, rc) = cells
        print(f"| {label} | {bw:.2f} | {ow:.2f} | {bc:.2f} | {oc:.2f} | {rw:.2f}x | {rc:.2f}x |")
    ours = results["ours"]
    for key in ("warm()", "after warm()"):
        wall, cpu = median([r[key]["wall"] for r in ours]), median([r[key]["cpu"] for r in ours])
        label = "warm() in an empty cache" if key == "warm()" else "inpaint after warm()"
        print(f"| {label} | | {wall:.2f} | | {cpu:.2f} | | |")
    print(f"| floor: --engine telea (no numba) | | {median([f['wall'] for f in floor]):.2f} | | "
          f"{median([f['cpu'] for f in floor]):.2f} | | |")
    print()
    for side in ("baseline", "ours"):
        firsts = ", ".join(f"{r['first']['wall']:.1f}" for r in results[side])
        warms = ", ".join(f"{w['wall']:.2f}" for r in results[side] for w in r["warm"])
        print(f"{side}: first runs {firsts} s; warm starts {warms} s")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
