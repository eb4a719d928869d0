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
     continuation, and it keeps far-off objects from being cloned into the hole.
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

Everything that touches pixels runs in numba (patchmatch_kernels.py).  Random numbers come from a
counter-based hash of (seed, scale, step, pixel), and the parallel search works on fixed-height row
bands that read other bands only from a snapshot, so the output depends on the seed alone, not on
thread count or timing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np
from scipy import ndimage

from canvaslab.engines.classical.patchmatch_kernels import (
    _all_distances,
    _downsample_known,
    _gradient_vote_kernel,
    _patchmatch_sweeps,
    _poisson_solve,
    _random_nnf_kernel,
    _upsample_nnf_kernel,
    _vote_kernel,
)
from canvaslab.errors import EngineError, InputError

__all__ = ["patchmatch_inpaint"]

# Lowest weight of a hole pixel relative to a known one (below it, float32 sums would underflow).
_MIN_CONFIDENCE = 1e-6


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
    final_top: int = 5  # the last vote averages only the best `final_top` candidates per pixel
    fine_window: float = 0.25  # random-search window below the coarsest scale, fraction of the side
    band_height: int = 32  # rows per parallel search band (fixed: results must not hang on threads)
    poisson: int = 1  # 1: rebuild the final fill from voted gradients (0: keep the voted colours)
    poisson_screen: float = 0.001  # weight of the voted colours next to the voted gradients
    poisson_edge: float = 40.0  # boundary mismatch (RGB norm) above which it is an edge, no offset
    poisson_top: int = 0  # gradient candidates kept per pixel pair (0: as many as `final_top`)
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
    **tuning: float,
) -> np.ndarray:
    """Fill `hole` (True = fill) in the HxWx3 uint8 RGB `image` with patches from the rest of it.

    `patch_size` is the (odd) side of the square patches, shrunk automatically when the known
    region cannot hold one.  `iterations` is the number of EM steps per scale; `min_size` is the
    smallest short side of the coarsest pyramid scale (or a quarter of the image's short side, if
    that is smaller).  Other knobs (see `_Tuning`) can be passed by name.

    Pixels outside the hole are returned bit for bit, and the same `seed` always gives the same
    bytes.  Raises `EngineError` when the hole covers the whole image, `InputError` on bad input.
    """
    image, hole = _checked_inputs(image, hole, patch_size)
    opts = _tuning_from(tuning)
    if not hole.any():
        return image.copy()
    if hole.all():
        raise EngineError("cannot inpaint: the hole covers the whole image, leaving nothing to copy")

    radius = _usable_radius(hole, patch_size // 2)
    stack = _feature_stack(image, hole, opts)
    pyramid = _build_pyramid(stack, hole, radius, min_size, opts)
    filled = _complete_pyramid(pyramid, radius, int(iterations), int(seed), opts)

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


def _feature_stack(image: np.ndarray, hole: np.ndarray, opts: _Tuning) -> np.ndarray:
    """RGB plus (optionally) two texture channels: local means of |dI/dx| and |dI/dy|.

    Newson et al. 2014 add these so that a smooth patch no longer matches a textured one well:
    without them EM drifts towards blurry fills, since blur is what averaging many patches makes.
    """
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


def _usable_radius(hole: np.ndarray, radius: int) -> int:
    # A known region too small for one whole patch still has context; smaller patches can use it.
    while radius > 0 and not _source_centres(hole, radius).any():
        radius -= 1
    return radius


def _source_centres(hole: np.ndarray, radius: int) -> np.ndarray:
    """Centres whose (2r+1)^2 patch lies inside the image and touches no hole pixel."""
    h, w = hole.shape
    valid = np.zeros((h, w), dtype=bool)
    if h <= 2 * radius or w <= 2 * radius:
        return valid
    size = 2 * radius + 1
    touches_hole = cv2.dilate(hole.astype(np.uint8), np.ones((size, size), np.uint8)) > 0
    inner = (slice(radius, h - radius), slice(radius, w - radius))
    valid[inner] = ~touches_hole[inner]
    return valid


def _hole_depth(hole: np.ndarray) -> float:
    """Largest distance from a hole pixel to known context (the image border is not context)."""
    return float(ndimage.distance_transform_edt(hole).max())


def _build_pyramid(stack: np.ndarray, hole: np.ndarray, radius: int, min_size: int, opts: _Tuning):
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
        if _hole_depth(hl) <= opts.coarsest_depth * max(radius, 1):
            break
        coarse = _downsample_known(img, hl)
        if _source_centres(coarse[1], radius).sum() < opts.min_sources:
            break
        levels.append(coarse)
    return levels


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
    far: np.ndarray  # per-target cost of one pixel of distance between target and source


def _scale_geometry(hole: np.ndarray, radius: int, opts: _Tuning) -> _Scale:
    size = 2 * radius + 1
    targets = cv2.dilate(hole.astype(np.uint8), np.ones((size, size), np.uint8)) > 0
    valid = _source_centres(hole, radius)
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    depth = ndimage.distance_transform_edt(hole)
    # The floor stops float32 underflow deep in big holes, where all pixels are equally unsure.
    hole_conf = opts.hole_weight * np.power(opts.confidence_gamma, -depth)
    hole_conf = np.maximum(hole_conf, _MIN_CONFIDENCE)
    weights = np.where(hole, hole_conf, 1.0).astype(np.float32)
    box = dict(ksize=(size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    norm = cv2.boxFilter(weights.astype(np.float64), -1, **box)
    count = cv2.boxFilter(np.ones_like(norm), -1, **box)
    log_trust = opts.vote_confidence * np.log(np.maximum(norm / count, _MIN_CONFIDENCE))
    return _Scale(
        hole=hole,
        targets=targets,
        valid=valid,
        nearest=np.ascontiguousarray(nearest.astype(np.int32)),
        sources=np.argwhere(valid).astype(np.int32),
        weights=weights,
        norm=norm.astype(np.float32),
        log_trust=log_trust,
        far=(opts.locality * norm / max(hole.shape)).astype(np.float32),
    )


def _complete_pyramid(pyramid, radius: int, iterations: int, seed: int, opts: _Tuning):
    """Coarse-to-fine EM; returns the finest estimate (HxWxC float32)."""
    estimate = nnf = None
    finest, coarsest = 0, len(pyramid) - 1
    for level in range(coarsest, -1, -1):
        img, hole = pyramid[level]
        geo = _scale_geometry(hole, radius, opts)
        if nnf is None:
            nnf = _random_nnf(geo, _stream_key(seed, level, 0))
            estimate = _initial_fill(img, hole)
        else:
            estimate = _upsampled_estimate(estimate, img, hole)
            nnf = _upsampled_nnf(nnf, geo)
            estimate = _vote_once(estimate, nnf, geo, radius, opts)
        # The finest scale inherits a converged field and costs the most, so it gets fewer steps;
        # a single-scale run has nothing to inherit.
        steps = max(1, opts.finest_iterations if finest == level < coarsest else iterations)
        for step in range(steps):
            fresh = step == 0 and level == coarsest
            sweeps = opts.first_search_iterations if fresh else opts.search_iterations
            # Past the coarsest scale the field is already good: far jumps rarely win, so the
            # random search may start in a smaller window and save most of its samples.
            window = 1.0 if level == coarsest else opts.fine_window
            key = _stream_key(seed, level, step + 1)
            dist = _search(estimate, geo, nnf, radius, sweeps, key, window, opts)
            last = level == finest and step == steps - 1
            top = opts.final_top if last else 0
            estimate = _vote(estimate, nnf, dist, geo, radius, opts, top)
            if last and opts.poisson and radius > 0:
                estimate = _gradient_domain_fill(estimate, nnf, dist, geo, radius, opts, top)
    return estimate


def _stream_key(seed: int, level: int, step: int) -> np.uint64:
    """A distinct random stream for every (seed, scale, EM step)."""
    mixed = seed * 0x9E3779B97F4A7C15 + level * 0xC2B2AE3D27D4EB4F + step * 0x165667B19E3779F9
    return np.uint64(mixed % (1 << 64))


def _initial_fill(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    # Telea gives the coarse hole the surrounding colours (and texture levels); PatchMatch then
    # starts from a plausible layout instead of noise.
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
    return _random_nnf_kernel(geo.targets, geo.sources, key)


def _upsampled_nnf(coarse_nnf: np.ndarray, geo: _Scale) -> np.ndarray:
    return _upsample_nnf_kernel(coarse_nnf, geo.targets, geo.valid, geo.nearest)


def _search(estimate, geo: _Scale, nnf, radius, sweeps, key, window: float, opts: _Tuning):
    """Improve `nnf` in place for the current estimate; returns the match costs."""
    # The estimate changed since the last search, so every stored cost is stale.
    dist = _all_distances(estimate, geo.weights, geo.far, geo.targets, nnf, radius)
    max_window = max(1, int(window * max(geo.hole.shape)))
    _patchmatch_sweeps(
        estimate, geo.weights, geo.far, geo.targets, geo.valid, geo.nearest, nnf, dist,
        radius, sweeps, key, max(1, opts.band_height), max_window,
    )
    return dist


def _vote_log_weights(dist, geo: _Scale, opts: _Tuning) -> np.ndarray:
    per_pixel = dist / np.maximum(geo.norm, 1e-12)
    # Wexler et al. set sigma^2 from the distance distribution, so the weights adapt to the image.
    sigma2 = float(np.percentile(per_pixel[geo.targets], opts.sigma_percentile))
    inv = 1.0 / (2.0 * max(sigma2 * opts.sigma_scale, 1e-3))
    # Log weights: deep in a big hole every weight is tiny, and only their ratios matter.
    return geo.log_trust - per_pixel.astype(np.float64) * inv


def _vote(estimate, nnf, dist, geo: _Scale, radius, opts: _Tuning, top: int) -> np.ndarray:
    log_weight = _vote_log_weights(dist, geo, opts)
    log_spatial = _log_spatial_kernel(radius, opts.spatial_sigma)
    out = estimate.copy()
    _vote_kernel(estimate, geo.hole, nnf, log_weight, radius, log_spatial, int(top), out)
    return out


def _gradient_domain_fill(voted, nnf, dist, geo: _Scale, radius, opts: _Tuning, top: int):
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
    _gradient_vote_kernel(voted, geo.hole, nnf, log_weight, radius, log_spatial, grad_top, grad)
    rgb = np.ascontiguousarray(voted[:, :, :3], dtype=np.float64)
    solved = _poisson_solve(
        rgb, geo.hole, grad, opts.poisson_screen, opts.poisson_edge, opts.poisson_iterations,
        opts.poisson_tolerance,
    )
    # Integrated differences can overshoot; a copy never leaves the colours the image has.
    known = rgb[~geo.hole]
    solved = np.clip(solved, known.min(axis=0), known.max(axis=0))
    out = voted.copy()
    out[:, :, :3][geo.hole] = solved[geo.hole]
    return out


def _vote_once(estimate, nnf, geo: _Scale, radius, opts: _Tuning) -> np.ndarray:
    dist = _all_distances(estimate, geo.weights, geo.far, geo.targets, nnf, radius)
    return _vote(estimate, nnf, dist, geo, radius, opts, top=0)


def _log_spatial_kernel(radius: int, sigma: float) -> np.ndarray:
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    if sigma <= 0:
        return np.zeros((d.size, d.size))
    g = -(d**2) / (2.0 * sigma * sigma)
    return g[:, None] + g[None, :]

