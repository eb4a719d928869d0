"""The mask task (canvaslab.make_mask): the request's one-way rule and bounds, EXIF-rotated inputs, the
recipe a mask carries and remaking it, refinement, a folder of images -> a folder of masks (resumable,
atomic, a broken file reported), and an inpaint remembering how its mask was made."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from canvaslab.errors import InputError
from canvaslab.masks.models import resolve
from canvaslab.masks.sam import EmbeddingCache, segmenter
from canvaslab.tasks.mask import make_mask, mask_folder, recipe_of_mask, remake
from canvaslab.tasks.requests import MaskRequest
from masks.test_sam import blob_at_the_prompt, scene


def scratched(seed: int, size=(96, 64)) -> np.ndarray:
    """A smooth picture with one dark diagonal scratch (what --auto damage finds)."""
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    base = 120 + 40 * np.sin(xx / 17 + seed) * np.cos(yy / 13)
    rgb = np.repeat(base[..., None], 3, axis=2)
    line = np.abs((yy - height * 0.2) - (xx - width * 0.1) * 0.5) < 1.0
    rgb[line] = 20
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("params", "message"), [
    ({}, "say where the mask is"),
    ({"points": ["3,4"], "text": ["cup"]}, "one way to make the mask, not --point/--box and --text"),
    ({"negative_points": ["3,4"]}, "add a --point on it"),
    ({"boxes": ["9,9,2,30"]}, "X0 < X1 and Y0 < Y1, got 9,9,2,30"),
    ({"points": ["1,2,3"]}, "a point must be 2 numbers"),
    ({"points": ["a,b"]}, "2 numbers separated by commas, got 'a,b'"),
    ({"points": ["3,4"], "options": ["width=2"]}, "--opt sets a rule's settings"),
    ({"auto": "damage", "options": ["nope=2"]}, "--opt for --auto damage"),
    ({"auto": "damage", "model": "sam"}, "--auto needs no model"),
    ({"points": ["3,4"], "threshold": 0.3}, "--threshold applies to --text"),
    ({"auto": "smudge"}, "auto"),
    ({"points": ["3,4"], "grow": 9999}, "grow"),
])
def test_the_request_refuses_what_it_cannot_do_in_one_line(params, message):
    with pytest.raises(InputError, match=message) as caught:
        make_mask(scene(), **params)
    assert "\n" not in str(caught.value)


def test_a_point_on_an_exif_rotated_photo_is_a_point_on_the_picture_as_shown(mask_models, tmp_path):
    """Stored 100 wide x 60 high with EXIF orientation 6 (shown rotated 90 degrees clockwise: 60 x 100).
    X,Y are read in the picture as shown; the mask comes back at that size, the disk at the click."""
    shown = scene(60, 100, seed=5)
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # what exif_transpose undoes
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (100, 60)
    seg = segmenter(resolve(str(mask_models["sam"])), "cpu")
    with blob_at_the_prompt(seg.model):
        made = make_mask(path, points=[(12, 80)], model=str(mask_models["sam"]), device="cpu", cache=EmbeddingCache())
    assert made.size == (60, 100)
    ys, xs = np.nonzero(made.mask)
    assert made.mask[80, 12] and abs(xs.mean() - 12) <= 2.5 and abs(ys.mean() - 80) <= 2.5
    with pytest.raises(InputError, match="point 90,10 is outside the 60x100 image"):
        make_mask(path, points=[(90, 10)], model=str(mask_models["sam"]), device="cpu")  # inside the stored frame only


def test_a_saved_mask_carries_its_recipe_and_remakes_identically(mask_models, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(scene(80, 48, seed=2)).save(image)
    made = make_mask(image, points=[(20, 30)], negative_points=[(70, 5)], model=str(mask_models["sam"]),
                     multimask=True, grow=2, device="cpu")
    path = made.save(tmp_path / "mask.png")
    saved = np.asarray(Image.open(path))
    assert saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 255}
    np.testing.assert_array_equal(saved == 255, made.mask)
    recipe = recipe_of_mask(path)
    assert recipe["task"] == "mask" and recipe["request"]["points"] == [[20.0, 30.0]]
    assert recipe["request"]["negative_points"] == [[70.0, 5.0]] and recipe["request"]["grow"] == 2
    assert recipe["inputs"]["image"]["path"] == str(image.resolve()) and len(recipe["inputs"]["image"]["sha256"]) == 64
    assert recipe["models"] == {"model": "sam"} and recipe["size"] == [80, 48]
    np.testing.assert_array_equal(remake(recipe).mask, made.mask)
    assert recipe_of_mask(image) is None  # a picture without a mask recipe
    with pytest.raises(InputError, match="masks are written as PNG"):
        made.save(tmp_path / "mask.jpg")


def test_refinement_runs_in_its_documented_order_and_feathering_gives_levels():
    rgb = scratched(0)
    plain = make_mask(rgb, auto="damage").mask
    assert plain.dtype == bool and plain.any()
    grown = make_mask(rgb, auto="damage", grow=3).mask
    assert (grown & ~plain).any() and not (plain & ~grown).any()
    inverted = make_mask(rgb, auto="damage", grow=3, invert=True).mask
    np.testing.assert_array_equal(inverted, ~grown)  # grow, then invert
    soft = make_mask(rgb, auto="damage", feather=2)
    assert soft.mask.dtype == np.float32 and 0 < soft.mask.min() + 1 and 0 < ((soft.mask > 0) & (soft.mask < 1)).sum()
    assert set(np.unique(soft.grey())) - {0, 255}  # grey levels in the file


def test_a_folder_becomes_a_folder_of_masks_resumably(tmp_path):
    images, out = tmp_path / "scans", tmp_path / "masks"
    for index, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scratched(index)).save(images / name)
    (images / "broken.png").write_bytes(b"not a picture")
    request = MaskRequest(auto="damage")
    report = mask_folder(images, out, request)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "b.png", "sub/c.png"]
    assert len(report.done) == 3 and len(report.failed) == 1 and "broken.png" in str(report.failed[0][0].image)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "sub/c.png")) == 255, make_mask(images / "sub/c.png", request).mask)
    assert recipe_of_mask(out / "a.png")["inputs"]["image"]["path"] == str((images / "a.png").resolve())
    # rerun: finished masks are skipped; a removed one is made again; a killed write's temporary is cleared
    (out / "b.png").unlink()
    stale = out / ".b.png.0123abcd.tmp"  # atomic_write_bytes' name for a write to b.png that was killed
    stale.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    again = mask_folder(images, out, request)
    assert [item.output.name for item in again.done] == ["b.png"] and len(again.skipped) == 2
    assert not stale.exists()


def test_one_text_over_a_folder_gives_each_image_its_own_mask(mask_models, tmp_path):
    images, out = tmp_path / "shelf", tmp_path / "tags"
    images.mkdir()
    for index, size in enumerate([(64, 40), (40, 64)]):
        Image.fromarray(scene(*size, seed=20 + index)).save(images / f"{index}.png")
    request = MaskRequest(text=["the price tag"], text_model=str(mask_models["clipseg"]), threshold=0.5, device="cpu")
    report = mask_folder(images, out, request)
    assert len(report.done) == 2 and not report.failed
    for index, size in enumerate([(64, 40), (40, 64)]):
        saved = np.asarray(Image.open(out / f"{index}.png")) == 255
        assert saved.shape == size[::-1]
        np.testing.assert_array_equal(saved, make_mask(images / f"{index}.png", request).mask)


def test_the_watermark_rule_takes_a_folder_and_makes_one_mask(tmp_path):
    folder = tmp_path / "stock"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(scene(64, 48, seed=10 + index)).save(folder / f"{index}.png")
    made = make_mask(images=folder, auto="watermark")
    assert made.mask.shape == (48, 64) and made.recipe["inputs"]["images"] == {"path": str(folder.resolve()), "count": 4}
    with pytest.raises(InputError, match="compares many images: give a folder"):
        make_mask(folder / "0.png", auto="watermark")
    with pytest.raises(InputError, match="makes one mask for the whole folder"):
        mask_folder(folder, tmp_path / "out", MaskRequest(auto="watermark"))
    with pytest.raises(InputError, match="masks one image at a time"):
        make_mask(folder / "0.png", auto="damage", images=folder)


def test_an_inpaint_remembers_how_its_mask_was_made_and_replay_remakes_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import canvaslab
    from canvaslab.cli.main import app
    from canvaslab.tasks.result import private_recipe

    image = tmp_path / "scan.png"
    Image.fromarray(scratched(3)).save(image)
    mask = make_mask(image, auto="damage", grow=1).save(tmp_path / "damage.png")
    result = canvaslab.inpaint(image, mask, engine="telea", seed=1)
    made = result.recipe["inputs"]["mask"]["made"]
    assert made["task"] == "mask" and made["request"]["auto"] == "damage" and made["request"]["grow"] == 1
    assert private_recipe(result.recipe)["inputs"]["mask"]["made"]["inputs"]["image"]["path"] is None
    out = result.save(tmp_path / "out.png")
    mask.unlink()  # the mask file is gone: replay makes it again from its recipe
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(app, ["replay", str(out), "-o", str(tmp_path / "again.png"), "--check"])
    assert run.exit_code == 0, run.output
    assert "making the mask again" in run.output and "identical pixels" in run.output


def test_mask_files_are_png_bytes_with_the_recipe(tmp_path):
    made = make_mask(scratched(1), auto="damage")
    data = made.encode()
    assert Image.open(io.BytesIO(data)).mode == "L"
    assert recipe_of_mask(data)["request"]["auto"] == "damage"
    assert recipe_of_mask(made.encode(recipe=False)) is None
