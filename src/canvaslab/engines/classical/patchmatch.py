"""Exemplar-based inpainting: multi-scale PatchMatch with EM patch voting.

The hole is filled by copying patches from the known part of the same image, so the result has real
texture instead of the smooth blur that diffusion methods (Telea, Navier-Stokes, biharmonic) leave.

Algorithm: the "space-time completion" EM of Wexler, Shechtman & Irani (TPAMI 2007), with the
nearest-neighbour search of Barnes, Shechtman, Finkelstein & Goldman ("PatchMatch: A Randomized
Correspondence Algorithm for Structural Image Editing", SIGGRAPH 2009) and the texture features of
Newson, Almansa, Fradet, Gousseau & Pérez ("Video Inpainting of Complex Scenes", SIAM J. Imaging
Sciences 2014):

1. Work on RGB plus two texture channels (local mean of |dI/dx| and |dI/dy|).  Without them a smooth
   patch matches a textured region well enough, and EM drifts towards blur, because blur is what
   averaging many patches produces.
2. Build a pyramid by halving the image until the hole is a few patches deep (or the image gets
   small).  Downsampling averages known pixels only, and a coarse pixel counts as known only when
   all fine pixels under it are, so whatever the caller left in the hole never reaches a source.
3. At the coarsest scale, fill the hole with OpenCV's Telea method: large holes then start from a
   plausible colour layout, which a random start would not give.
4. At every scale, repeat a few EM steps:
   - E: for every *target* patch (one that overlaps the hole) find a *source* patch lying entirely
     in the known region, with PatchMatch: propagate neighbours' offsets, then try random offsets in
     halving windows.  The distance down-weights hole pixels by gamma^-(distance to known pixels),
     since the deeper a pixel, the less its current estimate is worth (Wexler et al.), and adds a
     small cost per pixel of distance between target and source: nearby content is the likelier
     continuation, and it keeps far-off objects from being cloned into the hole.  Target patches
     that are mostly hole (nothing known pins them down) also pay for the source's *rarity*: how far
     that source patch is from its nearest non-overlapping look-alike in the known image (measured
     once, at the coarsest scale).  Background, fur or grass repeat and cost nothing; a face, an eye
     or a name plate is one of a kind, and a copy of it in the fill is the clone a viewer notices.
   - M: every hole pixel becomes the weighted mean of the values all overlapping target patches
     propose ("patch voting"), weighted by exp(-d / 2 sigma^2) with sigma^2 a percentile of the
     match distances (Wexler et al.) times the target patch's mean confidence.
5. Upsample the nearest-neighbour field (NNF) to the next scale and vote once with it, so the coarse
   layout carries over and the finer scale only refines it.
6. The last vote at the finest scale keeps only each pixel's few best candidates: a mean of many
   slightly misaligned patches would blur fine texture.
7. Copied patches keep their source's exact colour, which shows as hard-edged lighter or darker
   blocks wherever brightness drifts (a sky gradient, shading).  So the final fill is rebuilt in
   the gradient domain (Pérez et al. 2003; Darabi et al. 2012, "Image Melding"): the same
   candidates also vote every neighbour difference, including those across the hole boundary, and
   a screened Poisson solve (conjugate gradients) integrates them with the known pixels fixed.
   The texture stays; colour offsets spread smoothly over the hole.  Boundary mismatches too large
   to be an offset are taken as edges the patches missed and are not spread.

Wrap-around (`wrap="x"`, `"y"` or `"both"`, for --tiling): the image is a torus along those axes.
Patches may straddle the edge, so a source can be copied across it and a target at the right edge is
matched with what continues it at the left; votes, voted differences and the Poisson solve wrap too,
so the fill is continuous across the seam. The masks and weights of every scale (sources, targets,
depths) are computed on a wrap-padded copy. Coarse scales of odd-sized images are tori only
approximately (their last row or column covers one fine pixel), which the finest scale corrects.

Everything that touches pixels runs in numba (patchmatch_kernels.py), on ranges of rows spread
over a few threads (`_Workers`).  Random numbers come from a counter-based hash of (seed, scale,
step, pixel), and the search works on fixed-height row bands that read other bands only from a
snapshot, so the output depends on the seed alone, not on thread count or timing.

Progress is reported once per EM step (`core.progress`), and a cancelled job stops between two row
ranges or conjugate-gradient slices, a small fraction of a second apart even on large images.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields

import cv2
import numpy as np
from scipy import ndimage

from canvaslab.core.progress import check_cancelled, report_progress
from canvaslab.engines.classical.patchmatch_kernels import (
    cg_steps,
    distance_rows,
    downsample_known,
    gradient_vote_rows,
    poisson_system,
    random_nnf,
    sweep_bands,
    upsample_nnf,
    vote_rows,
)
from canvaslab.errors import EngineError, InputError

__all__ = ["patchmatch_inpaint", "WRAPS"]

# wrap= value -> (along y, along x): the axes the image is a torus along
WRAPS = {"none": (False, False), "x": (False, True), "y": (True, False), "both": (True, True)}

# Lowest weight of a hole pixel relative to a known one (below it, float32 sums would underflow).
_MIN_CONFIDENCE = 1e-6
# Pixels per range of rows handed to a thread: below the floor, handing it over costs more than the
# work; the ceiling bounds how long a cancelled job waits for the ranges already running.
_RANGE_PIXELS = (1 << 14, 1 << 18)
_RANGES_PER_THREAD = 8  # several ranges per thread even out rows of unequal work
_CG_SLICE = 1 << 23  # unknowns x iterations per conjugate-gradient call (~0.1 s), then a cancel check


@dataclass(frozen=True)
class _Tuning:
    """Knobs beyond the public arguments; `patchmatch_inpaint(**tuning)` overrides them by name.

    The defaults were chosen on benchmarks/classical.py (real photos; scribble, box and band holes).
    """

    search_iterations: int = 2  # PatchMatch sweeps per EM step
    first_search_iterations: int = 4  # sweeps for the random field at the coarsest scale
    finest_iterations: int = 1  # EM steps at the finest of several scales (others use `iterations`)
    max_levels: int = 8
    coarsest_depth: float = 4.0  # stop halving once the hole is at most this many patch radii deep
    min_sources: int = 16  # a scale needs at least this many complete source patches
    texture_weight: float = 1.0  # scale of the two texture channels (0: match on colour only)
    texture_window: int = 5  # side of the box the texture channels average gradients over
    hole_weight: float = 0.3  # weight of (not yet final) hole pixels in the patch distance...
    confidence_gamma: float = 1.5  # ...times gamma^-(distance to known pixels), after Wexler et al.
    vote_confidence: float = 3.0  # a patch's vote is scaled by its mean confidence to this power
    sigma_percentile: float = 75.0  # vote weight exp(-d / 2 sigma^2), sigma^2 this percentile of d
    sigma_scale: float = 0.3  # multiplies that sigma^2: smaller is a sharper, more selective vote
    spatial_sigma: float = 0.0  # >0: votes also fall off with distance from their patch's centre
    locality: float = 800.0  # per-pixel squared-error cost of taking a source one image-side away
    reuse: float = 0.0  # per-pixel squared-error cost of each extra target copying around the same source
    final_top: int = 5  # the last vote averages only the best `final_top` candidates per pixel
    fine_window: float = 0.25  # random-search window below the coarsest scale, fraction of the side
    band_height: int = 32  # rows per search band (fixed: results must not hang on thread count)
    poisson: int = 1  # 1: rebuild the final fill from voted gradients (0: keep the voted colours)
    poisson_screen: float = 0.001  # weight of the voted colours next to the voted gradients
    poisson_edge: float = 40.0  # boundary mismatch (RGB norm) above which it is an edge, no offset
    poisson_top: int = 0  # gradient candidates kept per pixel pair (0: as many as `final_top`)
    rarity: float = 2.0  # cost of copying one-off content (eyes, faces, text), x its rarity (0: off)
    rarity_sources: int = 1500  # about this many sources are compared for that (a strided grid, coarsest scale)
    poisson_iterations: int = 2000  # cap on conjugate-gradient steps of that Poisson solve
    poisson_tolerance: float = 0.05  # stop once the RMS residual per hole pixel is below this


def patchmatch_inpaint(
    image: np.ndarray,
    hole: np.ndarray,
    *,
    seed: int = 0,
    patch_size: int = 7,
    iterations: int = 3,
    min_size: int = 64,
    threads: int | None = None,
    wrap: str = "none",
    **tuning: float,
) -> np.ndarray:
    """Fill `hole` (True = fill) in the HxWx3 uint8 RGB `image` with patches from the rest of it.

    `patch_size` is the (odd) side of the square patches, shrunk automatically when the known
    region cannot hold one.  `iterations` is the number of EM steps per scale; `min_size` is the
    smallest short side of the coarsest pyramid scale (or a quarter of the image's short side, if
    that is smaller).  `threads` run the kernels (None: NUMBA_NUM_THREADS if set, else every CPU
    this process may use).  `wrap` ("none", "x", "y", "both") makes the image a torus along those
    axes: patches are searched and copied across the edges, and the fill continues across them.
    Other knobs (see `_Tuning`) can be passed by name.

    Pixels outside the hole are returned bit for bit, and the same `seed` always gives the same
    bytes, whatever `threads`.  Reports progress per EM step and raises `Cancelled` when the
    listener's cancel flag is set (`core.progress`).  Raises `EngineError` when the hole covers the
    whole image, `InputError` on bad input.
    """
    image, hole = _checked_inputs(image, hole, patch_size)
    opts = _tuning_from(tuning)
    workers = _checked_threads(threads)
    if wrap not in WRAPS:
        raise InputError(f"wrap must be one of {', '.join(WRAPS)}, got {wrap!r}")
    torus = WRAPS[wrap]
    if not hole.any():
        return image.copy()
    if hole.all():
        raise EngineError("cannot inpaint: the hole covers the whole image, leaving nothing to copy")
    check_cancelled()

    radius = _usable_radius(hole, patch_size // 2, torus)
    stack = _feature_stack(image, hole, opts, torus)
    pyramid = _build_pyramid(stack, hole, radius, min_size, opts, torus)
    with _Workers(workers) as run:
        filled = _complete_pyramid(pyramid, radius, int(iterations), int(seed), opts, run, torus)

    out = image.copy()
    out[hole] = np.clip(np.rint(filled[hole][:, :3]), 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Input handling and pyramid


def _checked_inputs(image, hole, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    hole = np.asarray(hole)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"shape {image.shape} and dtype {image.dtype}"
        raise InputError(f"image must be an HxWx3 uint8 array, got {got}")
    if hole.shape != image.shape[:2]:
        raise InputError(f"hole must be HxW like the image {image.shape[:2]}, got {hole.shape}")
    if int(patch_size) != patch_size or patch_size < 1 or patch_size % 2 == 0:
        raise InputError(f"patch_size must be an odd positive integer, got {patch_size}")
    return np.ascontiguousarray(image), hole.astype(bool)


def _tuning_from(overrides: dict) -> _Tuning:
    defaults = _Tuning()
    known = sorted(f.name for f in fields(_Tuning))
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InputError(f"unknown patchmatch tuning option(s) {unknown}; known: {known}")
    values = {}
    for name, value in overrides.items():
        kind = type(getattr(defaults, name))
        try:
            values[name] = kind(value)
        except (TypeError, ValueError):
            message = f"patchmatch tuning option {name} must be a number, got {value!r}"
            raise InputError(message) from None
    return _Tuning(**values)


def _checked_threads(threads: int | None) -> int:
    if threads is None:
        configured = os.environ.get("NUMBA_NUM_THREADS", "").strip()
        if configured.isdigit() and int(configured) > 0:
            return int(configured)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise InputError(f"threads must be a positive integer (or None for every CPU), got {threads!r}")
    return int(threads)


def _feature_stack(image: np.ndarray, hole: np.ndarray, opts: _Tuning, wrap=(False, False)) -> np.ndarray:
    """RGB plus (optionally) two texture channels: local means of |dI/dx| and |dI/dy|.

    Newson et al. 2014 add these so that a smooth patch no longer matches a textured one well:
    without them EM drifts towards blurry fills, since blur is what averaging many patches makes.
    """
    if any(wrap):  # the filters' neighbourhoods continue across the wrapped edges
        margin = opts.texture_window // 2 + 2
        padded, cut = _wrap_pad(image, margin, wrap)
        stack = _feature_stack(padded, _wrap_pad(hole, margin, wrap)[0], opts)
        return np.ascontiguousarray(stack[cut])
    rgb = image.astype(np.float32)
    if opts.texture_weight <= 0:
        return rgb
    grey = rgb.mean(axis=2)
    gx = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)) / 4
    gy = np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)) / 4
    # Gradients whose 3x3 support touches the hole see whatever the caller left there: drop them.
    trusted = (cv2.dilate(hole.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0).astype(np.float32)
    size = (opts.texture_window, opts.texture_window)
    count = cv2.boxFilter(trusted, -1, size, normalize=False, borderType=cv2.BORDER_REFLECT)
    feats = [
        cv2.boxFilter(g * trusted, -1, size, normalize=False, borderType=cv2.BORDER_REFLECT)
        / np.maximum(count, 1)
        for g in (gx, gy)
    ]
    texture = opts.texture_weight * np.stack(feats, axis=2)
    return np.ascontiguousarray(np.concatenate([rgb, texture], axis=2), dtype=np.float32)


def _usable_radius(hole: np.ndarray, radius: int, wrap=(False, False)) -> int:
    # A known region too small for one whole patch still has context; smaller patches can use it.
    while radius > 0 and not _source_centres(hole, radius, wrap).any():
        radius -= 1
    return radius


def _source_centres(hole: np.ndarray, radius: int, wrap=(False, False)) -> np.ndarray:
    """Centres whose (2r+1)^2 patch lies inside the image (or wraps around it) and touches no hole pixel."""
    h, w = hole.shape
    valid = np.zeros((h, w), dtype=bool)
    wy, wx = wrap
    if (h <= 2 * radius and not wy) or (w <= 2 * radius and not wx):
        return valid
    size = 2 * radius + 1
    touches_hole = _dilated(hole, size, wrap)
    inner = (slice(None) if wy else slice(radius, h - radius), slice(None) if wx else slice(radius, w - radius))
    valid[inner] = ~touches_hole[inner]
    return valid


def _dilated(hole: np.ndarray, size: int, wrap=(False, False)) -> np.ndarray:
    """Pixels within a size x size box of a hole pixel (the box wraps around the wrapped axes)."""
    kernel = np.ones((size, size), np.uint8)
    if not any(wrap):
        return cv2.dilate(hole.astype(np.uint8), kernel) > 0
    padded, cut = _wrap_pad(hole.astype(np.uint8), size // 2, wrap)
    return cv2.dilate(padded, kernel)[cut] > 0


def _hole_depth(hole: np.ndarray, wrap=(False, False)) -> float:
    """Largest distance from a hole pixel to known context (the image border is not context)."""
    return float(_depths(hole, wrap).max())


def _depths(hole: np.ndarray, wrap=(False, False)) -> np.ndarray:
    """Distance of every pixel to the nearest known one, across the wrapped edges too."""
    plain = ndimage.distance_transform_edt(hole)
    if not any(wrap):
        return plain
    # The nearest known pixel on the torus is never farther than the nearest one in the plain image.
    padded, cut = _wrap_pad(hole, int(np.ceil(plain.max())) + 1, wrap)
    return ndimage.distance_transform_edt(padded)[cut]


def _wrap_pad(array: np.ndarray, margin: int, wrap) -> tuple[np.ndarray, tuple[slice, slice]]:
    """`array` (HxW...) with `margin` pixels of what continues it across each wrapped edge (at most
    the axis' own size), and the slices that cut the original back out."""
    pads = [(min(margin, n), min(margin, n)) if on else (0, 0) for n, on in zip(array.shape[:2], wrap)]
    padded = np.pad(array, pads + [(0, 0)] * (array.ndim - 2), mode="wrap")
    cut = tuple(slice(before, before + n) for (before, _), n in zip(pads, array.shape[:2]))
    return padded, cut  # type: ignore[return-value]


def _build_pyramid(stack: np.ndarray, hole: np.ndarray, radius: int, min_size: int, opts: _Tuning, wrap=(False, False)):
    """Finest-first list of (float32 HxWxC stack, hole) pairs, each half the size of the last."""
    levels = [(stack, hole)]
    # Small images may still go down to a quarter of their size: a deep hole needs coarse scales
    # to converge, whatever `min_size` says.
    floor = min(min_size, min(hole.shape) // 4)
    while len(levels) < opts.max_levels:
        img, hl = levels[-1]
        h, w = hl.shape
        if min((h + 1) // 2, (w + 1) // 2) < floor:
            break
        if _hole_depth(hl, wrap) <= opts.coarsest_depth * max(radius, 1):
            break
        coarse = _downsampled(img, hl)
        if _source_centres(coarse[1], radius, wrap).sum() < opts.min_sources:
            break
        levels.append(coarse)
    return levels


def _downsampled(img: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w, c = img.shape
    out = np.zeros(((h + 1) // 2, (w + 1) // 2, c), dtype=np.float32)
    coarse_hole = np.zeros(out.shape[:2], dtype=bool)
    downsample_known(img, hole, out, coarse_hole)
    return out, coarse_hole


# --------------------------------------------------------------------------------------------
# Threads


class _Workers:
    """Runs a kernel over consecutive ranges of rows (or bands) on `threads` threads.

    The kernels release the GIL, so the ranges run in parallel, and the calling thread checks for
    cancellation as each range completes: a cancelled job waits only for the ranges already running.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def ranges(self, kernel, count: int, item_pixels: int, *args) -> None:
        """`kernel(*args, lo, hi)` for ranges (lo, hi) covering items 0..count - 1 of `item_pixels` each."""
        spans = _spans(count, item_pixels, self.threads)
        if self.threads == 1 or len(spans) == 1:
            for lo, hi in spans:
                kernel(*args, lo, hi)
                check_cancelled()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="canvaslab-patchmatch")
        futures: list[Future] = [self._pool.submit(kernel, *args, lo, hi) for lo, hi in spans]
        try:
            for future in futures:
                future.result()
                check_cancelled()
        finally:
            for future in futures:
                future.cancel()  # after an error or a cancel: ranges not started never start


def _spans(count: int, item_pixels: int, threads: int) -> list[tuple[int, int]]:
    least = -(-_RANGE_PIXELS[0] // max(item_pixels, 1))
    most = max(1, _RANGE_PIXELS[1] // max(item_pixels, 1))
    size = max(least, min(most, -(-count // (threads * _RANGES_PER_THREAD))))
    return [(lo, min(count, lo + size)) for lo in range(0, count, size)]


# --------------------------------------------------------------------------------------------
# Coarse-to-fine driver


@dataclass
class _Scale:
    """Where target patches are and where source patches may come from, at one pyramid scale."""

    hole: np.ndarray
    targets: np.ndarray  # patch centres whose patch overlaps the hole
    valid: np.ndarray  # source centres (patch fully inside the image and known)
    nearest: np.ndarray  # 2xHxW: nearest valid source centre for every pixel
    sources: np.ndarray  # Nx2 list of valid source centres
    weights: np.ndarray  # per-pixel weight in the patch distance
    norm: np.ndarray  # per-target sum of weights, to turn distances into per-pixel means
    log_trust: np.ndarray  # per-target log-factor on its vote
    far: np.ndarray  # per target: cost of one pixel of distance to the source, factor on the source's cost
    reuse: np.ndarray  # per-source cost of copying it again (from the last search's field; zeros at first)
    salient: np.ndarray | None = None  # per-source cost of copying one-off content (`rarity`)
    wy: bool = False  # the image wraps around along y...
    wx: bool = False  # ...and along x


def _scale_geometry(hole: np.ndarray, radius: int, opts: _Tuning, wrap=(False, False)) -> _Scale:
    size = 2 * radius + 1
    targets = _dilated(hole, size, wrap)
    valid = _source_centres(hole, radius, wrap)
    # Snapping a candidate to the nearest valid source in the plain image is fine on a torus too:
    # it only has to give a usable source.
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    depth = _depths(hole, wrap)
    # The floor stops float32 underflow deep in big holes, where all pixels are equally unsure.
    hole_conf = opts.hole_weight * np.power(opts.confidence_gamma, -depth)
    hole_conf = np.maximum(hole_conf, _MIN_CONFIDENCE)
    weights = np.where(hole, hole_conf, 1.0).astype(np.float32)
    norm = _box_sums(weights.astype(np.float64), size, wrap)
    count = _box_sums(np.ones_like(norm), size, wrap)
    log_trust = opts.vote_confidence * np.log(np.maximum(norm / count, _MIN_CONFIDENCE))
    # Source costs (reuse, rarity) count in full for a target patch that is all hole, not at all for
    # one at least half known: there the known pixels choose the source, rare or not.
    hole_part = _box_sums(hole.astype(np.float64), size, wrap) / np.maximum(count, 1)
    unpinned = np.clip(2.0 * hole_part - 1.0, 0.0, 1.0)
    return _Scale(
        hole=hole,
        targets=targets,
        valid=valid,
        nearest=np.ascontiguousarray(nearest.astype(np.int32)),
        sources=np.ascontiguousarray(np.argwhere(valid), dtype=np.int32),
        weights=weights,
        norm=norm.astype(np.float32),
        log_trust=log_trust,
        far=np.ascontiguousarray(np.stack([opts.locality * norm / max(hole.shape), unpinned], axis=2), np.float32),
        reuse=np.zeros(hole.shape, dtype=np.float32),
        wy=bool(wrap[0]),
        wx=bool(wrap[1]),
    )


def _box_sums(values: np.ndarray, size: int, wrap) -> np.ndarray:
    """Sums over the size x size box around each pixel: of the pixels inside the image, or (along a
    wrapped axis) of those the box reaches across the edge."""
    box = dict(ksize=(size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    if not any(wrap):
        return cv2.boxFilter(values, -1, **box)
    padded, cut = _wrap_pad(values, size // 2, wrap)
    return cv2.boxFilter(padded, -1, **box)[cut]


def _complete_pyramid(pyramid, radius: int, iterations: int, seed: int, opts: _Tuning, run: _Workers, wrap=(False, False)):
    """Coarse-to-fine EM; returns the finest estimate (HxWxC float32). Reports each EM step done."""
    estimate = nnf = rarity = None
    finest, coarsest = 0, len(pyramid) - 1
    # The finest scale inherits a converged field and costs the most, so it gets fewer steps;
    # a single-scale run has nothing to inherit.
    steps_at = [max(1, opts.finest_iterations if finest == level < coarsest else iterations)
                for level in range(len(pyramid))]
    total, done = sum(steps_at), 0
    for level in range(coarsest, -1, -1):
        img, hole = pyramid[level]
        geo = _scale_geometry(hole, radius, opts, wrap)
        if opts.rarity > 0:
            if rarity is None:
                rarity = _rarity(img, geo, radius, opts)
            else:
                rarity = cv2.resize(rarity, (hole.shape[1], hole.shape[0]), interpolation=cv2.INTER_LINEAR)
            geo.salient = (opts.rarity * float(np.mean(geo.norm[geo.targets])) * rarity).astype(np.float32)
            geo.reuse = geo.salient.copy()
        if nnf is None:
            nnf = _random_nnf(geo, _stream_key(seed, level, 0))
            estimate = _initial_fill(img, hole, wrap)
        else:
            estimate = _upsampled_estimate(estimate, img, hole)
            nnf = _upsampled_nnf(nnf, geo)
            estimate = _vote_once(estimate, nnf, geo, radius, opts, run)
        steps = steps_at[level]
        for step in range(steps):
            fresh = step == 0 and level == coarsest
            sweeps = opts.first_search_iterations if fresh else opts.search_iterations
            # Past the coarsest scale the field is already good: far jumps rarely win, so the
            # random search may start in a smaller window and save most of its samples.
            window = 1.0 if level == coarsest else opts.fine_window
            key = _stream_key(seed, level, step + 1)
            dist = _search(estimate, geo, nnf, radius, sweeps, key, window, opts, run)
            if opts.reuse > 0:
                _update_reuse(geo, nnf, radius, opts)
            last = level == finest and step == steps - 1
            top = opts.final_top if last else 0
            estimate = _vote(estimate, nnf, dist, geo, radius, opts, top, run)
            if last and opts.poisson and radius > 0:
                estimate = _gradient_domain_fill(estimate, nnf, dist, geo, radius, opts, top, run)
            done += 1
            report_progress(done, total)
    return estimate


def _rarity(img: np.ndarray, geo: _Scale, radius: int, opts: _Tuning) -> np.ndarray:
    """Per pixel: how unlike every other part of the known image the source patch centred there is
    (mean squared difference per pixel to its nearest neighbour that does not overlap it, above the
    median of that over all sources), 0 where no source is. Repeated content (background, fur,
    grass) scores ~0; one-off content (an eye, a face, a name plate) scores high: copied into a
    hole, it is the clone a viewer notices."""
    h, w = geo.hole.shape
    out = np.zeros((h, w), dtype=np.float32)
    src = geo.sources
    if len(src) < 4:
        return out
    stride = max(1, int(np.ceil(np.sqrt(len(src) / max(opts.rarity_sources, 4)))))
    grid = src[(src[:, 0] % stride == 0) & (src[:, 1] % stride == 0)]
    if len(grid) < 4:
        grid = src
    size = 2 * radius + 1
    offsets = np.arange(-radius, radius + 1)
    ys = (grid[:, 0:1, None] + offsets[None, :, None]) % h
    xs = (grid[:, 1:2, None] + offsets[None, None, :]) % w
    patches = img[ys, xs].reshape(len(grid), -1).astype(np.float32)
    sq = np.einsum("ij,ij->i", patches, patches)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (patches @ patches.T)
    # Patches that overlap are look-alikes of each other by construction: not counted.
    gy, gx = grid[:, 0], grid[:, 1]
    d2[(np.abs(np.subtract.outer(gy, gy)) < size) & (np.abs(np.subtract.outer(gx, gx)) < size)] = np.inf
    best = d2.min(axis=1) / (size * size)
    best[~np.isfinite(best)] = 0.0
    excess = np.maximum(best - np.median(best), 0.0)
    # Spread the grid's values to every source: each source takes its nearest grid point's.
    sparse = np.zeros((h, w), dtype=bool)
    sparse[grid[:, 0], grid[:, 1]] = True
    values = np.zeros((h, w), dtype=np.float32)
    values[grid[:, 0], grid[:, 1]] = excess
    iy, ix = ndimage.distance_transform_edt(~sparse, return_distances=False, return_indices=True)
    out = values[iy, ix]
    out[~geo.valid] = 0.0
    return out


def _update_reuse(geo: _Scale, nnf: np.ndarray, radius: int, opts: _Tuning) -> None:
    """geo.reuse = the cost of copying each source again: a coherent copy uses every source centre
    around it about once, so what is above one use per centre (averaged over a patch) is a region
    copied several times, the "cloned face" of large holes."""
    size = 2 * radius + 1
    used = np.zeros(geo.hole.shape, dtype=np.float64)
    centres = nnf[geo.targets]
    np.add.at(used, (centres[:, 0], centres[:, 1]), 1.0)
    mean_use = _box_sums(used, size, (geo.wy, geo.wx)) / (size * size)
    scale = opts.reuse * float(np.mean(geo.norm[geo.targets]))
    geo.reuse = (scale * np.maximum(mean_use - 1.0, 0.0)).astype(np.float32)
    if geo.salient is not None:
        geo.reuse += geo.salient


def _stream_key(seed: int, level: int, step: int) -> np.uint64:
    """A distinct random stream for every (seed, scale, EM step)."""
    mixed = seed * 0x9E3779B97F4A7C15 + level * 0xC2B2AE3D27D4EB4F + step * 0x165667B19E3779F9
    return np.uint64(mixed % (1 << 64))


def _initial_fill(img: np.ndarray, hole: np.ndarray, wrap=(False, False)) -> np.ndarray:
    # Telea gives the coarse hole the surrounding colours (and texture levels); PatchMatch then
    # starts from a plausible layout instead of noise.
    if any(wrap):  # Telea sees the colours across the wrapped edges too
        margin = max(hole.shape) // 4 + 2
        padded, cut = _wrap_pad(img, margin, wrap)
        return np.ascontiguousarray(_initial_fill(padded, _wrap_pad(hole, margin, wrap)[0])[cut])
    # OpenCV's Telea reads past the edge of images only a pixel or two high or wide (NaNs that
    # vary from run to run); a replicated 2-px frame keeps its neighbourhoods inside the array.
    pad = 2
    frame = dict(top=pad, bottom=pad, left=pad, right=pad, borderType=cv2.BORDER_REPLICATE)
    inner = (slice(pad, pad + hole.shape[0]), slice(pad, pad + hole.shape[1]))
    out = img.copy()
    mask = cv2.copyMakeBorder(hole.astype(np.uint8), **frame)
    rgb = cv2.copyMakeBorder(np.clip(np.rint(img[:, :, :3]), 0, 255).astype(np.uint8), **frame)
    out[:, :, :3][hole] = cv2.inpaint(rgb, mask, 3, cv2.INPAINT_TELEA)[inner][hole]
    for k in range(3, img.shape[2]):
        extra = cv2.copyMakeBorder(np.ascontiguousarray(img[:, :, k]), **frame)
        out[:, :, k][hole] = cv2.inpaint(extra, mask, 3, cv2.INPAINT_TELEA)[inner][hole]
    return out


def _upsampled_estimate(coarse: np.ndarray, img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    h, w = hole.shape
    hc, wc = coarse.shape[:2]
    # Exactly 2x keeps coarse pixel centres over their 2x2 blocks; the crop drops an odd edge.
    channels = [
        cv2.resize(coarse[:, :, k], (2 * wc, 2 * hc), interpolation=cv2.INTER_LINEAR)
        for k in range(coarse.shape[2])
    ]
    up = np.stack(channels, axis=2)[:h, :w]
    out = img.copy()
    out[hole] = up[hole]
    return out


def _random_nnf(geo: _Scale, key: np.uint64) -> np.ndarray:
    nnf = np.full((*geo.hole.shape, 2), -1, dtype=np.int32)
    random_nnf(geo.targets, geo.sources, key, nnf)
    return nnf


def _upsampled_nnf(coarse_nnf: np.ndarray, geo: _Scale) -> np.ndarray:
    nnf = np.full((*geo.hole.shape, 2), -1, dtype=np.int32)
    upsample_nnf(coarse_nnf, geo.targets, geo.valid, geo.nearest, nnf, geo.wy, geo.wx)
    return nnf


def _distances(estimate, geo: _Scale, nnf, radius, run: _Workers) -> np.ndarray:
    """Match cost of every target's current source (+inf elsewhere)."""
    h, w = geo.hole.shape
    dist = np.full((h, w), np.inf, dtype=np.float32)
    run.ranges(distance_rows, h, w, estimate, geo.weights, geo.far, geo.reuse, geo.targets, nnf, radius, dist, geo.wy, geo.wx)
    return dist


def _search(estimate, geo: _Scale, nnf, radius, sweeps, key, window: float, opts: _Tuning, run: _Workers):
    """Improve `nnf` in place for the current estimate; returns the match costs."""
    # The estimate changed since the last search, so every stored cost is stale.
    dist = _distances(estimate, geo, nnf, radius, run)
    max_window = max(1, int(window * max(geo.hole.shape)))
    band_h = max(1, opts.band_height)
    h, w = geo.hole.shape
    for sweep in range(sweeps):
        # Bands read their neighbours in other bands from this copy, never from a band being written.
        snapshot = nnf.copy()
        run.ranges(
            sweep_bands, -(-h // band_h), band_h * w, estimate, geo.weights, geo.far, geo.reuse, geo.targets,
            geo.valid, geo.nearest, nnf, snapshot, dist, radius, sweep, key, band_h, max_window, geo.wy, geo.wx,
        )
    return dist


def _vote_log_weights(dist, geo: _Scale, opts: _Tuning) -> np.ndarray:
    per_pixel = dist / np.maximum(geo.norm, 1e-12)
    # Wexler et al. set sigma^2 from the distance distribution, so the weights adapt to the image.
    sigma2 = float(np.percentile(per_pixel[geo.targets], opts.sigma_percentile))
    inv = 1.0 / (2.0 * max(sigma2 * opts.sigma_scale, 1e-3))
    # Log weights: deep in a big hole every weight is tiny, and only their ratios matter.
    return geo.log_trust - per_pixel.astype(np.float64) * inv


def _vote(estimate, nnf, dist, geo: _Scale, radius, opts: _Tuning, top: int, run: _Workers) -> np.ndarray:
    log_weight = _vote_log_weights(dist, geo, opts)
    log_spatial = _log_spatial_kernel(radius, opts.spatial_sigma)
    out = estimate.copy()
    h, w = geo.hole.shape
    run.ranges(vote_rows, h, w, estimate, geo.hole, nnf, log_weight, radius, log_spatial, int(top), out, geo.wy, geo.wx)
    return out


def _gradient_domain_fill(voted, nnf, dist, geo: _Scale, radius, opts: _Tuning, top: int, run: _Workers):
    """Re-solve the hole's colours from voted *gradients*, with the known pixels as boundary.

    Copied patches keep their source's exact colour, so where the source region is lighter or
    darker than the hole's surroundings (a sky gradient, shading on a saucer) the fill shows a
    step at the hole's edge or between regions copied from different places.  Voting each
    neighbour difference instead of each colour (Darabi et al. 2012, "Image Melding") and
    integrating those differences with a Poisson solve (Pérez et al. 2003) keeps the copied
    texture but spreads the colour mismatch smoothly over the hole.  Differences across the hole
    boundary are voted from the source patches too, which is what removes the step there.
    """
    log_weight = _vote_log_weights(dist, geo, opts)
    log_spatial = _log_spatial_kernel(radius, opts.spatial_sigma)
    h, w = geo.hole.shape
    grad = np.zeros((2, h, w, 3), dtype=np.float64)
    grad_top = int(opts.poisson_top) if opts.poisson_top > 0 else int(top)
    run.ranges(
        gradient_vote_rows, h, w, voted, geo.hole, nnf, log_weight, radius, log_spatial, grad_top, grad, geo.wy, geo.wx
    )
    rgb = np.ascontiguousarray(voted[:, :, :3], dtype=np.float64)
    solved = _poisson_solve(rgb, geo.hole, grad, opts, (geo.wy, geo.wx))
    # Integrated differences can overshoot; a copy never leaves the colours the image has.
    known = rgb[~geo.hole]
    solved = np.clip(solved, known.min(axis=0), known.max(axis=0))
    out = voted.copy()
    out[:, :, :3][geo.hole] = solved[geo.hole]
    return out


def _poisson_solve(start: np.ndarray, hole: np.ndarray, grad: np.ndarray, opts: _Tuning, wrap=(False, False)) -> np.ndarray:
    """`start` with the hole's colours solved from the voted differences `grad` (see
    `poisson_system`), by conjugate gradients in slices with a cancel check between them."""
    coords, nbrs, diag, u, res, p, rr, limit = poisson_system(
        start, hole, grad, opts.poisson_screen, opts.poisson_edge, opts.poisson_tolerance, bool(wrap[0]), bool(wrap[1])
    )
    per_call = max(1, _CG_SLICE // max(len(u), 1))
    done = 0
    while done < opts.poisson_iterations:
        steps = min(per_call, opts.poisson_iterations - done)
        if cg_steps(u, res, p, rr, diag, nbrs, limit, steps):
            break
        done += steps
        check_cancelled()
    out = start.copy()
    out[coords[:, 0], coords[:, 1]] = u
    return out


def _vote_once(estimate, nnf, geo: _Scale, radius, opts: _Tuning, run: _Workers) -> np.ndarray:
    dist = _distances(estimate, geo, nnf, radius, run)
    return _vote(estimate, nnf, dist, geo, radius, opts, 0, run)


def _log_spatial_kernel(radius: int, sigma: float) -> np.ndarray:
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    if sigma <= 0:
        return np.zeros((d.size, d.size))
    g = -(d**2) / (2.0 * sigma * sigma)
    return g[:, None] + g[None, :]

