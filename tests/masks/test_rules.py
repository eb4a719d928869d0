"""Rule masks on synthetic damage of real photos, with known answers: a watermark stamped on 20 photos,
scratches drawn on scans, text written on pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from canvaslab.errors import InputError
from canvaslab.masks import rule, rule_options
from canvaslab.masks.damage import DamageOptions, find_damage
from canvaslab.masks.text import TextOptions, find_text
from canvaslab.masks.watermark import find_watermark
from canvaslab.core.mask import grow

from .photos import crops, photo


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# -- watermark -----------------------------------------------------------------------------------

SIZE = (192, 128)


def badge() -> tuple[np.ndarray, np.ndarray]:
    """A semi-transparent rounded badge with a dark "(c) lab" in it: (footprint, text strokes in 0..1)."""
    shape = Image.new("L", SIZE, 0)
    ImageDraw.Draw(shape).rounded_rectangle((120, 92, 184, 120), radius=6, fill=255)
    text = Image.new("L", SIZE, 0)
    ImageDraw.Draw(text).text((126, 97), "(c) lab", fill=255, font=ImageFont.load_default(size=14))
    return np.asarray(shape) > 0, np.asarray(text, np.float32) / 255


def stamp(rgb: np.ndarray, footprint: np.ndarray, text: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.float32)
    out = out * (1 - 0.35 * footprint[..., None]) + 255 * 0.35 * footprint[..., None]  # 35 % white badge
    out = out * (1 - 0.5 * text[..., None])  # half-dark letters
    return out.round().clip(0, 255).astype(np.uint8)


def test_a_watermark_stamped_on_20_photos_is_found():
    footprint, text = badge()
    stamped = [stamp(rgb, footprint, text) for rgb in crops(20, SIZE)]
    found = rule("watermark")(stamped)
    assert found.shape == footprint.shape
    assert iou(found, footprint) >= 0.9


def test_no_watermark_no_mask_and_too_few_images():
    assert find_watermark(crops(20, SIZE, seed=3)).sum() < 0.002 * SIZE[0] * SIZE[1]
    with pytest.raises(InputError, match="3 or more images share; got 2"):
        find_watermark(crops(2, SIZE))


def test_images_of_another_size_are_resized_to_the_common_one():
    footprint, text = badge()
    stamped = [stamp(rgb, footprint, text) for rgb in crops(12, SIZE)]
    # two more photos at twice the size, stamped at the same relative place
    big = [np.asarray(Image.fromarray(s).resize((384, 256), Image.Resampling.BILINEAR)) for s in stamped[:2]]
    found = find_watermark(stamped + big)
    assert found.shape == (128, 192) and iou(found, footprint) >= 0.9


# -- damage --------------------------------------------------------------------------------------


def scratches(size: tuple[int, int], rng: np.random.Generator, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Random polyline scratches 1-3 px wide: (bright ones, dark ones) as masks."""
    layers = [Image.new("L", size, 0), Image.new("L", size, 0)]
    for i in range(count):
        width, height = size
        points = [(rng.uniform(0, width), rng.uniform(0, height))]
        for _ in range(3):
            x, y = points[-1]
            points.append((x + rng.uniform(-width / 3, width / 3), y + rng.uniform(-height / 3, height / 3)))
        ImageDraw.Draw(layers[i % 2]).line(points, fill=255, width=int(rng.integers(1, 4)))
    return np.asarray(layers[0]) > 0, np.asarray(layers[1]) > 0


# Scans whose own detail is coarser than the scratches (photos at twice their size): what the rule is for.
@pytest.mark.parametrize("name", ["chelsea.png", "moon.png", "ihc.png"])
def test_drawn_scratches_are_found(name):
    rgb = photo(name, scale=2.0)
    rng = np.random.default_rng(1)
    bright, dark = scratches((rgb.shape[1], rgb.shape[0]), rng)
    damaged = rgb.copy()
    damaged[bright], damaged[dark] = 250, 10
    # the truth is the scratch pixels one can see (a bright scratch over white paper is no damage)
    visible = np.abs(damaged.astype(int).mean(-1) - rgb.astype(int).mean(-1)) >= 60
    truth = (bright | dark) & visible
    found = find_damage(damaged)
    assert iou(found, truth) >= 0.8


def test_damage_width_contrast_and_polarity():
    canvas = np.full((80, 120, 3), 128, np.uint8)
    canvas[20:22, 10:110] = 250  # a bright scratch, 2 px
    canvas[40:43, 10:110] = 10  # a dark crack, 3 px
    canvas[55:75, 10:110] = 250  # a bright band 20 px wide: a feature, not damage
    canvas[8, 50:60] = 250  # a short speck: under min_length
    found = find_damage(canvas)
    assert found[20:22, 10:110].all() and found[40:43, 10:110].all()
    assert not found[55:75].any() and not found[8].any()
    assert not find_damage(canvas, DamageOptions(polarity="bright"))[40:43].any()
    assert not find_damage(canvas, DamageOptions(contrast=200))[20:43].any()
    assert rule_options("damage") is DamageOptions


# -- text ----------------------------------------------------------------------------------------


def written(rgb: np.ndarray, lines: list[tuple[tuple[int, int], str, int, tuple[int, int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    image, truth = Image.fromarray(rgb), Image.new("L", (rgb.shape[1], rgb.shape[0]), 0)
    for xy, words, size, colour in lines:
        font = ImageFont.load_default(size=size)
        ImageDraw.Draw(image).text(xy, words, fill=colour, font=font)
        ImageDraw.Draw(truth).text(xy, words, fill=255, font=font)
    return np.asarray(image), np.asarray(truth) > 0


@pytest.mark.parametrize(("name", "lines"), [
    ("coffee.png", [((30, 330), "Espresso 2026", 28, (255, 255, 255)), ((300, 20), "PIKOLO", 36, (20, 20, 20))]),
    ("rocket.jpg", [((230, 40), "(c) SpaceX 2015", 20, (255, 255, 255))]),
    ("chelsea.png", [((10, 10), "my cat", 30, (0, 0, 0))]),
])
def test_written_text_is_found(name, lines):
    rgb, truth = written(photo(name), lines)
    found = find_text(rgb)
    covered = grow(found, 2)
    assert (covered & truth).sum() >= 0.9 * truth.sum()  # the letters, once grown by 2 px as docs advise
    near = grow(truth, 6)
    assert (found & ~near).sum() <= 0.15 * found.sum()  # little found elsewhere


def test_no_text_in_plain_photos():
    for name in ("chelsea.png", "rocket.jpg", "camera.png"):
        assert find_text(photo(name)).mean() < 0.001
    with pytest.raises(ValueError):
        TextOptions(stroke=0)
