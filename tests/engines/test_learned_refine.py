"""--masked-content lama|migan: a learned eraser's fill as the start of a diffusion run (Krita's LaMa pre-fill)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: no retries for tens of seconds

import numpy as np  # noqa: E402
import pytest  # noqa: E402

for _module in ("torch", "diffusers", "transformers", "yaml"):
    pytest.importorskip(_module)

import canvaslab  # noqa: E402
from canvaslab.engines.diffusion import engine as diffusion_engine  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402
import learned_tiny  # noqa: E402
learned_files, onnx_files = learned_tiny.learned_files, learned_tiny.onnx_files  # session fixtures, visible here
needs_onnxruntime = learned_tiny.needs_onnxruntime


@pytest.fixture(scope="module")
def sd_inpaint(tmp_path_factory):
    from diffusion import tiny

    return tiny.save_pipeline_folder("sd-inpaint", tmp_path_factory.mktemp("sd") / "sd-inpaint")


@pytest.fixture()
def small(photo):
    image = np.ascontiguousarray(photo[20:80, 40:116])  # 76x60: aligned to 80x64 by symmetric padding
    mask = np.zeros(image.shape[:2], bool)
    mask[18:42, 20:52] = True
    return image, mask


@pytest.mark.slow  # subprocesses / the diffusion stack: several seconds
def test_the_diffusion_run_starts_from_the_erasers_fill(small, sd_inpaint, learned_files, monkeypatch):
    image, mask = small
    lama = str(learned_files["lama-folder"])
    starts = []
    original_run = diffusion_engine.run_pipeline

    def spy(pipe, info, generation, task, arguments, **kwargs):
        starts.append(np.asarray(arguments["image"])[: image.shape[0], : image.shape[1]])
        return original_run(pipe, info, generation, task, arguments, **kwargs)

    monkeypatch.setattr(diffusion_engine, "run_pipeline", spy)
    params = dict(engine="diffusion", model=str(sd_inpaint), steps=2, seed=1, strength=0.6)
    refined = canvaslab.inpaint(image, mask, masked_content="lama", options={"fill_model": lama}, **params)
    again = canvaslab.inpaint(image, mask, masked_content="lama", options={"fill_model": lama}, **params)
    plain = canvaslab.inpaint(image, mask, **params)
    erased = canvaslab.inpaint(image, mask, engine="lama", model=lama).image
    np.testing.assert_array_equal(starts[0][mask], erased[mask])  # the pipeline's start is LaMa's fill
    np.testing.assert_array_equal(starts[0][~mask], image[~mask])
    np.testing.assert_array_equal(starts[2], image)  # masked content "original": the input itself
    np.testing.assert_array_equal(refined.image, again.image)
    np.testing.assert_array_equal(refined.image[~mask], image[~mask])
    assert not np.array_equal(refined.image[mask], plain.image[mask])
    assert "Masked content: lama" in refined.parameters and "Engine fill_model: big-lama" in refined.parameters
    with pytest.raises(InputError, match="fill_model names the model of --masked-content lama or migan"):
        canvaslab.inpaint(image, mask, options={"fill_model": lama}, **params)


@needs_onnxruntime
def test_migan_prefill_from_an_onnx_file(small, sd_inpaint, onnx_files):
    image, mask = small
    params = dict(engine="diffusion", model=str(sd_inpaint), steps=2, seed=1, strength=0.5, masked_content="migan")
    result = canvaslab.inpaint(image, mask, options={"fill_model": str(onnx_files["migan-onnx"])}, **params)
    np.testing.assert_array_equal(result.image[~mask], image[~mask])
    assert "Masked content: migan" in result.parameters
