"""Tiled filling of big canvases: windows cover the hole, nothing is left untouched, cost ~ area."""

import numpy as np
import pytest

import canvaslab
from canvaslab.tasks.tiles import window_boxes


@pytest.mark.parametrize("shape, tile", [((100, 300), 64), ((37, 129), 32), ((64, 64), 64), ((200, 90), 48)])
def test_windows_cover_every_hole_pixel_and_stay_inside(shape, tile):
    rng = np.random.default_rng(0)
    mask = rng.random(shape) < 0.3
    covered = np.zeros(shape, bool)
    for box in window_boxes(mask, tile, overlap=tile // 4):
        assert 0 <= box.left < box.right <= shape[1] and 0 <= box.top < box.bottom <= shape[0]
        assert box.width <= tile and box.height <= tile
        covered[box.slices] = True
    assert covered[mask].all()


def test_window_count_grows_with_area_not_faster():
    counts = []
    for width in (256, 512, 1024):
        mask = np.zeros((128, width), bool)
        mask[:, 64:] = True
        counts.append(len(window_boxes(mask, 64, overlap=16)))
    assert counts[1] / counts[0] < 2.3 and counts[2] / counts[1] < 2.3


def test_tiled_outpaint_leaves_no_gaps_and_keeps_pixels(photo):
    """Telea fills only a few pixels inward per call: a window that was skipped would stay at the pre-fill."""
    result = canvaslab.outpaint(photo, right=120, bottom=40, engine="telea", seed=0, tile=48, overlap=0, feather=0,
                                fill="noise")
    h, w = photo.shape[:2]
    np.testing.assert_array_equal(result.image[:h, :w], photo)
    untiled = canvaslab.outpaint(photo, right=120, bottom=40, engine="telea", seed=0, tile=0, overlap=0, feather=0,
                                 fill="noise")
    assert result.image.shape == untiled.image.shape
    assert not np.array_equal(result.image, untiled.image)  # windows really ran one after another
    new = result.image[:, w:].astype(float)
    roughness = np.abs(np.diff(new, axis=1)).mean(axis=2)  # pre-fill noise is rough, Telea's fill is smooth
    for y in range(0, new.shape[0] - 16, 16):  # every 16x16 block of the new area was really filled
        for x in range(0, new.shape[1] - 16, 16):
            assert roughness[y : y + 16, x : x + 16].mean() < 12, (y, x)


def test_tile_zero_disables_and_bad_values_are_rejected(photo):
    with pytest.raises(canvaslab.InputError, match="tile"):
        canvaslab.outpaint(photo, right=10, tile=-1)
