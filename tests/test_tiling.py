"""--tiling on inpaint / outpaint / generate: who reads it, what it refuses, what the output records, and
the patchmatch engine's wrap-around through the tasks (the diffusion side: tests/diffusion/test_tiling.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import canvaslab
from canvaslab.core.image import load_image
from canvaslab.core.seams import seam_report
from canvaslab.errors import InputError
from canvaslab.tasks.requests import ENGINE_FIELDS, EditRequest, GenerateRequest, InpaintRequest, OutpaintRequest, Tiling
from conftest import write_png


@pytest.fixture(scope="module")
def edge_hole(photo):
    """A hole over the left and right edges of the photo: what wraps around is on the other side."""
    mask = np.zeros(photo.shape[:2], bool)
    mask[:, :10] = mask[:, -10:] = True
    return mask


def test_patchmatch_and_diffusion_read_tiling_the_others_do_not():
    readers = sorted(engine for engine, reads in ENGINE_FIELDS.items() if "tiling" in reads)
    assert readers == ["diffusion", "patchmatch"]


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        (InpaintRequest, {"engine": "telea"}, "--tiling does not apply to the telea engine, which spreads the surrounding "
         "colours inwards: leave it out, or choose --engine patchmatch or diffusion"),
        (OutpaintRequest, {"engine": "ns"}, "--tiling does not apply to the ns engine"),
        (InpaintRequest, {"engine": "unified"}, "--tiling does not apply to the unified engine, which runs Show-o's MaskGIT"),
        (GenerateRequest, {"engine": "unified"}, "--tiling does not apply to the unified engine"),
        (EditRequest, {"instruction": "make it winter"}, "--tiling does not apply to edit; leave it at its default (none)"),
        (InpaintRequest, {"area": "masked"}, "--tiling wraps the whole picture around; --area masked works on a crop"),
        (OutpaintRequest, {"tile": 256}, "--tiling wraps the whole canvas around, which window-by-window filling (--tile) "
         "cannot: leave --tile out"),
        (InpaintRequest, {"tiling": "diagonal"}, "invalid tiling='diagonal'"),
    ],
)
def test_tiling_where_it_cannot_work_is_refused_in_one_line(kind, values, message):
    from canvaslab.tasks.requests import build_request

    with pytest.raises(InputError) as info:
        build_request(kind, {"tiling": "both", **values})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_tile_zero_and_the_default_are_fine_and_tiling_turns_automatic_windows_off():
    from canvaslab.engines import get_engine
    from canvaslab.tasks.tiles import tile_size

    assert InpaintRequest(tiling="both", tile=0).tiling == Tiling.both
    engine = get_engine("diffusion")
    big = (4096, 4096)  # over twice any model's native size: windows unless the canvas must wrap
    request = InpaintRequest(engine="diffusion", model="sd15-inpaint", tiling="x")
    assert tile_size(request, engine, engine.parse_options({}), big) is None


def test_a_padded_alignment_would_wrap_the_padding_and_is_refused(photo, edge_hole):
    # patchmatch works at any size; asking for a multiple of 8 makes 150x100 padded to 152x104
    with pytest.raises(InputError, match="use --align resize, or a size that is a multiple of 8"):
        canvaslab.inpaint(photo, edge_hole, tiling="both", multiple=8, seed=0)
    result = canvaslab.inpaint(photo, edge_hole, tiling="x", multiple=8, align="resize", seed=0)
    np.testing.assert_array_equal(result.image[~edge_hole], photo[~edge_hole])


def test_patchmatch_inpaint_with_tiling_joins_the_edges_and_records_it(photo, edge_hole):
    tiled = canvaslab.inpaint(photo, edge_hole, tiling="x", seed=0)
    plain = canvaslab.inpaint(photo, edge_hole, seed=0)
    np.testing.assert_array_equal(tiled.image[~edge_hole], photo[~edge_hole])
    seam_tiled, seam_plain = (seam_report(r.image, "x").axes["x"] for r in (tiled, plain))
    # The fill meets itself in the middle of the hole, where the seam is: a little above the typical line
    # (ratio 1.5-1.9 over seeds 0-3) but no outlier; without wrap-around the two edges never meet (ratio 7.3).
    assert seam_tiled.seamless, seam_tiled
    assert not seam_plain.seamless and seam_plain.ratio > 3 * seam_tiled.ratio, (seam_plain, seam_tiled)
    assert tiled.recipe["request"]["tiling"] == "x" and "Tiling: x" in tiled.parameters
    assert "Tiling" not in plain.parameters and plain.recipe["request"]["tiling"] == "none"
    both = canvaslab.inpaint(photo, edge_hole, tiling="both", seed=0)
    assert "Tiling: True" in both.parameters  # as A1111 writes it


def test_outpaint_with_tiling_makes_the_new_side_run_into_the_old_one(photo):
    crop = np.ascontiguousarray(photo[:, :110])
    tiled = canvaslab.outpaint(crop, right=40, tiling="x", seed=1)
    plain = canvaslab.outpaint(crop, right=40, seed=1)
    np.testing.assert_array_equal(tiled.image[:, :100], crop[:, :100])  # the input, left of the overlap band
    seam_tiled, seam_plain = (seam_report(r.image, "x").axes["x"] for r in (tiled, plain))
    assert seam_tiled.seamless and not seam_plain.seamless, (seam_tiled, seam_plain)


def test_cli_tiling_replays_identically_and_telea_is_refused(tmp_path, photo, edge_hole):
    image, mask = write_png(tmp_path / "in.png", photo), write_png(tmp_path / "mask.png", edge_hole)
    out = tmp_path / "out.png"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "canvaslab"]
    run = subprocess.run(cli + ["inpaint", str(image), "--mask", str(mask), "--tiling", "both", "--seed", "2", "-o", str(out)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert load_image(out).rgb.shape == photo.shape
    replay = subprocess.run(cli + ["replay", str(out), "--check"], capture_output=True, text=True, env=env)
    assert replay.returncode == 0 and "identical pixels" in replay.stderr, replay.stderr
    refused = subprocess.run(cli + ["inpaint", str(image), "--mask", str(mask), "--engine", "telea", "--tiling", "x"],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: --tiling does not apply to the telea engine, which spreads the surrounding colours inwards: leave it "
        "out, or choose --engine patchmatch or diffusion"
    ]
