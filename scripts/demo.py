"""The README's demo: real inpainting and outpainting on the shipped photos, no GPU, no weights.

Runs the `canvaslab` command exactly as a user would and prints where everything went.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OUT = ROOT / "outputs" / "demo"
CLI = [sys.executable, "-m", "canvaslab"]

JOBS = [
    ("remove the spoon (PatchMatch, the default engine)",
     ["inpaint", EXAMPLES / "coffee.png", "--mask", EXAMPLES / "coffee_mask.png", "--seed", "1",
      "-o", OUT / "coffee-inpaint.png"]),
    ("remove a tower, three seeds, with a labelled comparison grid",
     ["inpaint", EXAMPLES / "rocket.jpg", "--mask", EXAMPLES / "rocket_mask.png", "--grow", "3", "--feather", "3",
      "--seed", "7", "--rows", "3", "--grid", OUT / "rocket-grid.png", "--labels", "-o", OUT / "rocket-inpaint.png"]),
    ("repair scratches on a print: PatchMatch vs OpenCV Telea",
     ["inpaint", EXAMPLES / "chelsea.png", "--mask", EXAMPLES / "chelsea_mask.png", "--seed", "1",
      "-o", OUT / "chelsea-patchmatch.png"]),
    ("", ["inpaint", EXAMPLES / "chelsea.png", "--mask", EXAMPLES / "chelsea_mask.png", "--engine", "telea",
          "-o", OUT / "chelsea-telea.png"]),
    ("outpaint: 96 px on each side, in two steps",
     ["outpaint", EXAMPLES / "rocket.jpg", "--left", "96", "--right", "96", "--steps", "2", "--seed", "3",
      "-o", OUT / "rocket-outpaint.png"]),
    ("side-by-side grid of the scratch repair",
     ["grid", EXAMPLES / "chelsea.png", OUT / "chelsea-telea.png", OUT / "chelsea-patchmatch.png",
      "--columns", "3", "--labels", "-o", OUT / "chelsea-compare.png"]),
]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for title, args in JOBS:
        if title:
            print(f"\n# {title}")
        argv = [str(a) for a in args]
        print("$ canvaslab " + " ".join(shlex.quote(a) for a in argv), flush=True)
        done = subprocess.run(CLI + ["--quiet"] + argv)
        if done.returncode != 0:
            print(f"demo step failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
    print(f"\nDone in {time.perf_counter() - started:.1f} s. Outputs are in {OUT}:")
    for path in sorted(OUT.iterdir()):
        print(f"  {path}")
    print("Each PNG carries its recipe: try  canvaslab info", OUT / "coffee-inpaint.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
