"""The `lama` engine: every file layout through the public API and CLI, the engine contract, the hub-cache
default, the high-resolution strategies, one-line errors, and checkpoints that cannot run code."""

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
learned_files = learned_tiny.learned_files  # the session fixture, visible to this module's tests
from canvaslab.engines.learned import engine as learned  # noqa: E402
from canvaslab.errors import InputError, ModelNotAvailableError  # noqa: E402
from conftest import write_png  # noqa: E402


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache (TORCH_HOME), where IOPaint keeps big-lama.pt."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def test_every_layout_fills_the_hole_only_and_identically(photo, box_mask, learned_files):
    folder = learned_files["lama-folder"]
    results = {
        "folder": canvaslab.inpaint(photo, box_mask, engine="lama", model=str(folder), seed=1).image,
        "ckpt": canvaslab.inpaint(photo, box_mask, engine="lama", model=str(folder / "models" / "best.ckpt"), seed=2).image,
        "torchscript": canvaslab.inpaint(photo, box_mask, engine="lama", model=str(learned_files["lama-torchscript"])).image,
    }
    for image in results.values():
        assert image.shape == photo.shape and image.dtype == np.uint8
        np.testing.assert_array_equal(image[~box_mask], photo[~box_mask])
        assert np.abs(image[box_mask].astype(int) - photo[box_mask]).mean() > 5
    # one network, whatever the file (and no seed dependence: a single forward pass)
    np.testing.assert_array_equal(results["folder"], results["ckpt"])
    np.testing.assert_array_equal(results["folder"], results["torchscript"])


def test_found_in_iopaints_cache_and_named_in_the_parameters(photo, box_mask, learned_files, hub):
    with pytest.raises(ModelNotAvailableError) as missing:
        canvaslab.inpaint(photo, box_mask, engine="lama")
    message = str(missing.value)
    assert "\n" not in message and str(hub) in message and "--model" in message and "big-lama.pt" in message
    shutil.copy(learned_files["lama-torchscript"], hub / "big-lama.pt")
    by_default = canvaslab.inpaint(photo, box_mask, engine="lama", seed=3)
    by_name = canvaslab.inpaint(photo, box_mask, engine="lama", model="big-lama", seed=3)
    np.testing.assert_array_equal(by_default.image, by_name.image)
    assert "Sampler: lama" in by_default.parameters and "Model: big-lama" in by_default.parameters


def test_refuses_generative_fields_and_bad_options(photo, box_mask, learned_files):
    model = str(learned_files["lama-folder"])
    with pytest.raises(InputError, match="--prompt does not apply to the lama engine"):
        canvaslab.inpaint(photo, box_mask, engine="lama", model=model, prompt="a cat")
    with pytest.raises(InputError, match="--steps does not apply"):
        canvaslab.inpaint(photo, box_mask, engine="lama", model=model, steps=4)
    with pytest.raises(InputError, match="strategy"):
        canvaslab.inpaint(photo, box_mask, engine="lama", model=model, options={"strategy": "tiles"})
    with pytest.raises(ModelNotAvailableError, match="neither a file nor a known lama model"):
        canvaslab.inpaint(photo, box_mask, engine="lama", model="no-such-model")


@pytest.mark.slow  # subprocesses / the diffusion stack: several seconds
def test_cli_inpaints_from_the_release_folder(tmp_path, photo, box_mask, learned_files):
    image, mask = write_png(tmp_path / "in.png", photo), write_png(tmp_path / "m.png", box_mask)
    out = tmp_path / "out.png"
    run = subprocess.run([sys.executable, "-m", "canvaslab", "inpaint", str(image), "--mask", str(mask), "--engine", "lama",
                          "--model", str(learned_files["lama-folder"]), "-o", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    expected = canvaslab.inpaint(photo, box_mask, engine="lama", model=str(learned_files["lama-folder"])).image
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), expected)
    # IOPaint's TorchScript file of the same network, named on the command line: the same fill.
    traced = subprocess.run([sys.executable, "-m", "canvaslab", "inpaint", str(image), "--mask", str(mask), "--engine",
                             "lama", "--model", str(learned_files["lama-torchscript"]), "-o", str(tmp_path / "t.png")],
                            capture_output=True, text=True, timeout=300)
    assert traced.returncode == 0, traced.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "t.png").convert("RGB")), expected)
    missing = subprocess.run([sys.executable, "-m", "canvaslab", "inpaint", str(image), "--mask", str(mask), "--engine",
                              "lama", "--model", str(tmp_path / "nowhere.ckpt")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 3 and "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


class Payload:
    """What a hostile checkpoint could hold: unpickling it would copy a file to `witness`."""

    def __init__(self, witness: str) -> None:
        self.witness = witness

    def __reduce__(self):
        return (shutil.copy, (__file__, self.witness))


def test_checkpoint_pickles_cannot_run_code(tmp_path, photo, box_mask):
    witness = tmp_path / "ran"
    folder = learned_tiny.save_lama_release(tmp_path / "lama", learned_tiny.lama_generator(5),
                                            extra={"hyper_parameters": Payload(str(witness)), "callbacks": {Payload: {"best": 1.0}}})
    result = canvaslab.inpaint(photo, box_mask, engine="lama", model=str(folder))
    assert not witness.exists()
    np.testing.assert_array_equal(result.image[~box_mask], photo[~box_mask])


def test_config_and_weights_that_do_not_fit_are_one_line_errors(tmp_path, photo, box_mask):
    folder = learned_tiny.save_lama_release(tmp_path / "lama", learned_tiny.lama_generator(5))
    config = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(config.replace("n_blocks: 1", "n_blocks: 2"))
    with pytest.raises(InputError, match=r"do not fit .*missing model\.6\.conv1"):
        canvaslab.inpaint(photo, box_mask, engine="lama", model=str(folder))
    (folder / "config.yaml").write_text(config.replace("kind: ffc_resnet", "kind: pix2pixhd_global"))
    with pytest.raises(InputError, match="generator kind 'pix2pixhd_global' is not supported"):
        canvaslab.inpaint(photo, box_mask, engine="lama", model=str(folder))
    (folder / "config.yaml").unlink()
    with pytest.raises(ModelNotAvailableError, match="no config.yaml"):
        canvaslab.inpaint(photo, box_mask, engine="lama", model=str(folder))


# -- strategies (geometry only: a stand-in network records what it is given) -----------------------

class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def __call__(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        self.calls.append((hole.shape, int(hole.sum())))
        return np.full_like(rgb, 7)


def test_crop_boxes_keep_the_margin_move_inside_at_borders_and_merge_overlaps():
    mask = np.zeros((300, 400), bool)
    mask[100:110, 100:120] = True  # margin 20 -> (80, 80, 130, 140)
    mask[5:10, 390:398] = True  # at the top-right corner: the crop keeps its size, moved inside
    mask[120:125, 150:160] = True  # its crop overlaps the first one's: merged
    boxes = learned.crop_boxes(mask, 20)
    assert boxes == [(0, 352, 45, 400), (80, 80, 145, 180)]


def test_crop_strategy_fills_each_group_in_its_crop_and_leaves_the_rest():
    image = np.zeros((300, 400, 3), np.uint8)
    mask = np.zeros((300, 400), bool)
    mask[100:110, 100:120] = True
    mask[250:260, 30:40] = True
    run = Recorder()
    out = learned.fill_in_crops(image, mask, 16, run)
    assert sorted(run.calls) == [((42, 42), 100), ((42, 52), 200)]
    assert (out[mask] == 7).all() and (out[~mask] == 0).all()


def test_resize_strategy_never_loses_a_thin_stroke():
    image = np.zeros((1000, 1500, 3), np.uint8)
    mask = np.zeros((1000, 1500), bool)
    mask[500, 100:1400] = True  # one pixel high: a plain nearest-neighbour downscale could drop it
    seen = []

    def run(rgb, hole):
        seen.append(hole)
        return np.where(hole[..., None], 200, rgb).astype(np.uint8)

    out = learned.fill_resized(image, mask, 600, run)
    assert seen[0].shape == (400, 600) and seen[0].any(axis=1).sum() >= 1
    assert out.shape == image.shape and out[mask].min() > 0  # every masked pixel got filled content


def test_lama_crop_strategy_runs_only_above_the_trigger(photo, box_mask, learned_files, monkeypatch):
    calls = []
    original = learned.lama_forward
    monkeypatch.setattr(learned, "lama_forward", lambda net, rgb, hole: calls.append(hole.shape) or original(net, rgb, hole))
    model = str(learned_files["lama-folder"])
    canvaslab.inpaint(photo, box_mask, engine="lama", model=model)
    canvaslab.inpaint(photo, box_mask, engine="lama", model=model, options={"crop_trigger": 64, "crop_margin": 8})
    canvaslab.inpaint(photo, box_mask, engine="lama", model=model, options={"strategy": "resize", "resize_limit": 75})
    assert calls == [(100, 150), (46, 56), (50, 75)]


def test_models_list_shows_the_eraser_files_with_licences(learned_files, hub):
    import json

    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    shutil.copy(learned_files["lama-torchscript"], hub / "big-lama.pt")
    listed = CliRunner().invoke(app, ["--json", "models", "list", "--cache-dir", str(hub.parent / "hf")])
    assert listed.exit_code == 0, listed.output
    rows = {row["alias"]: row for row in json.loads(listed.stdout) if row["kind"] == "eraser"}
    assert rows["big-lama"]["cached"] is True and rows["big-lama"]["licence"] == "Apache-2.0"
    assert rows["migan"]["cached"] is False and rows["migan"]["licence"] == "MIT"
    assert rows["migan"]["file"] == "migan_traced.pt" and rows["migan"]["folder"] == str(hub)
