"""Random training masks: shapes, determinism, coverage, structure, and the weighted mixture."""

import cv2
import numpy as np
import pytest
from scipy.stats import chisquare

from canvaslab.data.masks import GENERATORS, MaskMixture, coverage_stats, edge_band, glide_boxes, strokes
from canvaslab.errors import InputError

PARTIAL = [name for name in GENERATORS if name != "everything"]
SIZES = [(64, 64), (16, 40), (40, 16), (96, 256)]

# (lowest, highest) mean coverage over 200 masks at 128 px; the documented behaviour of each default.
MEAN_COVERAGE = {
    "boxes": (0.10, 0.25),
    "glide_boxes": (0.25, 0.40),
    "blurred_noise": (0.42, 0.58),  # coverage uniform in [0.05, 0.95]
    "strokes-thin": (0.20, 0.40),
    "strokes-medium": (0.20, 0.38),
    "strokes-thick": (0.33, 0.50),
    "cloud": (0.30, 0.40),  # coverage uniform in [0.1, 0.6]
    "edge_band": (0.45, 0.65),
}


@pytest.fixture(scope="module")
def stats_128():
    return {name: coverage_stats(name, 200, 128, seed=1) for name in PARTIAL}


@pytest.mark.parametrize("name", list(GENERATORS))
@pytest.mark.parametrize("size", SIZES)
def test_shape_dtype_and_determinism(name, size):
    draw = GENERATORS[name]
    first = draw(np.random.default_rng(7), *size)
    assert first.shape == size and first.dtype == bool
    assert np.array_equal(first, draw(np.random.default_rng(7), *size))


@pytest.mark.parametrize("name", PARTIAL)
def test_seeds_give_different_masks(name):
    masks = [GENERATORS[name](np.random.default_rng(seed), 64, 64) for seed in range(5)]
    assert len({mask.tobytes() for mask in masks}) == 5


@pytest.mark.parametrize("name", PARTIAL)
@pytest.mark.parametrize("size", [(16, 40), (64, 64), (2, 1), (1, 3), (3, 3)])
def test_never_empty_never_full(name, size):
    rng = np.random.default_rng(3)
    for _ in range(60):
        mask = GENERATORS[name](rng, *size)
        assert mask.any() and not mask.all()


def test_everything_is_all_true():
    assert GENERATORS["everything"](np.random.default_rng(0), 16, 40).all()


@pytest.mark.parametrize("name", PARTIAL)
def test_mean_coverage_in_documented_range(name, stats_128):
    low, high = MEAN_COVERAGE[name]
    assert low <= stats_128[name].mean <= high, stats_128[name]


def test_threshold_generators_hit_their_coverage_ranges(stats_128):
    noise, cloud = stats_128["blurred_noise"], stats_128["cloud"]
    assert 0.04 <= noise.minimum and noise.maximum <= 0.96
    assert 0.09 <= cloud.minimum and cloud.maximum <= 0.61


def test_glide_boxes_never_cover_more_than_half():
    for size in [(256, 256), (64, 128), (16, 40)]:
        assert coverage_stats("glide_boxes", 200, size, seed=2).maximum <= 0.5


def test_glide_boxes_are_one_to_four_rectangles():
    rng = np.random.default_rng(4)
    for _ in range(50):
        mask = glide_boxes(rng, 64, 64).astype(np.uint8)
        count, _ = cv2.connectedComponents(mask, connectivity=4)
        assert 1 <= count - 1 <= 4  # overlapping rectangles merge into fewer components


def _surviving_erosion(name: str, radius: int) -> float:
    """Share of masked pixels more than `radius` px inside the mask: near 0 for thin brushes."""
    rng = np.random.default_rng(5)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    kept = total = 0
    for _ in range(40):
        mask = GENERATORS[name](rng, 256, 256).astype(np.uint8)
        kept += int(cv2.erode(mask, kernel).sum())
        total += int(mask.sum())
    return kept / total


def test_stroke_presets_get_thicker(stats_128):
    assert stats_128["strokes-thin"].mean + 0.05 < stats_128["strokes-thick"].mean
    thin, medium, thick = (_surviving_erosion(f"strokes-{p}", 8) for p in ("thin", "medium", "thick"))
    assert thin < 0.1 and 0.4 < medium < thick  # LaMa's thin brushes are at most 14 px wide


def test_strokes_scale_with_image_size():
    small, large = coverage_stats("strokes-medium", 100, 64, 6), coverage_stats("strokes-medium", 100, 512, 6)
    assert abs(small.mean - large.mean) < 0.08


def _band_depths(mask: np.ndarray) -> dict[str, int]:
    """Depth of the full rows/columns from each side (0 where the border line is not fully masked)."""
    lines = {"left": mask.all(axis=0), "right": mask.all(axis=0)[::-1],
             "top": mask.all(axis=1), "bottom": mask.all(axis=1)[::-1]}
    return {side: int(np.argmin(full)) if not full.all() else len(full) for side, full in lines.items()}


@pytest.mark.parametrize("size", [(64, 64), (16, 40), (200, 72)])
def test_edge_band_is_bands_on_its_sides_and_nothing_else(size):
    rng = np.random.default_rng(8)
    height, width = size
    for _ in range(100):
        mask = edge_band(rng, height, width)
        depths = _band_depths(mask)
        rebuilt = np.zeros_like(mask)
        rebuilt[:, : depths["left"]] = True
        rebuilt[:, width - depths["right"] :] = True
        rebuilt[: depths["top"], :] = True
        rebuilt[height - depths["bottom"] :, :] = True
        assert np.array_equal(mask, rebuilt)
        for side, depth in depths.items():
            across = width if side in ("left", "right") else height
            assert depth <= round(0.35 * across) or depth == 0


def test_edge_band_uses_every_number_of_sides():
    rng = np.random.default_rng(9)
    counts = {sum(d > 0 for d in _band_depths(edge_band(rng, 64, 64)).values()) for _ in range(200)}
    assert counts == {1, 2, 3, 4}


def test_mixture_from_config_samples_deterministically():
    config = {"strokes-medium": 0.4, "boxes": 0.2, "cloud": 0.2, "edge_band": 0.2, "p_everything": 0.1}
    mixture = MaskMixture.from_config(config)
    first = [mixture.sample(np.random.default_rng(11), 48, 80) for _ in range(3)]
    rng_a, rng_b = np.random.default_rng(12), np.random.default_rng(12)
    for _ in range(20):
        a, b = mixture.sample(rng_a, 48, 80), mixture.sample(rng_b, 48, 80)
        assert a.shape == (48, 80) and a.dtype == bool and np.array_equal(a, b)
    assert all(np.array_equal(first[0], m) for m in first)


def test_mixture_respects_weights_and_p_everything():
    weights = {"strokes-medium": 0.4, "boxes": 0.2, "cloud": 0.2, "edge_band": 0.2, "glide_boxes": 0}
    mixture = MaskMixture.from_config({**weights, "p_everything": 0.1})
    rng = np.random.default_rng(13)
    n = 5000
    picks = [mixture.choose(rng) for _ in range(n)]
    assert abs(picks.count("everything") / n - 0.1) < 0.02
    assert "glide_boxes" not in picks
    conditional = [p for p in picks if p != "everything"]
    names = ["strokes-medium", "boxes", "cloud", "edge_band"]
    observed = [conditional.count(name) for name in names]
    expected = [mixture.probabilities[name] * len(conditional) for name in names]
    assert chisquare(observed, expected).pvalue > 0.001


def test_mixture_passes_generator_params():
    mixture = MaskMixture.from_config({"boxes": {"weight": 1, "count": 1, "size": [0.5, 0.5], "ellipse_prob": 0}})
    mask = mixture.sample(np.random.default_rng(14), 64, 64)
    assert mask.sum() == 32 * 32


def test_p_everything_one_always_masks_everything():
    mixture = MaskMixture({"cloud": 1}, p_everything=1)
    assert mixture.sample(np.random.default_rng(0), 16, 40).all()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"strokes-fat": 1}, ["'strokes-fat'", "strokes-thin", "edge_band"]),
        ({"boxes": -1}, ["'boxes'", ">= 0"]),
        ({"boxes": "lots"}, ["'boxes'", "'lots'"]),
        ({"boxes": 0, "cloud": 0}, ["all be zero"]),
        ({"boxes": 1, "p_everything": 1.5}, ["p_everything", "1.5"]),
        ({"everything": 1}, ["p_everything"]),
        ({"boxes": {"count": 2}}, ["'boxes'", "weight"]),
        ({"boxes": {"weight": 1, "sizes": 2}}, ["'sizes'", "ellipse_prob"]),
        ({"cloud": {"weight": 1, "coverage": [0.6, 0.1]}}, ["cloud", "coverage", "[0.6, 0.1]"]),
        ({"strokes-thin": {"weight": 1, "preset": "thick"}}, ["'preset'"]),
    ],
)
def test_bad_configs_fail_in_one_line_naming_the_key(config, words):
    with pytest.raises(InputError) as error:
        MaskMixture.from_config(config)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda rng: strokes(rng, 64, 64, preset="huge"), "preset"),
        (lambda rng: strokes(rng, 64, 64, width_px=[0, 3]), "width_px"),
        (lambda rng: edge_band(rng, 64, 64, sides=5), "sides"),
        (lambda rng: glide_boxes(rng, 64, 64, count=[1.5, 2]), "count"),
        (lambda rng: GENERATORS["boxes"](rng, 1, 1), "2 pixels"),
        (lambda rng: GENERATORS["everything"](rng, 0, 5), "2 pixels"),
    ],
)
def test_bad_generator_params_raise_input_error(call, word):
    with pytest.raises(InputError, match=word):
        call(np.random.default_rng(0))


def test_coverage_stats_accepts_callables_and_rectangles():
    stats = coverage_stats(edge_band, 20, (16, 40), seed=0, sides=1, band=0.25)
    assert stats.fractions.shape == (20,)
    assert 0.2 <= stats.minimum <= stats.maximum <= 0.3
