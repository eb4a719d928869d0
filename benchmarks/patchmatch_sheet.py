"""Write docs/images/patchmatch_sheet.png: before/after crops of PatchMatch's known failure modes.

    python benchmarks/patchmatch_sheet.py [--against COMMIT] [--out docs/images/patchmatch_sheet.png]

One row per failure mode, on the photos and seeded masks of benchmarks/classical.py --wide (so a row
is one of the benchmark's own cases, at 512 px long side):

- a salient object cloned into an outpainting band (astronaut: faces, flags, name plates);
- outpainting that goes low-contrast away from the border (chelsea);
- structure continued as fragments (rocket's lattice tower);
- a large box (coffee) and thin scribbles over fine texture (grass): blur against detail.

Columns: the input with its hole painted magenta, OpenCV Telea (the benchmark's baseline), PatchMatch as
of `--against` (loaded from git, as classical.py --against does; omitted without it), PatchMatch now,
the real photo. Each crop is the region around the hole; each caption gives the hole SSIM and detail
ratio of that crop's fill (classical.py's metrics).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classical  # noqa: E402

from canvaslab.core.grid import make_grid, mask_overlay  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# (photo, mask kind, long side, what the row shows)
CASES = (
    ("astronaut", "band", 512, "cloned salient object"),
    ("chelsea", "band", 512, "low contrast far out"),
    ("rocket", "band", 512, "structure as fragments"),
    ("coffee", "box", 512, "large hole"),
    ("grass", "scribbles", 512, "fine texture"),
)
CELL = 256


def case_hole(name: str, kind: str, size: int, truth: np.ndarray) -> np.ndarray:
    """The benchmark's own hole for this photo, mask kind and size (classical.py --wide's seeding)."""
    i = [(n, s) for s in classical.WIDE_SIZES for n in classical.WIDE_IMAGES].index((name, size))
    j = classical.WIDE_MASKS.index(kind)
    return classical.make_mask(kind, truth.shape[:2], classical.case_seed(i, j))


def crop_box(hole: np.ndarray, margin: int = 24) -> tuple[slice, slice]:
    ys, xs = np.nonzero(hole)
    h, w = hole.shape
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - 3 * margin), min(w, xs.max() + 1 + margin)
    return slice(y0, y1), slice(x0, x1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="", help="also show PatchMatch as of this commit")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "patchmatch_sheet.png"))
    args = parser.parse_args(argv)
    methods = {"Telea": classical.run_telea}
    if args.against:
        methods[f"PatchMatch @{args.against}"] = classical.patchmatch_at(args.against)
    methods["PatchMatch now" if args.against else "PatchMatch"] = classical.run_patchmatch

    rows, captions, labels = [], [], []
    for name, kind, size, what in CASES:
        truth = classical.load_photo(name, size)
        hole = case_hole(name, kind, size, truth)
        damaged = truth.copy()
        damaged[hole] = 255  # methods must not peek at the hole
        cut = crop_box(hole)
        row, caption = [mask_overlay(truth, hole, color=(255, 0, 160))[cut]], [f"{name} {kind}"]
        for method in methods.values():
            out = method(damaged, hole)
            scores = classical.metrics(out[cut], truth[cut], hole[cut])
            row.append(out[cut])
            caption.append(f"SSIM {scores['ssim']:.3f} detail {scores['detail']:.2f}")
        row.append(truth[cut])
        caption.append("")
        rows.append(row)
        captions.append(caption)
        labels.append(what)
    sheet = make_grid(rows, col_labels=["input", *methods, "real photo"], row_labels=labels, cell_labels=captions,
                      cell_size=(CELL, CELL))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out, optimize=True)
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
