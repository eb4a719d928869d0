"""Protocols: LaMa's numbers, determinism, the folder a protocol writes, and its other sources."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from canvaslab.data.masks import STROKE_PRESETS
from canvaslab.errors import InputError
from canvaslab.eval import lama_masks
from canvaslab.eval.protocols import build_protocol, load_manifest

# configs/data_gen/random_<name>.yaml of advimman/lama: irregular (min_times, max_times, max_width,
# max_len) and box (margin, bbox_min_size, bbox_max_size, min_times, max_times); box-N = thick-N's boxes
LAMA_YAML = {
    "thin-256": ((4, 50, 10, 40), None),
    "medium-256": ((4, 5, 50, 100), (0, 10, 50, 1, 5)),
    "thick-256": ((1, 5, 100, 200), (10, 30, 150, 1, 3)),
    "thin-512": ((4, 70, 20, 100), None),
    "medium-512": ((4, 10, 100, 200), (0, 30, 150, 1, 5)),
    "thick-512": ((1, 5, 250, 450), (10, 30, 300, 1, 4)),
    "box-256": (None, (10, 30, 150, 1, 3)),
    "box-512": (None, (10, 30, 300, 1, 4)),
}


@pytest.mark.parametrize("name", list(LAMA_YAML))
def test_lama_configs_are_the_papers(name):
    irregular, box = LAMA_YAML[name]
    config = lama_masks.CONFIGS[name]
    assert config.size == int(name[-3:]) and config.max_hole == 0.5
    if irregular is None:
        assert config.strokes is None
    else:
        low, high, max_width, max_len = irregular
        # LaMa: randint(min, max + 1) strokes, 5 + randint(max_width) px wide, 10 + randint(max_len) px long
        assert config.strokes == lama_masks.Strokes((low, high), (5, 4 + max_width), (10, 9 + max_len), (1, 5), 4)
    if box is None:
        assert config.boxes is None and config.box_weight == 0
    else:
        margin, low, high, times_low, times_high = box
        assert config.boxes == lama_masks.Boxes((times_low, times_high), low, high, margin)
        assert config.box_weight == (1.0 if name.startswith("box") else 0.3)


@pytest.mark.parametrize("preset", ["thin", "medium", "thick"])
def test_256_strokes_are_the_training_presets(preset):
    """The training masks (data/masks.py) were read from the same 256-px configs: one source of numbers."""
    strokes = lama_masks.CONFIGS[f"{preset}-256"].strokes
    assert (strokes.count, strokes.width, strokes.length, strokes.vertices) == tuple(
        STROKE_PRESETS[preset][k] for k in ("count", "width_px", "length_px", "vertices"))


def test_lama_segments_point_in_lamas_directions():
    """One 1-px segment per stroke: its end lies at 0.01 + k radians (k < 4), mirrored for even strokes."""
    rng = np.random.default_rng(0)
    params = lama_masks.Strokes((1, 1), (1, 1), (60, 60), (1, 1))
    allowed = [0.01 + k for k in range(4)] + [2 * np.pi - 0.01 - k for k in range(4)]
    for _ in range(30):
        mask = lama_masks.draw_strokes(rng, 301, 301, params)
        ys, xs = np.nonzero(mask)
        if len(xs) < 40 or min(xs.min(), ys.min()) == 0 or max(xs.max(), ys.max()) >= 300:  # clipped at the border
            continue
        spread = np.cov(xs, ys)
        direction = np.arctan2(2 * spread[0, 1], spread[0, 0] - spread[1, 1]) / 2  # principal axis
        assert any(abs(np.sin(direction - (np.pi / 2 - a))) < 0.05 for a in allowed)


@pytest.mark.parametrize("name", ["thin-256", "medium-512", "thick-256", "box-512"])
def test_lama_cases_are_square_crops_with_at_most_half_hole(name):
    rng = np.random.default_rng(1)
    image = np.zeros((300, 450, 3), np.uint8)
    config = lama_masks.CONFIGS[name]
    for _ in range(20):
        crop, mask = lama_masks.lama_case(rng, image, config)
        assert crop.shape == (config.size, config.size, 3) and mask.shape == (config.size, config.size)
        assert 0 < mask.mean() <= 0.5


def test_protocol_folder_and_determinism(photos, tmp_path):
    first = build_protocol("lama-medium-256", photos, tmp_path / "a", seed=3, per_image=2)
    again = build_protocol("lama-medium-256", photos, tmp_path / "b", seed=3, per_image=2)
    other = build_protocol("lama-medium-256", photos, tmp_path / "c", seed=4, per_image=2)
    assert [c.id for c in first.cases] == ["chelsea_0", "chelsea_1", "coffee_0", "coffee_1", "rocket_0", "rocket_1"]
    assert first.sha256 == again.sha256 != other.sha256  # the folder does not matter, the seed does
    for case in first.cases:
        mask = np.asarray(Image.open(first.file(case.mask))) > 127
        reference = np.asarray(Image.open(first.file(case.reference)))
        given = np.asarray(Image.open(first.file(case.input)))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "b" / case.mask)) > 127, mask)
        assert reference.shape == (256, 256, 3) and case.hole == pytest.approx(mask.mean(), abs=1e-6)
        assert (given[mask] == 0).all() and np.array_equal(given[~mask], reference[~mask])  # the hole is blanked
    # one more image leaves every other case as it was
    more = tmp_path / "more"
    shutil.copytree(photos, more)
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(more / "grey.png")
    grown = build_protocol("lama-medium-256", more, tmp_path / "d", seed=3, per_image=2)
    assert {c.id: c.hole for c in grown.cases if not c.id.startswith("grey")} == {c.id: c.hole for c in first.cases}
    loaded = load_manifest(tmp_path / "a")
    assert loaded.sha256 == first.sha256 and loaded.cases == first.cases


def test_band_protocol(photos, tmp_path):
    manifest = build_protocol("band-right", photos, tmp_path / "p", size=64, band=0.25)
    mask = np.asarray(Image.open(manifest.file(manifest.cases[0].mask))) > 127
    assert mask.shape == (64, 64) and mask[:, 48:].all() and not mask[:, :48].any()
    assert manifest.params == {"per_image": 1, "size": 64, "band": 0.25}
    with pytest.raises(InputError, match="per-image"):
        build_protocol("band-top", photos, tmp_path / "q", per_image=2)


def test_user_masks_and_lamas_released_layout(photos, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in photos.iterdir():
        w, h = Image.open(path).size
        mask = np.zeros((h, w), np.uint8)
        mask[10:30, 20:50] = 255
        Image.fromarray(mask).save(masks / path.name)
    manifest = build_protocol("masks", photos, tmp_path / "p", masks=masks)
    assert [c.id for c in manifest.cases] == ["chelsea", "coffee", "rocket"]
    assert manifest.cases[0].hole == pytest.approx(600 / np.prod(Image.open(photos / "chelsea.png").size), abs=1e-6)
    # LaMa's test folders: x_crop000.png beside x_crop000_mask000.png
    released = tmp_path / "released"
    released.mkdir()
    shutil.copy(photos / "coffee.png", released / "coffee_crop000.png")
    shutil.copy(masks / "coffee.png", released / "coffee_crop000_mask000.png")
    lama = build_protocol("masks", released, tmp_path / "q")
    assert [c.id for c in lama.cases] == ["coffee_crop000_mask000"]
    with pytest.raises(InputError, match="already holds a protocol"):
        build_protocol("masks", released, tmp_path / "q")


def test_edit_protocol_reads_an_edit_dataset_and_captions(photos, tmp_path):
    data = tmp_path / "edits"
    for folder in ("input", "edited"):
        (data / folder).mkdir(parents=True)
    shutil.copy(photos / "coffee.png", data / "input" / "coffee.png")
    Image.open(photos / "coffee.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(data / "edited" / "coffee.png")
    (data / "edited" / "coffee.txt").write_text("mirror it")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"key": "coffee", "input_caption": "a cup", "output_caption": "a mirrored cup"}) + "\n")
    manifest = build_protocol("edit", data, tmp_path / "p", captions=captions)
    (case,) = manifest.cases
    assert (case.instruction, case.input_caption, case.output_caption) == ("mirror it", "a cup", "a mirrored cup")
    assert manifest.task == "edit" and case.mask is None and case.reference == "references/coffee.png"


def test_bad_protocols_are_one_line(photos, tmp_path):
    with pytest.raises(InputError, match="unknown protocol"):
        build_protocol("lama-huge", photos, tmp_path / "p")
    with pytest.raises(InputError, match="size in its name"):
        build_protocol("lama-thin-256", photos, tmp_path / "p", size=512)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "protocol.json").write_text("{}")
    with pytest.raises(InputError, match="not a canvaslab protocol"):
        load_manifest(tmp_path / "bad")
    manifest = build_protocol("lama-box-256", photos, tmp_path / "good")
    data = json.loads(manifest.path.read_text())
    for field, value, message in (("id", "../../escape", "without '..'"), ("input", "/etc/passwd", "without '..'"),
                                  ("id", data["cases"][1]["id"], "appears twice")):
        broken = json.loads(json.dumps(data))
        broken["cases"][0][field] = value
        (tmp_path / "bad" / "protocol.json").write_text(json.dumps(broken))
        with pytest.raises(InputError, match=message):
            load_manifest(tmp_path / "bad")
