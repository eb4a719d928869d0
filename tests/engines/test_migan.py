"""The `migan` engine: the released state dict, IOPaint's TorchScript trace and both ONNX layouts through the
public API and CLI, the engine contract, strategies for pictures larger than the model, one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

for _module in ("torch", "yaml"):
    pytest.importorskip(_module)

import canvaslab  # noqa: E402
import learned_tiny  # noqa: E402
learned_files, onnx_files = learned_tiny.learned_files, learned_tiny.onnx_files  # session fixtures, visible here
needs_onnxruntime = learned_tiny.needs_onnxruntime
from canvaslab.engines.learned import engine as learned  # noqa: E402
from canvaslab.errors import InputError, ModelNotAvailableError  # noqa: E402
from conftest import write_png  # noqa: E402

SIZE = learned_tiny.MIGAN_RESOLUTION  # 64: the tiny model's square


@pytest.fixture()
def small(photo, box_mask):
    """A 60x40 picture (fits the tiny model's 64 px square) with a hole."""
    rgb = np.ascontiguousarray(photo[30:70, 40:100])
    return rgb, np.ascontiguousarray(box_mask[30:70, 40:100])


@needs_onnxruntime
def test_state_dict_torchscript_and_onnx_give_the_same_fill(small, learned_files, onnx_files):
    rgb, hole = small
    files = {**learned_files, **onnx_files}
    out = {kind: canvaslab.inpaint(rgb, hole, engine="migan", model=str(files[kind]), seed=seed).image
           for seed, kind in enumerate(("migan-state-dict", "migan-torchscript", "migan-onnx"))}
    for image in out.values():
        assert image.shape == rgb.shape
        np.testing.assert_array_equal(image[~hole], rgb[~hole])
        assert np.abs(image[hole].astype(int) - rgb[hole]).mean() > 5
    np.testing.assert_array_equal(out["migan-state-dict"], out["migan-torchscript"])
    # onnxruntime's kernels round differently in the last bits: at most one level, almost everywhere equal
    diff = np.abs(out["migan-state-dict"].astype(int) - out["migan-onnx"])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    again = canvaslab.inpaint(rgb, hole, engine="migan", model=str(files["migan-onnx"]), seed=9).image
    np.testing.assert_array_equal(again, out["migan-onnx"])


@needs_onnxruntime
def test_onnx_pipeline_gets_the_whole_picture_with_255_as_known(photo, box_mask, onnx_files):
    result = canvaslab.inpaint(photo, box_mask, engine="migan", model=str(onnx_files["migan-onnx-pipeline"]))
    np.testing.assert_array_equal(result.image[~box_mask], photo[~box_mask])
    assert np.abs(result.image[box_mask].astype(int) - photo[box_mask]).mean() > 5
    # the pipeline blends by its mask: had we passed 255 for the hole, it would have returned the hole unchanged
    with pytest.raises(InputError, match="crops around the mask itself"):
        canvaslab.inpaint(photo, box_mask, engine="migan", model=str(onnx_files["migan-onnx-pipeline"]),
                          options={"strategy": "resize"})


def test_pictures_larger_than_the_model(photo, box_mask, learned_files, monkeypatch):
    model = str(learned_files["migan-state-dict"])
    sizes = []
    original = learned.migan_forward
    monkeypatch.setattr(learned, "migan_forward", lambda net, rgb, hole: sizes.append(hole.shape) or original(net, rgb, hole))
    cropped = canvaslab.inpaint(photo, box_mask, engine="migan", model=model, options={"crop_margin": 4}).image
    resized = canvaslab.inpaint(photo, box_mask, engine="migan", model=model, options={"strategy": "resize"}).image
    # crop: the 40x30 hole + 4 px each side, 48x38, fits the 64 px square as it is; resize: 150x100 -> 64x43
    assert sizes == [(38, 48), (43, 64)]
    for image in (cropped, resized):
        np.testing.assert_array_equal(image[~box_mask], photo[~box_mask])
    with pytest.raises(InputError, match="at most 64 px"):
        canvaslab.inpaint(photo, box_mask, engine="migan", model=model, options={"strategy": "original"})


def test_wrong_files_and_missing_runtime_are_one_line_errors(tmp_path, small, learned_files, monkeypatch):
    rgb, hole = small
    with pytest.raises(InputError, match="LaMa checkpoint, not an MI-GAN model"):
        canvaslab.inpaint(rgb, hole, engine="migan", model=str(learned_files["lama-folder"] / "models" / "best.ckpt"))
    with pytest.raises(InputError, match="not of MI-GAN's generator"):
        canvaslab.inpaint(rgb, hole, engine="migan", model=str(learned_files["lama-torchscript"]))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a PyTorch file"):
        canvaslab.inpaint(rgb, hole, engine="migan", model=str(junk))


def test_an_onnx_file_without_onnxruntime_is_one_line(tmp_path, small, onnx_files, monkeypatch):
    rgb, hole = small
    copy = tmp_path / "copy.onnx"  # another path: not in the loaded-model cache
    shutil.copy(onnx_files["migan-onnx"], copy)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelNotAvailableError, match=r"needs onnxruntime: pip install 'canvaslab\[onnx\]'"):
        canvaslab.inpaint(rgb, hole, engine="migan", model=str(copy))


@needs_onnxruntime
@pytest.mark.slow  # subprocesses / the diffusion stack: several seconds
def test_cli_from_iopaints_cache_and_from_an_onnx_file(tmp_path, small, learned_files, onnx_files):
    rgb, hole = small
    image, mask = write_png(tmp_path / "in.png", rgb), write_png(tmp_path / "m.png", hole)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(learned_files["migan-torchscript"], hub / "migan_traced.pt")
    env = {**__import__("os").environ, "TORCH_HOME": str(tmp_path / "torch")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "canvaslab", "inpaint", str(image), "--mask", str(mask), "--engine",
                               "migan", *map(str, args)], capture_output=True, text=True, timeout=300, env=env)

    from PIL import Image

    expected = canvaslab.inpaint(rgb, hole, engine="migan", model=str(learned_files["migan-state-dict"])).image
    cached = cli("-o", tmp_path / "a.png")
    assert cached.returncode == 0, cached.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png").convert("RGB")), expected)
    onnx = cli("--model", onnx_files["migan-onnx"], "-o", tmp_path / "b.png")
    assert onnx.returncode == 0, onnx.stderr
    released = cli("--model", learned_files["migan-state-dict"], "-o", tmp_path / "c.png")  # MI-GAN's own .pt layout
    assert released.returncode == 0, released.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png").convert("RGB")), expected)
    (hub / "migan_traced.pt").unlink()
    missing = cli()
    assert missing.returncode == 3 and "Traceback" not in missing.stderr and str(hub) in missing.stderr
