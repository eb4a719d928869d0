"""ControlNet (engines/diffusion/control.py, preprocessors.py, tasks/conditioning.py) on tiny offline models.

ControlNets are built from the tiny UNets with their zero convolutions seeded (tiny_control.py), saved
as diffusers folders and loaded back through canvaslab's loader. What is checked: weight 0 is exactly
the output without ControlNet, the output moves further from it as the weight rises, unmasked pixels
stay bit-identical, units combine (a weight-0 second unit changes nothing, a real one does), a control
image of another size is fitted as documented, the control image follows the input image through every
geometry (crops, windows, working size, alignment), seeds reproduce, the recipe and A1111 text record
the units, replay reproduces, and wrong input is one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

import canvaslab  # noqa: E402
from canvaslab.engines.base import ControlUnit, Engine  # noqa: E402
from canvaslab.engines.diffusion import preprocessors  # noqa: E402
from canvaslab.errors import CanvaslabError, ModelNotAvailableError  # noqa: E402
from canvaslab.tasks.conditioning import fit  # noqa: E402
from conftest import write_png  # noqa: E402

from . import tiny, tiny_control  # noqa: E402

STEPS = 3


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Two different SD 1.x ControlNets, an SDXL one and an SDXL ControlNet Union model (folders)."""
    root = tmp_path_factory.mktemp("controlnets")
    return {
        "sd": tiny_control.save_controlnet(tiny.build_unet(4), root / "cn-sd"),
        "sd-2": tiny_control.save_controlnet(tiny.build_unet(4), root / "cn-sd-2", seed=7),
        "sdxl": tiny_control.save_controlnet(tiny.build_unet(4, family="sdxl"), root / "cn-sdxl"),
        "union": tiny_control.save_controlnet(tiny.build_unet(4, family="sdxl"), root / "cn-union", union=True),
    }


@pytest.fixture(scope="module")
def picture(photo):
    return np.ascontiguousarray(photo[20:84, 40:120])  # 64x80


@pytest.fixture(scope="module")
def hole(picture):
    mask = np.zeros(picture.shape[:2], bool)
    mask[16:48, 20:60] = True
    return mask


def run(picture, hole, folder, **params):
    params = {"model": str(folder), "steps": STEPS, "seed": 1, "prompt": "a cat", **params}
    return canvaslab.inpaint(picture, hole, **params).image


def distance(a, b):
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


# -- the guarantees ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd-txt2img", "sd-inpaint"])
def test_weight_zero_is_exactly_no_control_and_weight_moves_the_output(picture, hole, tiny_folders, nets, kind):
    plain = run(picture, hole, tiny_folders[kind])
    assert np.array_equal(run(picture, hole, tiny_folders[kind], control=[f"{nets['sd']}:0,preprocessor=canny"]), plain)
    distances = [distance(run(picture, hole, tiny_folders[kind], control=[f"{nets['sd']}:{w},preprocessor=canny"]), plain)
                 for w in (0.25, 1.0, 2.0)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_unmasked_pixels_stay_identical_and_seeds_reproduce(picture, hole, tiny_folders, nets):
    params = dict(control=[f"{nets['sd']},preprocessor=scribble"], feather=0)
    first = run(picture, hole, tiny_folders["sd-txt2img"], **params)
    assert np.array_equal(first[~hole], picture[~hole])
    assert not np.array_equal(first[hole], picture[hole])
    assert np.array_equal(run(picture, hole, tiny_folders["sd-txt2img"], **params), first)


def test_units_combine(picture, hole, tiny_folders, nets):
    folder = tiny_folders["sd-txt2img"]
    one = run(picture, hole, folder, control=[f"{nets['sd']},preprocessor=canny"])
    other = run(picture, hole, folder, control=[f"{nets['sd-2']},preprocessor=blur"])
    silent_second = run(picture, hole, folder, control=[f"{nets['sd']},preprocessor=canny", f"{nets['sd-2']}:0,preprocessor=blur"])
    both = run(picture, hole, folder, control=[f"{nets['sd']},preprocessor=canny", f"{nets['sd-2']},preprocessor=blur"])
    # Multi-ControlNet adds the residuals: a weight-0 unit adds exactly nothing
    assert np.array_equal(silent_second, one)
    assert not np.array_equal(both, one) and not np.array_equal(both, other)


def test_steps_and_modes_change_what_the_controlnet_does(picture, hole, tiny_folders, nets):
    folder = tiny_folders["sd-txt2img"]
    unit = f"{nets['sd']},preprocessor=canny"
    balanced = run(picture, hole, folder, control=[unit], guidance_scale=5)
    late = run(picture, hole, folder, control=[unit + ",start=0.5"], guidance_scale=5)
    prompt_first = run(picture, hole, folder, control=[unit + ",mode=prompt"], guidance_scale=5)
    control_first = run(picture, hole, folder, control=[unit + ",mode=control"], guidance_scale=5)
    outputs = [balanced, late, prompt_first, control_first]
    assert all(not np.array_equal(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1:])
    # "My prompt is more important" scales the residuals down: closer to no ControlNet than balanced
    plain = run(picture, hole, folder, guidance_scale=5)
    assert distance(prompt_first, plain) < distance(balanced, plain)


def test_the_inpaint_controlnet_gets_the_masked_image_marked_minus_one(picture, hole, tiny_folders, nets):
    from canvaslab.engines.diffusion.control import control_map
    from canvaslab.engines.diffusion.families import family

    marked = control_map(ControlUnit(model="x", preprocessor="inpaint"), picture, hole, family("sd1"), union=False, seed=0)
    values = marked[0].permute(1, 2, 0).numpy()
    assert (values[hole] == -1).all()
    assert np.allclose(values[~hole], picture[~hole] / 255.0)
    out = run(picture, hole, tiny_folders["sd-inpaint"], control=[f"{nets['sd']},preprocessor=inpaint"])
    assert np.array_equal(out[~hole], picture[~hole])


# -- control images and geometry ----------------------------------------------------------------


def test_a_control_image_of_another_size_is_fitted_as_documented(picture, hole, tiny_folders, nets, tmp_path):
    wide = np.random.default_rng(3).integers(0, 256, (40, 160, 3), dtype=np.uint8)
    # "crop": scaled to cover 80x64 (by 64/40 = 1.6 -> 256x64), then the centre 80 columns
    from PIL import Image

    covered = np.asarray(Image.fromarray(wide).resize((256, 64), Image.Resampling.LANCZOS))[:, 88:168]
    assert np.array_equal(fit(wide, (80, 64), "crop"), covered)
    stretched = np.asarray(Image.fromarray(wide).resize((80, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(fit(wide, (80, 64), "resize"), stretched)
    inner = np.asarray(Image.fromarray(wide).resize((80, 20), Image.Resampling.LANCZOS))
    filled = fit(wide, (80, 64), "fill")
    assert np.array_equal(filled[22:42], inner) and (filled[:22] == inner[0]).all()
    # through the task: the big image gives what its fitted version gives
    big, exact = write_png(tmp_path / "big.png", wide), write_png(tmp_path / "exact.png", covered)
    folder = tiny_folders["sd-txt2img"]
    assert np.array_equal(run(picture, hole, folder, control=[f"{nets['sd']},image={big}"]),
                          run(picture, hole, folder, control=[f"{nets['sd']},image={exact}"]))
    assert not np.array_equal(run(picture, hole, folder, control=[f"{nets['sd']},image={big},resize=fill"]),
                              run(picture, hole, folder, control=[f"{nets['sd']},image={exact}"]))


class Recorder(Engine):
    """Records what it is given: with the input image as the control image, the two must stay equal."""

    name = "diffusion"
    pad_multiple = 16
    needs_context = False
    uses_prompt = True
    seen: list = []

    def preferred_size(self, generation, options):
        return 48

    def inpaint(self, image, mask, *, seed, options, generation):
        Recorder.seen.append((image.copy(), generation.control[0].image.copy()))
        return image


@pytest.mark.parametrize("geometry", [
    dict(), dict(area="masked", padding=4), dict(size=96), dict(tile=48), dict(align="resize"),
])
def test_the_control_image_follows_the_input_image_through_every_geometry(picture, hole, tmp_path, monkeypatch,
                                                                         geometry):
    import canvaslab.tasks.inpaint as inpaint_task
    from canvaslab.engines.diffusion.engine import DiffusionEngine

    odd = np.ascontiguousarray(picture[:61, :75])  # not a multiple of anything
    path = write_png(tmp_path / "same.png", odd)
    monkeypatch.setattr(inpaint_task, "engine_for", lambda request: (Recorder(), DiffusionEngine.Options()))
    Recorder.seen = []
    canvaslab.inpaint(odd, hole[:61, :75], model="sd15", control=[f"cn,image={path}"], **geometry)
    assert Recorder.seen
    for image, control in Recorder.seen:
        assert np.array_equal(image, control)


def test_outpaint_crops_the_final_canvas_control_image_for_each_step(picture, tmp_path, monkeypatch):
    import canvaslab.tasks.outpaint as outpaint_task
    from canvaslab.engines.diffusion.engine import DiffusionEngine

    final = np.random.default_rng(5).integers(0, 256, (64, 112, 3), dtype=np.uint8)
    path = write_png(tmp_path / "final.png", final)
    monkeypatch.setattr(outpaint_task, "engine_for", lambda request: (Recorder(), DiffusionEngine.Options()))
    Recorder.seen = []
    canvaslab.outpaint(picture[:64, :64], model="sd15", left=16, right=32, steps=2, tile=0, multiple=16,
                       control=[f"cn,image={path}"])
    # step 1 adds 8 left and 16 right: the canvas is columns 8..96 of the final one (padded to 96 wide for the
    # engine's multiple of 16, as the image is); step 2 is all of it
    assert np.array_equal(Recorder.seen[0][1][:, :88], final[:, 8:96])
    assert np.array_equal(Recorder.seen[1][1], final)


# -- other families ------------------------------------------------------------------------------


def test_sdxl_controlnet_and_union(picture, hole, tiny_folders, nets):
    folder = tiny_folders["sdxl-inpaint"]
    plain = run(picture, hole, folder)
    assert np.array_equal(run(picture, hole, folder, control=[f"{nets['sdxl']}:0,preprocessor=canny"]), plain)
    with_net = run(picture, hole, folder, control=[f"{nets['sdxl']},preprocessor=canny"])
    assert not np.array_equal(with_net, plain) and np.array_equal(with_net[~hole], picture[~hole])
    # Union (ProMax) inpaints on the plain SDXL model; diffusers' pipeline refuses an inpainting UNet
    assert "runs ControlNet Union models for" in one_line(lambda: run(picture, hole, folder, control=[
        f"{nets['union']},preprocessor=canny"]))
    folder = tiny_folders["sdxl-txt2img"]
    plain = run(picture, hole, folder)
    union = [f"{nets['union']},preprocessor=canny", f"{nets['union']},preprocessor=inpaint"]
    first = run(picture, hole, folder, control=union)
    assert not np.array_equal(first, plain) and np.array_equal(first[~hole], picture[~hole])
    assert not np.array_equal(first, run(picture, hole, folder, control=union[:1]))
    assert np.array_equal(run(picture, hole, folder, control=union), first)


@pytest.fixture(scope="module")
def dit_nets(tmp_path_factory):
    """SD3 ControlNets (a plain one and an inpainting one) and a FLUX.1 ControlNet of the tiny transformers."""
    from . import tiny_dit

    root = tmp_path_factory.mktemp("dit-controlnets")
    sd3, flux = tiny_dit.build_transformer("sd3-txt2img"), tiny_dit.build_transformer("flux-txt2img")
    return {
        "sd3": tiny_control.save_dit_controlnet(sd3, root / "cn-sd3"),
        "sd3-inpaint": tiny_control.save_dit_controlnet(sd3, root / "cn-sd3-inpaint", inpaint=True),
        "flux": tiny_control.save_dit_controlnet(flux, root / "cn-flux"),
        "flux-2": tiny_control.save_dit_controlnet(flux, root / "cn-flux-2", seed=7),
        "flux-union": tiny_control.save_dit_controlnet(flux, root / "cn-flux-union", union=True),
    }


@pytest.mark.parametrize("kind,net,preprocessor", [("sd3-txt2img", "sd3-inpaint", "inpaint"),
                                                   ("flux-txt2img", "flux", "canny")])
def test_sd3_and_flux_controlnet_inpaint(picture, hole, tiny_dit_folders, dit_nets, kind, net, preprocessor):
    folder = tiny_dit_folders[kind]
    plain = run(picture, hole, folder, steps=2)
    unit = f"{dit_nets[net]}:{{}},preprocessor={preprocessor}"
    # weight 0 leaves the unit out: the model alone, bit for bit (SD3's control pipeline would start from noise)
    assert np.array_equal(run(picture, hole, folder, steps=2, control=[unit.format(0)]), plain)
    half, full = (run(picture, hole, folder, steps=2, control=[unit.format(w)]) for w in (0.5, 1))
    assert not np.array_equal(half, plain) and not np.array_equal(full, half)
    assert np.array_equal(full[~hole], picture[~hole]) and np.array_equal(half[~hole], picture[~hole])
    assert np.array_equal(run(picture, hole, folder, steps=2, control=[unit.format(1)]), full)
    # outpaint goes through the same inpaint pipeline, the control image following each step's canvas
    params = dict(model=str(folder), sampling_steps=2, seed=1, prompt="a cat", right=32)
    extended = canvaslab.outpaint(picture, control=[unit.format(1)], **params).image
    assert extended.shape == (64, 112, 3) and not np.array_equal(extended, canvaslab.outpaint(picture, **params).image)


def test_sd3_and_flux_controlnet_generate_several_units_and_refusals(picture, hole, tiny_dit_folders, dit_nets, tmp_path,
                                                                      photo):
    edges = write_png(tmp_path / "photo.png", photo)
    for kind, net in (("sd3-txt2img", "sd3"), ("flux-txt2img", "flux")):
        params = dict(model=str(tiny_dit_folders[kind]), steps=2, seed=2, prompt="a cat", size=64)
        plain = canvaslab.generate(**params).image
        steered = canvaslab.generate(**params, control=[f"{dit_nets[net]},image={edges},preprocessor=canny"]).image
        assert not np.array_equal(steered, plain)
    folder = tiny_dit_folders["flux-txt2img"]
    one = run(picture, hole, folder, steps=2, control=[f"{dit_nets['flux']},preprocessor=canny"])
    both = run(picture, hole, folder, steps=2, control=[f"{dit_nets['flux']},preprocessor=canny",
                                                        f"{dit_nets['flux-2']}:0.7,preprocessor=blur,end=0.5"])
    assert not np.array_equal(both, one) and np.array_equal(both[~hole], picture[~hole])
    sd3 = tiny_dit_folders["sd3-txt2img"]
    assert "inpainting ControlNets only" in one_line(lambda: run(picture, hole, sd3, control=[
        f"{dit_nets['sd3']},preprocessor=canny"]))
    assert "not generate" in one_line(lambda: canvaslab.generate(
        model=str(sd3), steps=1, size=64, control=[f"{dit_nets['sd3-inpaint']},image={edges}"]))
    assert "balanced only" in one_line(lambda: run(picture, hole, folder, control=[
        f"{dit_nets['flux']},preprocessor=canny,mode=prompt"]))
    assert "SD3ControlNetModel, which does not fit" in one_line(lambda: run(picture, hole, folder, control=[
        str(dit_nets["sd3"])]))
    single = tmp_path / "flux-canny.safetensors"
    single.write_bytes(b"not read")
    assert "diffusers folder" in one_line(lambda: run(picture, hole, folder, control=[str(single)]),
                                          ModelNotAvailableError)


def test_flux_controlnet_union_modes(picture, hole, tiny_dit_folders, dit_nets):
    folder, union = tiny_dit_folders["flux-txt2img"], dit_nets["flux-union"]
    canny = run(picture, hole, folder, steps=2, control=[f"{union},preprocessor=canny"])
    blur = run(picture, hole, folder, steps=2, control=[f"{union},preprocessor=blur"])
    assert not np.array_equal(canny, blur) and np.array_equal(canny[~hole], picture[~hole])
    # several units of the one Union model: each with its mode, weight and steps (Multi-ControlNet over it)
    both = [f"{union},preprocessor=canny", f"{union}:0.5,preprocessor=blur,end=0.5"]
    combined = run(picture, hole, folder, steps=2, control=both)
    assert not np.array_equal(combined, canny) and np.array_equal(combined[~hole], picture[~hole])
    assert np.array_equal(run(picture, hole, folder, steps=2, control=both), combined)
    assert np.array_equal(run(picture, hole, folder, steps=2, control=[both[0], f"{union}:0,preprocessor=blur"]), canny)
    assert "does not say" in one_line(lambda: run(picture, hole, folder, steps=1, control=[str(union)]))
    assert "cannot run together" in one_line(lambda: run(picture, hole, folder, steps=1, control=[
        f"{union},preprocessor=canny", f"{dit_nets['flux']},preprocessor=canny"]))


def test_generate_with_a_control_image(tiny_folders, nets, tmp_path, photo):
    edges = write_png(tmp_path / "photo.png", photo)
    params = dict(model=str(tiny_folders["sd-txt2img"]), steps=STEPS, seed=2, prompt="a cat", size=64)
    plain = canvaslab.generate(**params).image
    assert np.array_equal(canvaslab.generate(**params, control=[f"{nets['sd']}:0,image={edges}"]).image, plain)
    steered = canvaslab.generate(**params, control=[f"{nets['sd']},image={edges},preprocessor=canny"])
    assert not np.array_equal(steered.image, plain)
    assert steered.recipe["inputs"]["control_0"]["sha256"]


# -- preprocessors -------------------------------------------------------------------------------


def test_weight_free_preprocessors(photo):
    import cv2

    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    assert np.array_equal(preprocessors.run("canny", photo, threshold_a=50, threshold_b=150)[..., 0],
                          cv2.Canny(gray, 50, 150))
    assert np.array_equal(preprocessors.run("invert", photo), 255 - photo)
    assert np.array_equal(preprocessors.run("tile", photo), photo)
    assert preprocessors.run("tile", photo, threshold_a=4).shape == photo.shape
    blurred = preprocessors.run("blur", photo, threshold_a=3)
    assert blurred.std() < photo.std()
    for name in ("scribble", "lineart"):
        made = preprocessors.run(name, photo)
        assert made.shape == photo.shape and made.dtype == np.uint8 and 0 < made.mean() < 128
    shuffled = preprocessors.run("shuffle", photo, seed=1)
    assert np.array_equal(preprocessors.run("shuffle", photo, seed=1), shuffled)
    assert not np.array_equal(preprocessors.run("shuffle", photo, seed=2), shuffled)
    mask = np.zeros(photo.shape[:2], bool)
    mask[10:20, 10:20] = True
    marked = preprocessors.run("inpaint", photo, mask=mask)
    assert (marked[mask] == 0).all() and np.array_equal(marked[~mask], photo[~mask])
    assert preprocessors.preprocessor("canny (from A1111)".split()[0]).name == "canny"
    assert preprocessors.preprocessor("lineart_standard (from white bg & black line)").name == "lineart"


def one_line(call, kind=CanvaslabError):
    with pytest.raises(kind) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_depth_preprocessor_from_the_local_cache(picture, hole, tiny_folders, nets, tmp_path):
    cache = tmp_path / "hf-cache"
    tiny.install_in_hub_cache(tiny_control.save_depth_model(tmp_path / "depth"), preprocessors.DEPTH_MODEL, cache)
    made = preprocessors.run("depth", picture, cache_dir=str(cache))
    assert made.shape == picture.shape and made.dtype == np.uint8 and (made.min(), made.max()) == (0, 255)
    assert np.array_equal(made[..., 0], made[..., 2])  # grey, as depth ControlNets take it
    assert np.array_equal(preprocessors.run("depth", picture, cache_dir=str(cache)), made)
    assert preprocessors.preprocessor("depth_anything_v2").name == "depth"
    message = one_line(lambda: preprocessors.run("depth", picture, cache_dir=str(tmp_path / "empty")),
                       ModelNotAvailableError)
    assert f"hf download {preprocessors.DEPTH_MODEL}" in message
    assert "preprocessor depth" in one_line(lambda: preprocessors.preprocessor("depth_midas"))
    folder = tiny_folders["sd-txt2img"]
    edges = run(picture, hole, folder, control=[f"{nets['sd']},preprocessor=canny"])
    steered = run(picture, hole, folder, control=[f"{nets['sd']},preprocessor=depth"], cache_dir=str(cache))
    assert not np.array_equal(steered, edges) and np.array_equal(steered[~hole], picture[~hole])


def test_refusals_are_one_line(picture, hole, tiny_folders, nets, tmp_path):
    folder = tiny_folders["sd-txt2img"]
    assert "torchvision" in one_line(lambda: run(picture, hole, folder, control=[f"{nets['sd']},preprocessor=normal"]))
    assert "threshold_b" in one_line(lambda: run(picture, hole, folder, control=[f"{nets['sd']},preprocessor=blur,threshold_b=3"]))
    assert "below" in one_line(lambda: run(picture, hole, folder, control=[f"{nets['sd']},start=0.8,end=0.2"]))
    assert "does not exist" in one_line(lambda: run(picture, hole, folder, control=[str(tmp_path / "nothing")]),
                                        ModelNotAvailableError)
    assert "not in the Hugging Face cache" in one_line(lambda: run(picture, hole, folder, control=["someone/controlnet"]),
                                                       ModelNotAvailableError)
    assert "another model" in one_line(lambda: run(picture, hole, folder, control=[str(nets["sdxl"])]))
    assert "ControlNetUnionModel" in one_line(lambda: run(picture, hole, folder, control=[str(nets["union"])]))
    assert "does not apply to the patchmatch engine" in one_line(
        lambda: canvaslab.inpaint(picture, hole, engine="patchmatch", control=[str(nets["sd"])]))
    assert "does not apply to edit" in one_line(
        lambda: canvaslab.edit(picture, instruction="x", model=str(folder), control=[str(nets["sd"])]))
    assert "needs a control image" in one_line(
        lambda: canvaslab.generate(model=str(folder), steps=1, size=64, control=[str(nets["sd"])]))
    assert "same weight" in one_line(lambda: run(picture, hole, tiny_folders["sdxl-txt2img"], control=[
        f"{nets['union']}:1,preprocessor=canny", f"{nets['union']}:0.5,preprocessor=blur"]))
    assert "does not say" in one_line(lambda: run(picture, hole, tiny_folders["sdxl-txt2img"],
                                                  control=[str(nets["union"])]))


# -- recipes, A1111 text, CLI, replay -----------------------------------------------------------


def test_recipe_parameters_cli_and_replay(picture, hole, tiny_folders, nets, tmp_path):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app
    from canvaslab.core.metadata import parse_parameters

    image, mask = write_png(tmp_path / "in.png", picture), write_png(tmp_path / "mask.png", hole.astype(np.uint8) * 255)
    edges = write_png(tmp_path / "edges.png", preprocessors.run("canny", picture))
    out = tmp_path / "out.png"
    args = ["inpaint", image, "--mask", mask, "--model", tiny_folders["sd-txt2img"], "--steps", 2, "--seed", 3, "-o", out,
            "--control", f"{nets['sd']}:0.8,preprocessor=canny,threshold_a=40,end=0.9",
            "--control", f"{nets['sd-2']}:0.5,image={edges},mode=prompt"]
    done = CliRunner().invoke(app, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    meta = json.loads(CliRunner().invoke(app, ["--json", "info", str(out)]).stdout)
    request, inputs = meta["recipe"]["request"], meta["recipe"]["inputs"]
    assert [u["weight"] for u in request["control"]] == [0.8, 0.5]
    assert inputs["control_1"]["path"] == str(edges.resolve()) and "control_0" not in inputs
    _, _, settings = parse_parameters(meta["parameters"])
    assert settings["ControlNet 0"] == ("Module: canny, Model: cn-sd, Weight: 0.8, Resize Mode: Crop and Resize, "
                                        "Threshold A: 40.0, Guidance Start: 0, Guidance End: 0.9, Pixel Perfect: True, "
                                        "Control Mode: Balanced")
    assert "Control Mode: My prompt is more important" in settings["ControlNet 1"]
    replay = CliRunner().invoke(app, ["replay", str(out), "-o", str(tmp_path / "again.png"), "--check"])
    assert replay.exit_code == 0, replay.output


def test_control_preview_writes_the_map(photo, tmp_path):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app
    from canvaslab.core.image import load_image

    image = write_png(tmp_path / "photo.png", photo)
    out = tmp_path / "edges.png"
    done = CliRunner().invoke(app, ["control", "preview", str(image), "--preprocessor", "canny", "--threshold-a", "60",
                                    "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert np.array_equal(load_image(out).rgb, preprocessors.run("canny", photo, threshold_a=60))
    refused = CliRunner().invoke(app, ["control", "preview", str(image), "--preprocessor", "openpose"])
    assert refused.exit_code == 2 and "torchvision" in refused.output


def test_a_missing_control_or_reference_image_names_its_unit(picture, hole, tmp_path):
    """`cannot read image 'edges.png'` did not say that it was a control unit's image=, not the input image."""
    image, mask = write_png(tmp_path / "in.png", picture), write_png(tmp_path / "m.png", hole)
    for params, expected in (({"control": [f"x:0.5,image={tmp_path}/edges.png"]}, "control unit 0 image"),
                             ({"ip_adapter": [f"y.safetensors,image={tmp_path}/ref.png"]}, "IP-Adapter 0 image 0")):
        with pytest.raises(CanvaslabError) as caught:
            canvaslab.inpaint(image, mask, engine="diffusion", model=str(tmp_path / "none"), **params)
        assert str(caught.value).startswith(expected) and "no such file" in str(caught.value), caught.value
