"""The Python API: canvaslab.inpaint / canvaslab.outpaint, through the real engines."""

import json

import numpy as np
import pytest
from PIL import Image

import canvaslab
from canvaslab.errors import EngineError, InputError
from canvaslab.tasks.requests import GenerateRequest, InpaintRequest, OutpaintRequest
from conftest import write_png

ENGINES = ["patchmatch", "telea", "ns"]


@pytest.mark.parametrize("engine", ENGINES)
def test_unmasked_pixels_are_untouched_and_size_restored(photo, box_mask, engine):
    result = canvaslab.inpaint(photo, box_mask, engine=engine, seed=1)
    assert result.image.shape == photo.shape and result.image.dtype == np.uint8
    np.testing.assert_array_equal(result.image[~box_mask], photo[~box_mask])
    assert not np.array_equal(result.image[box_mask], photo[box_mask])


@pytest.mark.parametrize("engine", ENGINES)
def test_grown_mask_is_the_boundary_of_change(photo, box_mask, engine):
    result = canvaslab.inpaint(photo, box_mask, engine=engine, seed=1, grow=4, feather=3)
    assert result.mask.sum() > box_mask.sum()
    np.testing.assert_array_equal(result.image[~result.mask], photo[~result.mask])


def test_same_seed_same_pixels(photo, box_mask):
    a = canvaslab.inpaint(photo, box_mask, seed=5)
    b = canvaslab.inpaint(photo, box_mask, seed=5)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.seed == 5 and a.recipe["request"]["seed"] == 5


def test_random_seed_is_recorded(photo, box_mask):
    result = canvaslab.inpaint(photo, box_mask, engine="telea")
    assert isinstance(result.seed, int) and result.recipe["request"]["seed"] == result.seed
    assert f"Seed: {result.seed}" in result.parameters


def test_empty_mask_returns_input_with_a_notice(photo):
    result = canvaslab.inpaint(photo, np.zeros(photo.shape[:2], bool))
    np.testing.assert_array_equal(result.image, photo)
    assert any("mask is empty" in n for n in result.notices)


def test_mask_covering_everything_is_a_clear_error(photo):
    with pytest.raises(EngineError, match="covers the whole image"):
        canvaslab.inpaint(photo, np.ones(photo.shape[:2], bool), engine="telea")


def test_only_masked_area_pastes_back_in_place(photo, box_mask):
    whole = canvaslab.inpaint(photo, box_mask, engine="telea", seed=0)
    cropped = canvaslab.inpaint(photo, box_mask, engine="telea", seed=0, area="masked", padding=8)
    np.testing.assert_array_equal(cropped.image[~box_mask], photo[~box_mask])
    # Telea only looks a few pixels around the hole, so the crop must land exactly where the hole is.
    assert np.abs(cropped.image.astype(int) - whole.image.astype(int)).mean() < 1.0


@pytest.mark.parametrize("mode, painted", [("white", 255), ("black", 0)])
def test_mask_files_in_both_polarities(tmp_path, photo, box_mask, mode, painted):
    mask_img = np.where(box_mask, painted, 255 - painted).astype(np.uint8)
    mask_path = write_png(tmp_path / "m.png", mask_img)
    result = canvaslab.inpaint(photo, mask_path, mask_mode=mode, engine="telea", seed=0)
    np.testing.assert_array_equal(result.mask, box_mask)


def test_alpha_mode_fills_transparent_pixels_and_keeps_alpha(tmp_path, photo, box_mask):
    alpha = np.where(box_mask, 0, 255).astype(np.uint8)
    alpha[0, 0] = 200  # partial transparency outside the hole survives
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(path)
    result = canvaslab.inpaint(path, mask_mode="alpha", engine="telea", seed=0)
    np.testing.assert_array_equal(result.mask, box_mask)
    assert result.alpha is not None and result.alpha[box_mask].min() == 255 and result.alpha[0, 0] == 200
    saved = Image.open(result.save(tmp_path / "out.png"))
    assert saved.mode == "RGBA"


def test_color_match_keeps_the_invariant(photo, box_mask):
    result = canvaslab.inpaint(photo, box_mask, engine="telea", seed=0, color_match="mean-std", feather=2)
    np.testing.assert_array_equal(result.image[~box_mask], photo[~box_mask])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"grow": -1}, "grow"),
        ({"engine": "nope"}, "unknown engine 'nope'"),
        ({"mask_mode": "purple"}, "mask_mode"),
        ({"colour": 1}, "unknown parameter 'colour'"),
        ({"options": {"radiuss": 3}, "engine": "telea"}, "option radiuss"),
    ],
)
def test_bad_parameters_are_one_line_errors(photo, box_mask, params, message):
    with pytest.raises(InputError, match=message) as info:
        canvaslab.inpaint(photo, box_mask, **params)
    assert "\n" not in str(info.value)


def test_missing_mask_explains_the_options(photo):
    with pytest.raises(InputError, match="needs a mask"):
        canvaslab.inpaint(photo)


@pytest.mark.parametrize("engine", ["patchmatch", "telea"])
def test_outpaint_sizes_and_kept_pixels(photo, engine):
    result = canvaslab.outpaint(photo, left=20, right=36, top=8, engine=engine, seed=2, overlap=6)
    h, w = photo.shape[:2]
    assert result.image.shape == (h + 8, w + 56, 3)
    kept = ~result.mask[8:, 20 : 20 + w]
    assert kept.sum() > 0.7 * h * w
    np.testing.assert_array_equal(result.image[8:, 20 : 20 + w][kept], photo[kept])
    assert result.mask[:, :20].all() and result.mask[:, -36:].all() and result.mask[:8].all()


def test_outpaint_in_steps_by_fraction(photo):
    result = canvaslab.outpaint(photo, expand=0.5, direction="left,down", steps=2, engine="telea", seed=0)
    h, w = photo.shape[:2]
    assert result.image.shape == (h + round(h * 0.5), w + round(w * 0.5), 3)
    assert "Outpaint expand: 0.5 left+bottom" in result.parameters


def test_outpaint_conflicting_sizes_is_an_error(photo):
    with pytest.raises(InputError, match="not both"):
        canvaslab.outpaint(photo, right=10, expand=0.2, direction="left")


@pytest.mark.parametrize(
    "params, flag",
    [
        ({"engine": "telea", "prompt": "a red boat"}, "--prompt"),
        ({"engine": "patchmatch", "model": "sd15-inpaint"}, "--model"),
        ({"engine": "ns", "steps": 30}, "--steps"),
        ({"engine": "patchmatch", "guidance_scale": 5}, "--guidance-scale"),
        ({"engine": "telea", "lora": ["style.safetensors"]}, "--lora"),
        ({"prompt": "a red boat"}, "--prompt"),  # no engine, no model: PatchMatch, which reads no prompt
        ({"engine": "unified", "scheduler": "euler"}, "--scheduler"),
        ({"model": "show-o", "strength": 0.5}, "--strength"),
    ],
)
def test_a_field_the_engine_would_ignore_is_refused(photo, box_mask, params, flag):
    """Issue 10: prompts, models and steps given to an engine that does not read them were silently ignored."""
    with pytest.raises(InputError, match=f"^{flag} does not apply to the") as info:
        canvaslab.inpaint(photo, box_mask, seed=0, **params)
    assert "\n" not in str(info.value)


def test_outpaint_refuses_sampling_settings_but_not_its_own_steps_for_classical_engines(photo):
    assert canvaslab.outpaint(photo, right=16, steps=2, engine="telea", seed=0).image.shape[1] == photo.shape[1] + 16
    for params in ({"sampling_steps": 30}, {"prompts": ["sea", "sky"]}):
        with pytest.raises(InputError, match="does not apply to the telea engine"):
            canvaslab.outpaint(photo, right=16, engine="telea", **params)


def write_model_folder(folder, files):
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    return str(folder)


def test_a_model_implies_its_engine(tmp_path):
    """Issue 10: --model without --engine ran PatchMatch; now the model picks diffusion, or unified for Show-o."""
    showo = write_model_folder(tmp_path / "my-showo", {"config.json": {"_class_name": "Showo", "num_vq_tokens": 256}})
    pipeline = write_model_folder(tmp_path / "my-sd", {"model_index.json": {"_class_name": "StableDiffusionInpaintPipeline"}})
    expected = {"sd15-inpaint": "diffusion", "owner/some-model": "diffusion", str(tmp_path / "x.safetensors"): "diffusion",
                pipeline: "diffusion", "show-o": "unified", "show-o-512": "unified", showo: "unified"}
    for model, engine in expected.items():
        assert InpaintRequest(model=model).engine == engine, model
        assert OutpaintRequest.model_validate({"model": model, "engine": None}).engine == engine
    assert GenerateRequest(model=showo).engine == "unified" and GenerateRequest().engine == "diffusion"
    assert InpaintRequest().engine == "patchmatch"
    assert InpaintRequest(model=showo, engine="diffusion").engine == "diffusion"  # an explicit engine wins
    with pytest.raises(InputError, match="edit runs on the diffusion engine, not 'unified'"):
        canvaslab.edit(np.zeros((8, 8, 3), np.uint8), instruction="x", model=showo)


def test_every_engine_says_which_fields_it_reads():
    from canvaslab.engines import engine_names
    from canvaslab.tasks.requests import ENGINE_FIELDS, GENERATIVE_FIELDS

    assert set(ENGINE_FIELDS) == set(engine_names())
    assert all(reads <= GENERATIVE_FIELDS for reads in ENGINE_FIELDS.values())
    assert InpaintRequest.unused_fields("telea") == GENERATIVE_FIELDS - {"prompts", "sampling_steps"}
    assert "steps" not in OutpaintRequest.unused_fields("telea")


@pytest.mark.parametrize("fill", ["matched-noise", "patchmatch"])
def test_outpaint_initial_fills_run_and_keep_pixels(photo, fill):
    result = canvaslab.outpaint(photo, right=24, engine="telea", seed=0, overlap=0, feather=0, fill=fill)
    h, w = photo.shape[:2]
    np.testing.assert_array_equal(result.image[:, :w], photo)
    assert result.image.shape == (h, w + 24, 3)


def test_parameters_name_local_models_loras_and_configs_like_a1111(tmp_path, monkeypatch):
    import hashlib
    import struct

    from canvaslab.core.metadata import format_parameters

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    checkpoint = models / "my-model.safetensors"
    checkpoint.write_bytes(b"checkpoint bytes")
    header = b'{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}'
    lora = models / "style.safetensors"
    lora.write_bytes(struct.pack("<Q", len(header)) + header + b"\x01\x02\x03\x04")
    (models / "sd15-config").mkdir()
    request = InpaintRequest(model=str(checkpoint), lora=[f"{lora}:0.8"], options={"config": str(models / "sd15-config")})
    settings = request.a1111_settings((64, 48), 3)
    assert settings["Model"] == "my-model"
    assert settings["Model hash"] == hashlib.sha256(b"checkpoint bytes").hexdigest()[:10]
    assert settings["Lora hashes"] == f"style: {hashlib.sha256(bytes([1, 2, 3, 4])).hexdigest()[:12]}"
    assert settings["Engine config"] == "sd15-config"
    assert str(models) not in format_parameters("p", "", settings)
    assert InpaintRequest(model="sd15-inpaint").a1111_models() == {}  # an alias is a name already
