import numpy as np
import pytest

from canvaslab.core.canvas import Expansion, InitialFill, expand_canvas, parse_directions, plan_expansion, split_steps
from canvaslab.errors import InputError


def test_plan_pixels_and_fraction():
    assert plan_expansion((512, 256), right=128) == Expansion(right=128)
    assert plan_expansion((512, 256), expand=0.5, directions=("left", "bottom")) == Expansion(left=256, bottom=128)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "nothing to outpaint"),
        ({"right": 10, "expand": 0.5, "directions": ("left",)}, "not both"),
        ({"expand": 0.5}, "needs --direction"),
        ({"directions": ("left",)}, "needs --expand"),
        ({"expand": 9.0, "directions": ("left",)}, "fraction"),
    ],
)
def test_plan_rejects_conflicts(kwargs, message):
    with pytest.raises(InputError, match=message):
        plan_expansion((100, 100), **kwargs)


def test_directions_accept_aliases_and_reject_typos():
    assert parse_directions("left, up,down,left") == ("left", "top", "bottom")
    with pytest.raises(InputError, match="unknown direction 'lft'"):
        parse_directions("lft")


def test_split_steps_sums_to_total():
    steps = split_steps(Expansion(left=10, right=384), 3)
    assert [s.right for s in steps] == [128, 128, 128]
    assert sum(s.left for s in steps) == 10
    assert split_steps(Expansion(right=1), 4) == [Expansion(right=1)]


@pytest.mark.parametrize("fill", list(InitialFill))
def test_expand_keeps_the_old_image_and_masks_the_new_area(fill):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    canvas, mask = expand_canvas(rgb, Expansion(left=5, right=40, top=3), fill=fill, overlap=4)
    assert canvas.shape == (23, 75, 3) and mask.shape == (23, 75)
    np.testing.assert_array_equal(canvas[3:23, 5:35], rgb)
    assert mask[:3].all() and mask[:, :5].all() and mask[:, 35:].all()
    inner = mask[3:23, 5:35]
    assert inner[:, :4].all() and inner[:, -4:].all() and inner[:4].all()  # overlap bands
    assert not inner[4:, 4:-4].any()


def test_mirror_fill_handles_growth_beyond_the_image():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    canvas, _ = expand_canvas(rgb, Expansion(right=10), fill=InitialFill.mirror)
    assert canvas.shape == (2, 13, 3)
    np.testing.assert_array_equal(canvas[:, 3:6], rgb[:, ::-1])


def test_matched_noise_takes_the_image_palette_and_is_seeded():
    rng = np.random.default_rng(3)
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = rng.integers(150, 200, (40, 60))  # a reddish image
    rgb[..., 2] = rng.integers(0, 30, (40, 60))
    a, mask = expand_canvas(rgb, Expansion(right=30), fill=InitialFill.matched_noise, seed=1)
    b, _ = expand_canvas(rgb, Expansion(right=30), fill=InitialFill.matched_noise, seed=1)
    c, _ = expand_canvas(rgb, Expansion(right=30), fill=InitialFill.matched_noise, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    new = a[:, 60:]
    assert 150 <= new[..., 0].mean() <= 200 and new[..., 2].mean() < 30
    assert new[..., 0].std() > 5  # texture, not a flat colour
    np.testing.assert_array_equal(a[:, :60], rgb)
