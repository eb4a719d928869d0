"""Weight-free metrics against scikit-image and hand computations on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from canvaslab.eval.metrics import Sample, Weights, load_metrics
from canvaslab.eval.metrics.pixels import PSNR_CAP, full_metrics, hole_metrics, ssim_map


@pytest.fixture(scope="module")
def case(photo):
    """A real photo, a hole filled with a smooth guess, some noise everywhere else."""
    rng = np.random.default_rng(0)
    hole = np.zeros(photo.shape[:2], bool)
    hole[20:70, 40:110] = True
    out = np.clip(photo.astype(int) + rng.integers(-6, 7, photo.shape), 0, 255).astype(np.uint8)
    out[hole] = photo[hole].mean(axis=0).astype(np.uint8)
    return out, photo, hole


def skimage_ssim(out, ref):
    return structural_similarity(ref, out, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=2, full=True)


def test_psnr_and_ssim_match_scikit_image(case):
    out, ref, hole = case
    values = hole_metrics(out, ref, hole)
    mean, smap = skimage_ssim(out, ref)
    assert values["ssim"] == pytest.approx(mean, abs=2e-5)
    assert values["ssim_hole"] == pytest.approx(smap.mean(axis=2)[hole].mean(), abs=2e-5)
    np.testing.assert_allclose(ssim_map(out, ref), smap, atol=5e-4)
    assert values["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, out, data_range=255), abs=1e-6)
    assert values["psnr_hole"] == pytest.approx(peak_signal_noise_ratio(ref[hole], out[hole], data_range=255), abs=1e-6)


def test_l1_and_what_changed_outside(case):
    out, ref, hole = case
    values = hole_metrics(out, ref, hole)
    diff = np.abs(out.astype(float) - ref)
    assert values["l1"] == pytest.approx(diff.mean() / 255, rel=1e-6)
    assert values["l1_hole"] == pytest.approx(diff[hole].mean() / 255, rel=1e-6)
    assert values["outside_l1"] == pytest.approx(diff[~hole].mean() / 255, rel=1e-6)
    assert values["outside_changed"] == pytest.approx((diff[~hole].max(axis=1) > 0).mean())
    kept = ref.copy()
    kept[hole] = out[hole]  # what canvaslab's composite guarantees
    exact = hole_metrics(kept, ref, hole)
    assert exact["outside_changed"] == 0.0 and exact["outside_l1"] == 0.0
    kept[0, 0, 2] ^= 1  # one channel of one pixel outside
    assert hole_metrics(kept, ref, hole)["outside_changed"] == pytest.approx(1 / (~hole).sum())


def test_identical_images_score_perfectly(photo):
    hole = np.zeros(photo.shape[:2], bool)
    hole[10:30, 10:30] = True
    values = hole_metrics(photo, photo, hole)
    assert values["psnr"] == values["psnr_hole"] == PSNR_CAP
    assert values["ssim"] == pytest.approx(1.0) and values["ssim_hole"] == pytest.approx(1.0)
    assert values["detail"] == pytest.approx(1.0) and values["seam"] == 0.0 and values["l1_hole"] == 0.0


def test_detail_and_seam_order_flat_smooth_and_exact_fills(photo):
    import cv2

    hole = np.zeros(photo.shape[:2], bool)
    hole[20:70, 40:110] = True
    flat = photo.copy()
    flat[hole] = photo[hole].mean(axis=0).astype(np.uint8)
    smooth = cv2.inpaint(photo, hole.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    flat_v, smooth_v, exact_v = (hole_metrics(x, photo, hole) for x in (flat, smooth, photo))
    assert flat_v["detail"] < smooth_v["detail"] < exact_v["detail"] == pytest.approx(1.0)
    assert flat_v["seam"] > smooth_v["seam"] > exact_v["seam"] == 0.0


def test_edits_without_a_mask_get_whole_image_metrics(case):
    out, ref, _ = case
    (metric,) = load_metrics(["pixels"], Weights())
    rows = metric.score([Sample("edit", out, ref), Sample("no reference", out)])
    assert rows[0] == full_metrics(out, ref)
    assert set(rows[0]) == {"psnr", "ssim", "l1"} and rows[1] == {}


def test_mismatched_sizes_are_refused(photo):
    with pytest.raises(ValueError, match="output is"):
        hole_metrics(photo[:, :-1], photo, np.ones(photo.shape[:2], bool))
