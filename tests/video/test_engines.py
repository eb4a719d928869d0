"""Any image engine paints what no frame shows: a weight-free one other than PatchMatch, and a tiny random
Stable Diffusion inpainting model saved and loaded back through the public loader, on key frames (propagate)
and on every frame with the same seed (per-frame)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from canvaslab.video import inpaint

from .clips import read_frames

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _unmasked_kept(frames, clip):
    return all(np.array_equal(out[~m], original[~m]) for out, original, m in zip(frames, clip.frames, clip.masks))


def test_telea_paints_the_key_frames(clip, tmp_path):
    result = inpaint(clip.frames, clip.masks, tmp_path / "telea", seed=1, engine="telea")
    baseline = inpaint(clip.frames, clip.masks, tmp_path / "patchmatch", seed=1)
    assert result.key_frames == baseline.key_frames and result.key_frames
    assert result.recipe["request"]["engine"] == "telea"
    telea, patchmatch = read_frames(tmp_path / "telea"), read_frames(tmp_path / "patchmatch")
    assert _unmasked_kept(telea, clip)
    key = result.key_frames[0]
    assert not np.array_equal(telea[key], patchmatch[key])  # the engine's own fill, carried from there


@pytest.fixture(scope="module")
def tiny_inpaint_model(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from tests.diffusion import tiny

    torch.set_num_threads(1)
    return tiny.save_pipeline_folder("sd-inpaint", tmp_path_factory.mktemp("tiny") / "sd-inpaint")


def test_diffusion_on_key_frames_and_on_every_frame(clip, tmp_path, tiny_inpaint_model):
    params = {"engine": "diffusion", "model": str(tiny_inpaint_model), "steps": 2, "prompt": "a wooden table", "seed": 7}
    propagated = inpaint(clip.frames, clip.masks, tmp_path / "propagate", **params)
    assert 1 <= len(propagated.key_frames) <= 3
    assert _unmasked_kept(read_frames(tmp_path / "propagate"), clip)
    first = inpaint(clip.frames[:4], clip.masks[:4], tmp_path / "a", method="per-frame", **params)
    again = inpaint(clip.frames[:4], clip.masks[:4], tmp_path / "b", method="per-frame", **params)
    assert first.key_frames == again.key_frames == [0, 1, 2, 3] and first.seed == again.seed == 7
    a, b = read_frames(tmp_path / "a"), read_frames(tmp_path / "b")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same seed, same frames
    assert all(np.array_equal(out[~m], original[~m]) for out, original, m in zip(a, clip.frames, clip.masks))
    assert not np.array_equal(a[0][clip.masks[0]], clip.frames[0][clip.masks[0]])  # the model painted the hole
