"""Flow-guided propagation: fill each hole with what the neighbouring frames show at that spot.

The idea of flow-guided video completion (Gao et al., ECCV 2020) and ProPainter's "dual-domain
propagation" (Zhou et al., ICCV 2023), done without a network:

1. Every hole pixel follows the completed flow (`flow.py`) to the previous frame. If the spot it lands
   on is known there, that is its source; if it lands in the previous frame's hole, it takes the source
   that pixel already found (plus the sub-pixel offset), one hop further away. One sweep from the first
   frame to the last gives every pixel its nearest source in the past; a sweep the other way, in the
   future. Sources are positions in original frames, not colours, so a pixel carried across ten frames
   is sampled once, not blurred ten times.
2. A pixel with both takes a blend weighted towards the nearer one (a hard switch between the two
   would flicker where it moves); a pixel with one takes it.
3. What no frame of the window ever shows is painted by an image engine on a key frame (the frame with
   the most of it left) and propagated from there the same way, and again until nothing is left. The
   engine sees the frame with everything propagated so far, so its fill continues real content.

A window is a run of frames with some context on either side: before it, the finished frames of the
previous window (no hole: their fill is a source, which keeps windows consistent); after it, the next
frames as they are (their known pixels are sources too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from canvaslab.core.progress import check_cancelled
from canvaslab.video.flow import FlowEstimator, bilinear

# Fill(rgb, hole, frame index) -> rgb with the hole painted (the image engine, through the inpaint task).
Fill = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass
class Hole:
    """One frame's hole pixels and the completed flow there towards its neighbours."""

    ys: np.ndarray  # N int
    xs: np.ndarray  # N int
    to_previous: np.ndarray | None  # N x 2 float32: flow from this frame to the one before (None: first frame)
    to_next: np.ndarray | None  # N x 2: to the one after

    @property
    def count(self) -> int:
        return len(self.ys)


@dataclass
class Sources:
    """Where each hole pixel of a frame takes its colour from (frame -1: nowhere found yet)."""

    frame: np.ndarray  # N int32
    x: np.ndarray  # N float32
    y: np.ndarray  # N float32
    hops: np.ndarray  # N int32: frames away

    @classmethod
    def none(cls, count: int) -> Sources:
        return cls(np.full(count, -1, np.int32), np.zeros(count, np.float32), np.zeros(count, np.float32),
                   np.zeros(count, np.int32))


def hole_flows(frames: list[np.ndarray], holes: list[np.ndarray], estimator: FlowEstimator) -> list[Hole]:
    """Each frame's hole pixels with the completed flow to its neighbours (both directions per pair)."""
    small = [estimator.small_mask(hole) if hole.any() else None for hole in holes]
    greys = [estimator.grey(frame, hole) for frame, hole in zip(frames, small)]
    out = []
    for t, hole in enumerate(holes):
        ys, xs = np.nonzero(hole)
        previous = nxt = None
        if len(ys):
            if t > 0:
                previous = estimator.at(estimator.completed(greys[t], greys[t - 1], small[t]), xs, ys)
            if t + 1 < len(frames):
                nxt = estimator.at(estimator.completed(greys[t], greys[t + 1], small[t]), xs, ys)
            check_cancelled()
        out.append(Hole(ys, xs, previous, nxt))
    return out


def sweep(holes: list[Hole], known: list[np.ndarray], wanted: list[np.ndarray], step: int) -> list[Sources]:
    """Sources for the `wanted` hole pixels of every frame from the frames on one side.

    step -1: from earlier frames (frames visited first to last); +1: from later ones.
    """
    count = len(holes)
    order = range(count) if step < 0 else range(count - 1, -1, -1)
    height, width = known[0].shape
    found: list[Sources] = [Sources.none(h.count) for h in holes]
    index = np.full((height, width), -1, np.int64)  # the neighbour's hole pixels -> their row in its Sources
    for t in order:
        hole, neighbour = holes[t], t + step
        flow = hole.to_previous if step < 0 else hole.to_next
        if hole.count == 0 or flow is None or not 0 <= neighbour < count:
            continue
        rows = np.nonzero(wanted[t])[0]
        if len(rows) == 0:
            continue
        qx = hole.xs[rows] + flow[rows, 0]
        qy = hole.ys[rows] + flow[rows, 1]
        inside = (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
        rows, qx, qy = rows[inside], qx[inside], qy[inside]
        weight = bilinear(known[neighbour].astype(np.float32), qx, qy)
        # Landing in the neighbour's hole: take the source its nearest pixel found, moved by the sub-pixel offset.
        rx, ry = np.rint(qx).astype(np.int64), np.rint(qy).astype(np.int64)
        other, theirs = holes[neighbour], found[neighbour]
        if other.count:
            index[other.ys, other.xs] = np.arange(other.count)
            j = index[ry, rx]
            index[other.ys, other.xs] = -1
            chained = (j >= 0) & (theirs.frame[np.maximum(j, 0)] >= 0) & (weight < 0.5)
        else:
            j, chained = np.full(len(rows), -1), np.zeros(len(rows), bool)
        direct = (weight > 0) & ~chained
        mine = found[t]
        d = rows[direct]
        mine.frame[d], mine.x[d], mine.y[d], mine.hops[d] = neighbour, qx[direct], qy[direct], 1
        c, jc = rows[chained], j[chained]
        mine.frame[c] = theirs.frame[jc]
        mine.x[c] = theirs.x[jc] + (qx[chained] - rx[chained])
        mine.y[c] = theirs.y[jc] + (qy[chained] - ry[chained])
        mine.hops[c] = theirs.hops[jc] + 1
    return found


def sample(frames: list[np.ndarray], known: list[np.ndarray], sources: Sources) -> tuple[np.ndarray, np.ndarray]:
    """Colours (N x 3 float32) at the sources, from known pixels only, and whether each was found."""
    colours = np.zeros((len(sources.frame), 3), np.float32)
    ok = np.zeros(len(sources.frame), bool)
    for s in np.unique(sources.frame[sources.frame >= 0]):
        rows = np.nonzero(sources.frame == s)[0]
        colour, weight = sample_known(frames[s], known[s], sources.x[rows], sources.y[rows])
        colours[rows], ok[rows] = colour, weight > 1e-3
    return colours, ok


def sample_known(rgb: np.ndarray, known: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear colour at (xs, ys) from the known pixels around it only (renormalised), and their weight."""
    height, width = known.shape
    xs = np.clip(xs, 0, width - 1)
    ys = np.clip(ys, 0, height - 1)
    x0 = np.minimum(np.floor(xs).astype(np.int64), width - 1)
    y0 = np.minimum(np.floor(ys).astype(np.int64), height - 1)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = xs - x0, ys - y0
    total = np.zeros(len(xs), np.float32)
    colour = np.zeros((len(xs), 3), np.float32)
    for yy, xx, w in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x1, fx * (1 - fy)), (y1, x0, (1 - fx) * fy), (y1, x1, fx * fy)):
        w = w * known[yy, xx]
        total += w
        colour += rgb[yy, xx] * w[:, None]
    return colour / np.maximum(total, 1e-6)[:, None], total


def combine(frames: list[np.ndarray], known: list[np.ndarray], past: Sources, future: Sources) -> tuple[np.ndarray, np.ndarray]:
    """Blend the past and future sources of one frame's pixels, weighted towards the nearer."""
    before, ok_before = sample(frames, known, past)
    after, ok_after = sample(frames, known, future)
    both = ok_before & ok_after
    w_before = np.where(both, future.hops / np.maximum(past.hops + future.hops, 1), ok_before.astype(np.float32))
    colours = before * w_before[:, None] + after * (1 - w_before)[:, None]
    return colours, ok_before | ok_after


def propagate(frames: list[np.ndarray], known: list[np.ndarray], holes: list[Hole], wanted: list[np.ndarray]) -> list[np.ndarray]:
    """Fill the `wanted` hole pixels of every frame from the others (in place: `frames` and `known`
    change); returns, per frame, which wanted pixels found nothing."""
    past = sweep(holes, known, wanted, -1)
    future = sweep(holes, known, wanted, +1)
    missing = []
    updates = []
    for t, hole in enumerate(holes):
        if hole.count == 0:
            missing.append(np.zeros(0, bool))
            updates.append(None)
            continue
        colours, ok = combine(frames, known, past[t], future[t])
        ok &= wanted[t]
        updates.append((ok, colours))
        missing.append(wanted[t] & ~ok)
    # Written after every frame has sampled, so nothing samples a colour propagated in this same pass.
    for t, update in enumerate(updates):
        if update is None:
            continue
        ok, colours = update
        hole = holes[t]
        frames[t][hole.ys[ok], hole.xs[ok]] = np.clip(np.rint(colours[ok]), 0, 255).astype(np.uint8)
        known[t][hole.ys[ok], hole.xs[ok]] = True
    return missing


def fill_window(frames: list[np.ndarray], holes: list[np.ndarray], holes_flow: list[Hole], produce: range, fill: Fill,
                first_index: int) -> list[np.ndarray]:
    """Fill the holes of frames[produce] (frames before it are finished, frames after it are context).

    `frames` are modified in place; returns the filled frames of `produce`. `first_index` is the clip
    index of frames[0] (key frames are named by clip index for the filler's seed and messages).
    """
    known = [~hole for hole in holes]
    # 1. propagate real content
    missing = propagate(frames, known, holes_flow, [np.ones(h.count, bool) for h in holes_flow])
    # 2. what nothing shows: paint the frame with most of it left, propagate that, repeat
    for t in range(len(frames)):
        if t not in produce:
            missing[t] = np.zeros_like(missing[t])
    while True:
        check_cancelled()
        counts = [int(m.sum()) for m in missing]
        key = int(np.argmax(counts))
        if counts[key] == 0:
            break
        hole = holes_flow[key]
        gap = np.zeros(holes[key].shape, bool)
        gap[hole.ys[missing[key]], hole.xs[missing[key]]] = True
        painted = fill(frames[key], gap, first_index + key)
        frames[key][gap] = painted[gap]
        known[key][gap] = True
        missing[key] = np.zeros_like(missing[key])
        left = propagate(frames, known, holes_flow, missing)
        missing = [m & l for m, l in zip(missing, left)]
    return [frames[t] for t in produce]
