"""Mask tracking: a mask drawn on a key frame carried to the others by the flow, the drift check naming the
frames where that fails, and the tracked folder corrected by hand and given back as --mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from canvaslab.errors import InputError
from canvaslab.video import inpaint, track
from canvaslab.video.synthetic import synthetic_clip
from conftest import write_png

from .clips import read_frames, write_frames
from .conftest import photo


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _masks(folder, count):
    return [np.asarray(Image.open(folder / f"{i:06d}.png")) > 127 for i in range(count)]


@pytest.fixture(scope="module")
def slow():
    """The cat's face moving 2 px a frame across a panning photo: motion the flow follows."""
    return synthetic_clip(photo("coffee.png"), photo("chelsea.png"), frames=12, size=(192, 128), speed=2.0)


@pytest.fixture(scope="module")
def fast():
    """The face crossing two thirds of the frame in 12 frames (~11 px a frame): too fast for the flow at times."""
    return synthetic_clip(photo("coffee.png"), photo("chelsea.png"), frames=12, size=(192, 128))


def test_a_first_frame_mask_follows_the_object(slow, tmp_path):
    result = track(slow.frames, slow.masks[0], tmp_path / "masks")
    tracked = _masks(tmp_path / "masks", 12)
    # measured: IoU 0.99 at every frame (a per-pixel warp of the mask eroded to 0.73 by the last)
    assert min(_iou(t, m) for t, m in zip(tracked, slow.masks)) > 0.95
    assert result.report.keys == [0] and result.report.drifting == []
    report = json.loads((tmp_path / "masks" / "track.json").read_text())
    assert [f["frame"] for f in report] == list(range(12)) and all(f["key"] == 0 for f in report)


def test_the_drift_check_names_the_frames_where_tracking_fails(fast, tmp_path):
    result = track(fast.frames, fast.masks[0], tmp_path / "masks")
    ious = [_iou(t, m) for t, m in zip(_masks(tmp_path / "masks", 12), fast.masks)]
    drifting = result.report.drifting
    assert drifting, "the fast object must lose the flow somewhere"
    # every frame where the mask is lost comes at or after a frame the check named: nothing fails silently
    assert all(iou > 0.9 for iou in ious[: drifting[0]])
    assert min(ious) < 0.5
    assert any(f["drifts"] for f in json.loads((tmp_path / "masks" / "track.json").read_text()))


def test_key_masks_where_it_drifted_put_it_back(fast, tmp_path):
    # the user's loop: track, draw a key mask at each frame the check names, track again
    keys, rounds = {0}, 0
    while True:
        folder = write_frames(tmp_path / f"keys{rounds}", [fast.masks[i].astype(np.uint8) * 255 for i in sorted(keys)],
                              [str(i) for i in sorted(keys)])
        result = track(fast.frames, folder, tmp_path / f"tracked{rounds}")
        if not result.report.drifting or rounds == 4:
            break
        keys |= set(result.report.drifting)
        rounds += 1
    assert result.report.drifting == [] and result.report.keys == sorted(keys)
    assert len(keys) < 12  # fewer key masks than frames
    ious = [_iou(t, m) for t, m in zip(_masks(tmp_path / f"tracked{rounds}", 12), fast.masks)]
    assert min(ious) > 0.9, (sorted(keys), np.round(ious, 2))


def test_a_corrected_tracked_folder_is_a_mask_folder(slow, tmp_path):
    track(slow.frames, slow.masks[0], tmp_path / "masks")
    # the user corrects frame 7's mask by hand (here: a box around the true one) and reuses the folder
    corrected = np.zeros_like(slow.masks[7])
    ys, xs = np.nonzero(slow.masks[7])
    corrected[ys.min() - 2:ys.max() + 3, xs.min() - 2:xs.max() + 3] = True
    write_png(tmp_path / "masks" / "000007.png", corrected.astype(np.uint8) * 255)
    inpaint(slow.frames, tmp_path / "masks", tmp_path / "out", seed=1)
    used = _masks(tmp_path / "masks", 12)
    for frame, original, mask in zip(read_frames(tmp_path / "out"), slow.frames, used):
        assert np.array_equal(frame[~mask], original[~mask])
    out7 = read_frames(tmp_path / "out")[7]
    assert not np.array_equal(out7[corrected & ~slow.masks[7]], slow.frames[7][corrected & ~slow.masks[7]])


def test_inpaint_track_fills_with_tracked_masks(slow, tmp_path):
    result = inpaint(slow.frames, slow.masks[0], tmp_path / "out", seed=1, track=True, grow=2)
    assert result.track is not None and result.track.keys == [0]
    assert not (tmp_path / "out" / ".canvaslab-masks").exists()  # the tracked masks served the run only
    for frame, original, mask in zip(read_frames(tmp_path / "out"), slow.frames, slow.masks):
        assert not np.array_equal(frame[mask], original[mask])


def test_tracking_refusals(slow, tmp_path):
    keys = write_frames(tmp_path / "keys", [slow.masks[3].astype(np.uint8) * 255], ["3"])
    with pytest.raises(InputError, match=r"first frame processed .* needs a mask.*--start 3"):
        track(slow.frames, keys, tmp_path / "a")
    (tmp_path / "full").mkdir()
    write_png(tmp_path / "full" / "000000.png", np.zeros((128, 192), np.uint8))
    with pytest.raises(InputError, match="not an empty folder"):
        track(slow.frames, slow.masks[0], tmp_path / "full")
    with pytest.raises(InputError, match="--mask-mode alpha"):
        track(slow.frames, slow.masks[0], tmp_path / "b", mask_mode="alpha")
