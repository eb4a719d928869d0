"""The unified engine through canvaslab's tasks, API and CLI, on a tiny saved bundle (64 px = 4x4 tokens)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

import canvaslab  # noqa: E402
from canvaslab.core.image import load_image  # noqa: E402
from canvaslab.engines.unified import bundle as bundle_module  # noqa: E402
from canvaslab.engines.unified.engine import (  # noqa: E402
    DEFAULT_MODEL, UnifiedEngine, UnifiedOptions, cached_bundle, encode_pixels, fill_codes, plan_windows, token_mask,
    window_stride,
)
from canvaslab.engines.unified.sampling import generate_image_codes  # noqa: E402
from canvaslab.engines.unified.tokens import MASKED  # noqa: E402
from canvaslab.engines import Generation, get_engine  # noqa: E402
from canvaslab.errors import InputError, ModelNotAvailableError  # noqa: E402
from conftest import write_png  # noqa: E402


@pytest.fixture(scope="module")
def folder(bundle_folder):
    return bundle_folder


@pytest.fixture(scope="module")
def bundle(folder):
    return cached_bundle(Generation(model=str(folder)), UnifiedOptions())


@pytest.fixture(scope="module")
def picture(photo):
    """A 90x70 crop of a real photo: not a multiple of 16, and more than one 64 px window."""
    return np.ascontiguousarray(photo[10:80, 30:120])


@pytest.fixture(scope="module")
def hole(picture):
    mask = np.zeros(picture.shape[:2], bool)
    mask[20:45, 30:62] = True
    return mask


def inpaint(image, mask, folder, **params):
    params = {"engine": "unified", "model": str(folder), "steps": 3, "seed": 1, "guidance_scale": 1.5,
              "prompt": "a wooden table", **params}
    return canvaslab.inpaint(image, mask, **params)


# -- inpaint ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("crop", [(70, 90), (40, 50)], ids=["two-windows", "below-native"])
def test_inpaint_restores_size_and_keeps_unmasked_pixels(picture, folder, crop):
    image = np.ascontiguousarray(picture[: crop[0], : crop[1]])
    mask = np.zeros(crop, bool)
    mask[10:30, 12:40] = True
    result = inpaint(image, mask, folder)
    assert result.image.shape == image.shape
    np.testing.assert_array_equal(result.image[~mask], image[~mask])
    assert np.abs(result.image[mask].astype(int) - image[mask].astype(int)).mean() > 1
    mirrored = any("mirrored out" in n for n in result.notices)
    assert mirrored == (crop == (40, 50))  # smaller than the native 64 px: said so, not hidden
    assert "Sampler: MaskGIT" in result.parameters and "Steps: 3" in result.parameters


def test_inpaint_same_seed_same_pixels_other_seed_or_prompt_differs(picture, hole, folder):
    a, b = inpaint(picture, hole, folder, seed=3), inpaint(picture, hole, folder, seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, inpaint(picture, hole, folder, seed=4).image)
    assert not np.array_equal(a.image, inpaint(picture, hole, folder, seed=3, prompt="a red car").image)


def test_a_token_is_regenerated_when_any_of_its_pixels_is_masked():
    mask = np.zeros((32, 48), bool)
    mask[17, 40] = True  # one pixel in token row 1, column 2
    expected = np.zeros((2, 3), bool)
    expected[1, 2] = True
    np.testing.assert_array_equal(token_mask(mask), expected)


def test_fill_keeps_known_codes_and_changes_masked_ones(bundle, picture):
    codes = encode_pixels(bundle, np.ascontiguousarray(picture[:64, :80]))  # 4x5 tokens: two windows
    masked = torch.zeros_like(codes, dtype=torch.bool)
    masked[1:3, 1:4] = True
    filled = fill_codes(bundle, codes.masked_fill(masked, MASKED), prompt="a table", guidance_scale=1.5, steps=4,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(filled[~masked], codes[~masked])
    assert bool((filled[masked] >= 0).all()) and not torch.equal(filled[masked], codes[masked])


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_one_window_is_exactly_the_maskgit_call(bundle, picture, guidance):
    """A native-size grid with an empty negative prompt gives the tokens of sampling.generate_image_codes."""
    codes = encode_pixels(bundle, np.ascontiguousarray(picture[:64, :64]))
    codes[1:3, :] = MASKED
    ours = fill_codes(bundle, codes, prompt="a lake", guidance_scale=guidance, steps=5, temperature=2.0,
                      generator=torch.Generator().manual_seed(7))
    ids = bundle.text_ids(["a lake"])
    theirs = generate_image_codes(bundle.model, ids, codes[None], guidance_scale=guidance, steps=5, temperature=2.0,
                                  generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(ours, theirs)


def test_negative_prompt_replaces_the_empty_unconditional_text(picture, hole, folder):
    plain = inpaint(picture, hole, folder, guidance_scale=3)
    negative = inpaint(picture, hole, folder, guidance_scale=3, negative_prompt="blurry")
    assert not np.array_equal(plain.image, negative.image)
    assert "Negative prompt: blurry" in negative.parameters


# -- windows and offset ----------------------------------------------------------------------------


@pytest.mark.parametrize("offset, advance", [(-1, 1), (0, 2), (1, 3)])
def test_windows_advance_half_a_window_plus_offset_from_the_known_side(offset, advance):
    todo = np.zeros((4, 16), bool)
    todo[:, :12] = True  # unknown on the left, 4 known columns on the right (n = 4)
    order = plan_windows(todo, 4, window_stride(4, offset))
    xs = [x for _, x in order]
    assert xs[0] == 12 - advance  # the first window overlaps n/2 - offset known columns
    assert all(a - b == advance for a, b in zip(xs, xs[1:-1]))  # then advances n/2 + offset (the last is clamped)
    assert xs[-1] == 0 and all(y == 0 for y, _ in order)


def test_windows_cover_an_l_shaped_area_most_known_first():
    todo = np.zeros((8, 8), bool)
    todo[:3, :] = True  # new rows on top ...
    todo[:, :3] = True  # ... and columns on the left
    order = plan_windows(todo, 4, window_stride(4, 0))
    covered = np.zeros_like(todo)
    for y, x in order:
        covered[y : y + 4, x : x + 4] = True
    assert covered[todo].all()
    # Most context first: (2, 4) and (4, 2) each have 4 unknown tokens of 16, the least; raster order breaks the tie.
    assert order[0] == (2, 4)


def test_offset_outside_the_window_is_one_clear_error():
    with pytest.raises(InputError, match=r"offset 2 is outside \[-1, 1\] for the model's 4x4-token window"):
        window_stride(4, 2)


# -- engine contract -------------------------------------------------------------------------------


def test_engine_declares_its_geometry(folder):
    engine = get_engine("unified")
    assert isinstance(engine, UnifiedEngine)
    assert engine.pad_multiple == 16 and engine.uses_prompt and not engine.needs_context
    assert engine.preferred_size(Generation(model=str(folder)), UnifiedOptions()) == 64  # sqrt(16 tokens) x 16
    assert DEFAULT_MODEL == bundle_module.DEFAULT_MODEL


def test_only_masked_area_works_at_the_native_size(picture, hole, folder):
    result = inpaint(picture, hole, folder, area="masked", padding=4)
    assert result.image.shape == picture.shape
    np.testing.assert_array_equal(result.image[~hole], picture[~hole])


@pytest.mark.parametrize("setting, flag", [({"scheduler": "euler"}, "--scheduler"), ({"strength": 0.5}, "--strength"),
                                           ({"lora": ["x.safetensors"]}, "--lora")])
def test_diffusion_only_settings_are_refused(picture, hole, folder, setting, flag):
    with pytest.raises(InputError, match=f"{flag} .*does not apply to the unified engine"):
        inpaint(picture, hole, folder, **setting)


def test_bad_options_are_one_line(picture, hole, folder):
    with pytest.raises(InputError, match="unknown mask schedule 'cos'"):
        inpaint(picture, hole, folder, options={"schedule": "cos"})
    with pytest.raises(InputError, match="option nope"):
        inpaint(picture, hole, folder, options={"nope": 1})


def test_schedule_and_temperature_options_change_the_decoding(folder):
    # A whole native grid: with only a few masked tokens, every schedule re-masks "all but one" each step.
    base = generate(folder, steps=4, guidance_scale=0)
    linear = generate(folder, steps=4, guidance_scale=0, options={"schedule": "linear"})
    assert not np.array_equal(base.image, linear.image) and "Engine schedule: linear" in linear.parameters
    assert not np.array_equal(base.image, generate(folder, steps=4, guidance_scale=0, options={"temperature": 0}).image)


def test_missing_model_is_one_sentence_and_fast(picture, hole, tmp_path):
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as info:
        inpaint(picture, hole, tmp_path / "no-such-model")
    assert time.perf_counter() - started < 5
    assert "\n" not in str(info.value) and "no-such-model" in str(info.value)


# -- generate --------------------------------------------------------------------------------------


def generate(folder, **params):
    params = {"engine": "unified", "model": str(folder), "prompt": "a lighthouse", "steps": 3, "seed": 1, **params}
    return canvaslab.generate(**params)


def test_generate_native_size_by_default_and_any_multiple_of_16(folder):
    native = generate(folder)
    assert native.image.shape == (64, 64, 3) and native.mask.all()
    assert native.recipe["request"]["model"] == str(folder) and native.recipe["request"]["width"] == 64
    assert generate(folder, width=96, height=64).image.shape == (64, 96, 3)  # two windows
    assert generate(folder, size=32).image.shape == (32, 32, 3)  # the centre of a native picture


def test_generate_same_seed_same_pixels_guidance_and_seed_change_them(folder):
    a, b = generate(folder, guidance_scale=1.5), generate(folder, guidance_scale=1.5)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, generate(folder, guidance_scale=4.0).image)
    assert not np.array_equal(a.image, generate(folder, guidance_scale=1.5, seed=2).image)


def test_generate_sizes_must_be_multiples_of_16(folder):
    with pytest.raises(InputError, match="width 72 must be a multiple of 16 for engine 'unified': try 64 or 80"):
        generate(folder, width=72, height=64)


def test_generate_default_model_is_recorded_per_engine():
    from canvaslab.tasks.generate import DEFAULT_MODELS

    assert DEFAULT_MODELS == {"diffusion": "sd15", "unified": "show-o"}


# -- CLI: rows, grid, recipe, replay, missing model -----------------------------------------------


def run_cli(*args):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_inpaint_rows_grid_and_replay_identically(tmp_path, picture, hole, folder):
    src, mask = write_png(tmp_path / "in.png", picture), write_png(tmp_path / "mask.png", hole)
    out, grid = tmp_path / "out.png", tmp_path / "grid.png"
    done = run_cli("inpaint", src, "--mask", mask, "--engine", "unified", "--model", folder, "--steps", 3,
                   "--guidance-scale", 1.5, "--seed", 5, "--prompt", "wood", "--rows", 2, "--grid", grid, "-o", out)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out-seed6.png").is_file()
    assert load_image(grid).size == (3 * 90 + 2 * 8, 2 * 70 + 8)  # original | mask | result, two seed rows
    meta = json.loads(run_cli("--json", "info", out).stdout)
    assert meta["recipe"]["request"]["engine"] == "unified" and meta["parameters"].startswith("wood\n")
    replay = run_cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.exit_code == 0, replay.output
    assert "identical pixels" in replay.output


def test_cli_generate_and_replay(tmp_path, folder):
    out = tmp_path / "gen.png"
    done = run_cli("generate", "--engine", "unified", "--model", folder, "--prompt", "a lighthouse", "--steps", 3,
                   "--width", 96, "--height", 64, "--seed", 2, "-o", out)
    assert done.exit_code == 0, done.output
    assert load_image(out).size == (96, 64)
    replay = run_cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.exit_code == 0, replay.output


def test_cli_missing_model_or_magvit_exits_3_in_one_line(tmp_path, picture, hole, folder):
    src, mask = write_png(tmp_path / "in.png", picture), write_png(tmp_path / "mask.png", hole)
    no_magvit = tmp_path / "no-magvit"
    shutil.copytree(folder, no_magvit, ignore=shutil.ignore_patterns("magvit"))
    for model, named in ((tmp_path / "missing", "missing"), (no_magvit, "showlab/magvitv2")):
        done = run_cli("inpaint", src, "--mask", mask, "--engine", "unified", "--model", model)
        assert done.exit_code == 3
        assert len(done.output.strip().splitlines()) == 1 and named in done.output and "Traceback" not in done.output
