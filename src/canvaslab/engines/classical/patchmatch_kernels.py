"""numba kernels of PatchMatch (see patchmatch.py for the algorithm); everything that touches pixels.

The kernels are serial and release the GIL; patchmatch.py runs the heavy ones on row ranges in
Python threads (`rows`/`bands` arguments: first and one-past-last row or band). Threads rather than
numba's `parallel=True`: compiling the parfors took a third of the first run's compile time, and
numba's thread pool adds to every start-up; with a GIL-free kernel per range, plain threads run as
fast, and the driver can stop between ranges when a job is cancelled.

Random numbers come from a counter-based hash of (seed, scale, step, pixel), and the search works on
fixed-height row bands that read other bands only from a snapshot, so the output depends on the seed
alone, not on thread count, range boundaries or timing.

Wrap-around (`wy`, `wx`: the image is a torus along y and/or x, for --tiling): positions past one edge
continue at the other. Patch distances, candidate sources, votes, voted differences and the Poisson
system's neighbours then index modulo the image size; with both flags False every kernel does
exactly the arithmetic it did without them, so ordinary fills keep their bytes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from canvaslab.engines.classical.warm import kernel


@kernel
def downsample_known(img, hole, out, coarse_hole):
    """out = 2x2 block means of the known pixels; a block with any hole pixel is a hole itself.

    `out` (float32, ceil(h/2) x ceil(w/2) x c) and `coarse_hole` come in zeroed."""
    h, w, c = img.shape
    hc, wc = coarse_hole.shape
    for yc in range(hc):
        for xc in range(wc):
            n = 0
            for y in range(2 * yc, min(2 * yc + 2, h)):
                for x in range(2 * xc, min(2 * xc + 2, w)):
                    if hole[y, x]:
                        # Partly known blocks would blend hole garbage into a source patch.
                        coarse_hole[yc, xc] = True
                    else:
                        n += 1
                        for k in range(c):
                            out[yc, xc, k] += img[y, x, k]
            if n > 0:
                for k in range(c):
                    out[yc, xc, k] /= n


@njit(inline="always")
def _mix(z):
    # splitmix64 finaliser: a counter-based generator needs no shared state between threads.
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def _next(state):
    state = state + np.uint64(0x9E3779B97F4A7C15)
    return state, _mix(state)


@njit(inline="always")
def _rand_below(value, n):
    return np.int64(value % np.uint64(n))


@njit
def _patch_distance_wrapped(img, wts, ty, tx, sy, sx, r, limit, wy, wx):
    """`_patch_distance` on a torus along the wrapped axes: no pixel of the patch is outside the image.
    Along an axis that does not wrap, target pixels outside are skipped and sources lie inside."""
    h, w, c = img.shape
    y0 = -r if wy else max(-r, -ty)
    y1 = r if wy else min(r, h - 1 - ty)
    x0 = -r if wx else max(-r, -tx)
    x1 = r if wx else min(r, w - 1 - tx)
    total = 0.0
    for dy in range(y0, y1 + 1):
        py = (ty + dy) % h
        qy = (sy + dy) % h
        for dx in range(x0, x1 + 1):
            px = (tx + dx) % w
            qx = (sx + dx) % w
            acc = 0.0
            for k in range(c):
                d = img[py, px, k] - img[qy, qx, k]
                acc += d * d
            total += wts[py, px] * acc
        if total >= limit:
            return total
    return total


@njit(inline="always")
def _torus_offset(o, n, wrap):
    """An offset along an axis of size n: the shorter way round when the axis wraps."""
    if wrap:
        o = abs(o) % n
        return min(o, n - o)
    return o


@njit
def _patch_distance(img, wts, ty, tx, sy, sx, r, limit):
    """Weighted SSD; target pixels outside the image are skipped (sources are always inside)."""
    h, w, c = img.shape
    y0 = max(-r, -ty)
    y1 = min(r, h - 1 - ty)
    x0 = max(-r, -tx)
    x1 = min(r, w - 1 - tx)
    total = 0.0
    for dy in range(y0, y1 + 1):
        for dx in range(x0, x1 + 1):
            acc = 0.0
            for k in range(c):
                d = img[ty + dy, tx + dx, k] - img[sy + dy, sx + dx, k]
                acc += d * d
            total += wts[ty + dy, tx + dx] * acc
        # Most candidates lose early; stopping there is PatchMatch's main speed trick.
        if total >= limit:
            return total
    return total


@njit(inline="always")
def _match_cost(img, wts, far, reuse, ty, tx, sy, sx, r, limit, wy, wx):
    """Patch distance plus a penalty growing with how far the source is from the target (per pixel
    of distance: far[ty, tx, 0]), plus the source's own cost (copying it again, or one-off content:
    reuse[sy, sx]) times how little the known pixels pin the target down (far[ty, tx, 1])."""
    oy = sy - ty
    ox = sx - tx
    if wy or wx:
        oy = _torus_offset(oy, far.shape[0], wy)
        ox = _torus_offset(ox, far.shape[1], wx)
    penalty = far[ty, tx, 0] * np.sqrt(oy * oy + ox * ox) + far[ty, tx, 1] * reuse[sy, sx]
    if penalty >= limit:
        return np.inf
    # int64 source and float64 limit whatever the caller's types: one compiled _patch_distance.
    if wy or wx:
        return penalty + _patch_distance_wrapped(
            img, wts, ty, tx, np.int64(sy), np.int64(sx), r, limit - penalty, wy, wx
        )
    return penalty + _patch_distance(img, wts, ty, tx, np.int64(sy), np.int64(sx), r, limit - penalty)


@kernel
def distance_rows(img, wts, far, reuse, targets, nnf, r, dist, wy, wx, y_lo, y_hi):
    """dist[y, x] = match cost of every target's current source, for rows y_lo..y_hi - 1."""
    w = targets.shape[1]
    for y in range(y_lo, y_hi):
        for x in range(w):
            if targets[y, x]:
                dist[y, x] = _match_cost(img, wts, far, reuse, y, x, nnf[y, x, 0], nnf[y, x, 1], r, np.inf, wy, wx)


@kernel
def random_nnf(targets, sources, key, nnf):
    """nnf[y, x] = a random source for every target (the rest of `nnf` stays as it came, -1)."""
    h, w = targets.shape
    n = sources.shape[0]
    for y in range(h):
        for x in range(w):
            if targets[y, x]:
                _, v = _next(key ^ np.uint64(y * w + x) * np.uint64(0xD6E8FEB86659FD93))
                k = _rand_below(v, n)
                nnf[y, x, 0] = sources[k, 0]
                nnf[y, x, 1] = sources[k, 1]


@kernel
def upsample_nnf(coarse, targets, valid, nearest, nnf, wy, wx):
    """nnf[y, x] = the coarse field's source for every target, scaled up 2x and snapped to a valid
    source (the rest of `nnf` stays as it came, -1); along a wrapped axis, taken modulo the size."""
    h, w = targets.shape
    hc, wc = coarse.shape[0], coarse.shape[1]
    for y in range(h):
        for x in range(w):
            if not targets[y, x]:
                continue
            yc = min(y // 2, hc - 1)
            xc = min(x // 2, wc - 1)
            if coarse[yc, xc, 0] >= 0:
                cy = y + 2 * (coarse[yc, xc, 0] - yc)
                cx = x + 2 * (coarse[yc, xc, 1] - xc)
            else:
                cy, cx = y, x  # the nearest source is a fair guess where the coarse field is empty
            cy = cy % h if wy else min(max(cy, 0), h - 1)
            cx = cx % w if wx else min(max(cx, 0), w - 1)
            if not valid[cy, cx]:
                cy, cx = nearest[0, cy, cx], nearest[1, cy, cx]
            nnf[y, x, 0] = cy
            nnf[y, x, 1] = cx


@njit
def _try_candidate(img, wts, far, reuse, valid, y, x, cy, cx, r, best, wy, wx):
    """Distance of source (cy, cx) for target (y, x), or +inf when it is not a usable source.

    Along a wrapped axis the candidate is taken modulo the size; returns (cost, cy, cx) as used."""
    h, w = valid.shape
    if wy:
        cy = cy % h
    if wx:
        cx = cx % w
    if cy < 0 or cx < 0 or cy >= h or cx >= w or not valid[cy, cx]:
        return np.inf, cy, cx
    return _match_cost(img, wts, far, reuse, y, x, cy, cx, r, best, wy, wx), cy, cx


@kernel
def sweep_bands(
    img, wts, far, reuse, targets, valid, nearest, nnf, snapshot, dist, r, sweep, key, band_h, max_window, wy, wx,
    band_lo, band_hi,
):
    """PatchMatch sweep number `sweep` over the row bands band_lo..band_hi - 1 (of `band_h` rows).

    Neighbours in other bands are read from `snapshot` (the field before this sweep), never from a
    band another thread is writing; odd sweeps scan backwards."""
    h, w = targets.shape
    step = 1 if sweep % 2 == 0 else -1
    sweep_key = key ^ _mix(np.uint64(sweep + 1) * np.uint64(0xA24BAED4963EE407))
    for band in range(band_lo, band_hi):
        y_lo = band * band_h
        y_hi = min(h, y_lo + band_h)
        for i in range(y_hi - y_lo):
            y = y_lo + i if step == 1 else y_hi - 1 - i
            for j in range(w):
                x = j if step == 1 else w - 1 - j
                if targets[y, x]:
                    _improve(
                        img, wts, far, reuse, targets, valid, nearest, nnf, snapshot, dist,
                        y, x, step, y_lo, y_hi, r, sweep_key, max_window, wy, wx,
                    )


@njit
def _improve(
    img, wts, far, reuse, targets, valid, nearest, nnf, snapshot, dist, y, x, step, y_lo, y_hi, r, key,
    max_window, wy, wx,
):
    """One PatchMatch update of target (y, x): propagation from the scan's predecessors, then
    random search. Along a wrapped axis the predecessor of the first pixel is the last one."""
    h, w = targets.shape
    # One type per variable (int64 positions, float64 costs, exact for the int32 / float32 they are
    # read from), so numba compiles each helper once instead of once per mix of types.
    by = np.int64(nnf[y, x, 0])
    bx = np.int64(nnf[y, x, 1])
    best = np.float64(dist[y, x])

    # Propagation: a neighbour's good offset, shifted by one pixel, is likely good here too.
    px = x - step
    if wx:
        px = px % w
    if 0 <= px < w and targets[y, px]:
        cy = np.int64(nnf[y, px, 0])
        cx = nnf[y, px, 1] + step
        if cy != by or cx != bx:
            d, cy, cx = _try_candidate(img, wts, far, reuse, valid, y, x, cy, cx, r, best, wy, wx)
            if d < best:
                best, by, bx = d, cy, cx
    py = y - step
    if wy:
        py = py % h
    if 0 <= py < h and targets[py, x]:
        if y_lo <= py < y_hi:
            cy = nnf[py, x, 0] + step
            cx = np.int64(nnf[py, x, 1])
        else:
            cy = snapshot[py, x, 0] + step
            cx = np.int64(snapshot[py, x, 1])
        if cy != by or cx != bx:
            d, cy, cx = _try_candidate(img, wts, far, reuse, valid, y, x, cy, cx, r, best, wy, wx)
            if d < best:
                best, by, bx = d, cy, cx

    # Random search in windows halving around the current best, snapped to the nearest valid
    # source so that no sample is wasted on the hole.
    state = key ^ (np.uint64(y * w + x + 1) * np.uint64(0xD6E8FEB86659FD93))
    window = max_window
    while window >= 1:
        state, v = _next(state)
        cy = by + _rand_below(v, 2 * window + 1) - window
        state, v = _next(state)
        cx = bx + _rand_below(v, 2 * window + 1) - window
        cy = cy % h if wy else min(max(cy, 0), h - 1)
        cx = cx % w if wx else min(max(cx, 0), w - 1)
        if not valid[cy, cx]:
            ny = nearest[0, cy, cx]
            cx = nearest[1, cy, cx]
            cy = ny
        if cy != by or cx != bx:
            d = _match_cost(img, wts, far, reuse, y, x, cy, cx, r, best, wy, wx)
            if d < best:
                best, by, bx = d, cy, cx
        window //= 2

    nnf[y, x, 0] = by
    nnf[y, x, 1] = bx
    dist[y, x] = best


@kernel
def vote_rows(img, hole, nnf, log_weight, r, log_spatial, top, out, wy, wx, y_lo, y_hi):
    """out[y, x] = the weighted vote of the patches covering each hole pixel, rows y_lo..y_hi - 1."""
    h, w = hole.shape
    c = img.shape[2]
    n = (2 * r + 1) * (2 * r + 1)
    for y in range(y_lo, y_hi):
        # Per-row scratch; rows are independent, so threads share nothing.
        cand_w = np.empty(n, dtype=np.float64)
        cand_c = np.empty((n, c), dtype=np.float64)
        for x in range(w):
            if not hole[y, x]:
                continue
            m = 0
            for dy in range(-r, r + 1):
                ty = y - dy
                if wy:
                    ty = ty % h
                if ty < 0 or ty >= h:
                    continue
                for dx in range(-r, r + 1):
                    tx = x - dx
                    if wx:
                        tx = tx % w
                    if tx < 0 or tx >= w:
                        continue
                    # Target patch centred at (ty, tx) covers (y, x) at offset (dy, dx).
                    sy = nnf[ty, tx, 0] + dy
                    sx = nnf[ty, tx, 1] + dx
                    if wy:
                        sy = sy % h
                    if wx:
                        sx = sx % w
                    cand_w[m] = log_weight[ty, tx] + log_spatial[dy + r, dx + r]
                    for k in range(c):
                        cand_c[m, k] = img[sy, sx, k]
                    m += 1
            _blend(cand_w, cand_c, np.int64(m), top, out, y, x)  # int64, not a literal: one compile


@njit
def _blend(cand_w, cand_c, m, top, out, y, x):
    """Set out[y, x] to the mean of the candidates weighted by exp(cand_w), the log weights."""
    peak = -np.inf
    for k in range(m):
        peak = max(peak, cand_w[k])
    # Relative to the strongest candidate, the largest weight is 1 and the total cannot underflow.
    for k in range(m):
        cand_w[k] = np.exp(cand_w[k] - peak)
    if 0 < top < m:
        _keep_strongest(cand_w, m, top)
    total = 0.0
    for k in range(m):
        total += cand_w[k]
    for ch in range(cand_c.shape[1]):
        acc = 0.0
        for k in range(m):
            acc += cand_w[k] * cand_c[k, ch]
        out[y, x, ch] = acc / total


@njit
def _keep_strongest(weights, m, top):
    """Zero all but the `top` largest weights (ties keep the earliest, for determinism).

    One pass keeping the best `top` so far in order (largest first; a later equal weight does not
    displace an earlier one), instead of `top` passes over all `m`."""
    best = np.empty(top, dtype=np.int64)
    n = 0
    for k in range(m):
        wk = weights[k]
        if n == top and not wk > weights[best[n - 1]]:
            continue
        i = n if n < top else top - 1  # where k goes: shift the weaker ones down past it
        while i > 0 and wk > weights[best[i - 1]]:
            if i < top:
                best[i] = best[i - 1]
            i -= 1
        best[i] = k
        if n < top:
            n += 1
    kept = np.zeros(m, dtype=np.bool_)
    for i in range(n):
        kept[best[i]] = True
    for k in range(m):
        if not kept[k]:
            weights[k] = 0.0


@kernel
def gradient_vote_rows(img, hole, nnf, log_weight, r, log_spatial, top, grad, wy, wx, y_lo, y_hi):
    """grad[0, y, x] = voted img[y, x+1] - img[y, x], grad[1, y, x] = voted img[y+1, x] - img[y, x],
    for every neighbour pair touching the hole, rows y_lo..y_hi - 1: each target patch that covers
    both pixels proposes the difference between the two source pixels it copies there. Along a
    wrapped axis the last pixel's neighbour is the first, so grad[.., last] spans the seam."""
    h, w = hole.shape
    n = (2 * r + 1) * (2 * r + 1)
    for y in range(y_lo, y_hi):
        cand_w = np.empty(n, dtype=np.float64)
        cand_c = np.empty((n, 3), dtype=np.float64)
        for x in range(w):
            for axis in range(2):
                ey = 1 if axis == 1 else 0
                ex = 1 - ey
                y2 = y + ey
                x2 = x + ex
                if wy:
                    y2 = y2 % h
                if wx:
                    x2 = x2 % w
                if y2 >= h or x2 >= w or not (hole[y, x] or hole[y2, x2]):
                    continue
                m = 0
                for dy in range(-r, r + 1 - ey):
                    ty = y - dy
                    if wy:
                        ty = ty % h
                    if ty < 0 or ty >= h:
                        continue
                    for dx in range(-r, r + 1 - ex):
                        tx = x - dx
                        if wx:
                            tx = tx % w
                        if tx < 0 or tx >= w or nnf[ty, tx, 0] < 0:
                            continue
                        sy = nnf[ty, tx, 0] + dy
                        sx = nnf[ty, tx, 1] + dx
                        sy2 = sy + ey
                        sx2 = sx + ex
                        if wy:
                            sy = sy % h
                            sy2 = sy2 % h
                        if wx:
                            sx = sx % w
                            sx2 = sx2 % w
                        ends = log_spatial[dy + r, dx + r] + log_spatial[dy + ey + r, dx + ex + r]
                        cand_w[m] = log_weight[ty, tx] + 0.5 * ends
                        for k in range(3):
                            cand_c[m, k] = img[sy2, sx2, k] - img[sy, sx, k]
                        m += 1
                if m == 0:
                    # No patch spans the pair (1x1 patches): keep the voted image's own step.
                    for k in range(3):
                        grad[axis, y, x, k] = img[y2, x2, k] - img[y, x, k]
                else:
                    _blend(cand_w, cand_c, np.int64(m), top, grad[axis], y, x)


@kernel
def poisson_system(start, hole, grad, screen, edge, tol, wy, wx):
    """The Poisson system of the final fill, and conjugate gradients' state at its start.

    Least-squares fit of the hole pixels' colours to the neighbour differences in `grad`, with the
    known pixels fixed (a Poisson equation with Dirichlet boundary), started from `start`. Returns
    (coords, nbrs, diag, u, res, p, rr, limit) for `cg_steps`; solve by calling it until it reports
    convergence, then u[i] is the colour of pixel coords[i]."""
    h, w = hole.shape
    # Allocation by np.empty and loops only: np.full, np.zeros and .copy() cost compile time.
    index = np.empty((h, w), dtype=np.int64)
    n = 0
    for y in range(h):
        for x in range(w):
            if hole[y, x]:
                index[y, x] = n
                n += 1
            else:
                index[y, x] = -1
    coords = np.empty((n, 2), dtype=np.int64)
    nbrs = np.empty((n, 4), dtype=np.int64)
    diag = np.empty(n)
    b = np.empty((n, 3))
    u = np.empty((n, 3))
    guide = np.empty(3)
    for y in range(h):
        for x in range(w):
            i = index[y, x]
            if i < 0:
                continue
            coords[i, 0] = y
            coords[i, 1] = x
            diag[i] = 0.0
            for k in range(3):
                u[i, k] = start[y, x, k]
                b[i, k] = 0.0
            for j in range(4):
                nbrs[i, j] = -1
                qy = y + (1 if j == 0 else -1 if j == 1 else 0)
                qx = x + (1 if j == 2 else -1 if j == 3 else 0)
                if wy:
                    qy = qy % h
                if wx:
                    qx = qx % w
                if qy < 0 or qy >= h or qx < 0 or qx >= w:
                    continue  # the image border is a free (Neumann) edge (unless it wraps)
                diag[i] += 1.0
                for k in range(3):
                    # Guidance for u_p - u_q.
                    if j == 0:
                        guide[k] = -grad[1, y, x, k]
                    elif j == 1:
                        guide[k] = grad[1, qy, qx, k]
                    elif j == 2:
                        guide[k] = -grad[0, y, x, k]
                    else:
                        guide[k] = grad[0, qy, qx, k]
                if index[qy, qx] < 0:
                    # Across the hole boundary, a small mismatch between the voted step and the
                    # one actually there is a colour offset to spread out; a large one is an
                    # edge (the cup's rim next to the saucer) that the patches failed to copy,
                    # and spreading it would smear that edge's colour into the hole as a haze.
                    mismatch = 0.0
                    for k in range(3):
                        actual = start[y, x, k] - start[qy, qx, k]
                        mismatch += (actual - guide[k]) ** 2
                    mismatch = np.sqrt(mismatch)
                    keep = 1.0
                    if edge > 0 and mismatch > edge:
                        keep = max(0.0, 2.0 - mismatch / edge)
                    for k in range(3):
                        actual = start[y, x, k] - start[qy, qx, k]
                        b[i, k] += start[qy, qx, k] + actual + keep * (guide[k] - actual)
                else:
                    for k in range(3):
                        b[i, k] += guide[k]
                nbrs[i, j] = index[qy, qx]
            # Screening (a pull towards the voted colours) bounds how far any leftover
            # inconsistency of the voted differences can drift across a big hole.
            diag[i] += screen
            for k in range(3):
                b[i, k] += screen * start[y, x, k]
    res = np.empty((n, 3))
    _poisson_apply(u, diag, nbrs, res)
    for i in range(n):
        for k in range(3):
            res[i, k] = b[i, k] - res[i, k]
    p = np.empty((n, 3))
    for i in range(n):
        for k in range(3):
            p[i, k] = res[i, k]
    rr = np.empty(3)
    for k in range(3):
        rr[k] = 0.0
    for i in range(n):
        for k in range(3):
            rr[k] += res[i, k] * res[i, k]
    limit = tol * tol * n
    return coords, nbrs, diag, u, res, p, rr, limit


@kernel
def cg_steps(u, res, p, rr, diag, nbrs, limit, steps):
    """Up to `steps` conjugate-gradient iterations on the state from `poisson_system`, updated in
    place; True once every channel's residual is at most `limit`.  Serial on purpose: a parallel
    dot product would sum in an order that depends on the thread count, and the result must not."""
    n = u.shape[0]
    ap = np.empty((n, 3))
    pap = np.empty(3)
    alpha = np.empty(3)
    new_rr = np.empty(3)
    # Loops rather than rr.max(), np.zeros(3) or rr[:] = ...: same numbers, and numba compiles
    # numpy's array methods slowly (this kernel: 3.6 s of CPU -> 0.8 s).
    for _ in range(steps):
        if _converged(rr, limit):
            return True
        _poisson_apply(p, diag, nbrs, ap)
        for k in range(3):
            pap[k] = 0.0
            alpha[k] = 0.0
            new_rr[k] = 0.0
        for i in range(n):
            for k in range(3):
                pap[k] += p[i, k] * ap[i, k]
        for k in range(3):
            if pap[k] > 0 and rr[k] > limit:
                alpha[k] = rr[k] / pap[k]
        for i in range(n):
            for k in range(3):
                u[i, k] += alpha[k] * p[i, k]
                res[i, k] -= alpha[k] * ap[i, k]
                new_rr[k] += res[i, k] * res[i, k]
        for k in range(3):
            beta = new_rr[k] / rr[k] if rr[k] > 0 else 0.0
            for i in range(n):
                p[i, k] = res[i, k] + beta * p[i, k]
        for k in range(3):
            rr[k] = new_rr[k]
    return _converged(rr, limit)


@njit
def _converged(rr, limit):
    """rr.max() <= limit for the 3 channels (False if any is NaN, as there)."""
    return rr[0] <= limit and rr[1] <= limit and rr[2] <= limit


@njit
def _poisson_apply(u, diag, nbrs, out):
    """out = A u for the hole's graph Laplacian (known neighbours are on the right-hand side)."""
    for i in range(u.shape[0]):
        for k in range(3):
            acc = diag[i] * u[i, k]
            for j in range(4):
                q = nbrs[i, j]
                if q >= 0:
                    acc -= u[q, k]
            out[i, k] = acc
