"""Every output of the weight-free engines parses as A1111 infotext: in sd-parsers for real, and in a
reader of A1111's documented format (tests/infotext.py). Generative engines: tests/diffusion and
tests/unified, test_engine_choice_and_metadata.py."""

import pytest

import canvaslab
from infotext import check_output

CLASSICAL = ["patchmatch", "telea", "ns"]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
@pytest.mark.parametrize("engine", CLASSICAL)
def test_classical_inpaint_outputs_parse_as_a1111(tmp_path, photo, box_mask, engine, suffix):
    """Issue 10: sd-parsers did not recognise these (no Steps, no Sampler)."""
    result = canvaslab.inpaint(photo, box_mask, engine=engine, seed=7, feather=2, options={})
    settings = check_output(result.save(tmp_path / f"out{suffix}"), seed=7)
    assert settings["Sampler"] == engine and settings["Size"] == f"{photo.shape[1]}x{photo.shape[0]}"


@pytest.mark.parametrize("engine", CLASSICAL)
def test_classical_outpaint_outputs_parse_as_a1111(tmp_path, photo, engine):
    result = canvaslab.outpaint(photo[:40, :40], expand=0.25, direction="left,up", steps=2, engine=engine, seed=3)
    settings = check_output(result.save(tmp_path / "out.png"), seed=3)
    assert settings["Outpaint expand"] == "0.25 left+top" and settings["Outpaint steps"] == "2"

