"""IP-Adapter image prompts (engines/diffusion/ip_adapter.py) on the tiny SD 1.x, SDXL, SD3 and FLUX.1 models.

The adapter is a tiny random one in the original file layout with a tiny CLIP vision encoder in
`image_encoder/` beside it (tiny_control.py), loaded through canvaslab's loader. Checked: weight 0 is
exactly the model alone, an adapter changes the result and its reference images matter, unloading
gives the model back bit for bit, several images and adapters work with ControlNets, unmasked pixels
stay identical, and what is missing (the encoder, the file) is one sentence.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("diffusers")

import canvaslab  # noqa: E402
from canvaslab.errors import CanvaslabError, InputError, ModelNotAvailableError  # noqa: E402
from conftest import write_png  # noqa: E402

from . import tiny, tiny_control  # noqa: E402


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip-adapters")
    return {
        "sd": tiny_control.save_ip_adapter(tiny.build_unet(4), root / "sd"),
        "sd-other": tiny_control.save_ip_adapter(tiny.build_unet(4), root / "sd", name="ip-adapter-other.safetensors",
                                                 seed=5),
        "sdxl": tiny_control.save_ip_adapter(tiny.build_unet(4, family="sdxl"), root / "sdxl"),
        "controlnet": tiny_control.save_controlnet(tiny.build_unet(4), root / "cn"),
    }


@pytest.fixture(scope="module")
def references(tmp_path_factory, photo):
    root = tmp_path_factory.mktemp("references")
    return [write_png(root / "a.png", photo), write_png(root / "b.png", np.ascontiguousarray(photo[:, ::-1])),
            write_png(root / "c.png", 255 - photo)]


@pytest.fixture(scope="module")
def picture(photo):
    return np.ascontiguousarray(photo[20:84, 40:104])


@pytest.fixture(scope="module")
def hole(picture):
    mask = np.zeros(picture.shape[:2], bool)
    mask[16:48, 16:48] = True
    return mask


def run(picture, hole, folder, **params):
    params = {"model": str(folder), "steps": 3, "seed": 1, "prompt": "a cat", **params}
    return canvaslab.inpaint(picture, hole, **params).image


@pytest.mark.parametrize("kind,adapter", [("sd-txt2img", "sd"), ("sd-inpaint", "sd"), ("sdxl-inpaint", "sdxl")])
def test_weight_zero_is_the_model_alone_and_an_adapter_steers(picture, hole, tiny_folders, adapters, references, kind,
                                                              adapter):
    folder = tiny_folders[kind]
    plain = run(picture, hole, folder)
    spec = f"{adapters[adapter]}:{{}},image={references[0]}"
    assert np.array_equal(run(picture, hole, folder, ip_adapter=[spec.format(0)]), plain)
    steered = run(picture, hole, folder, ip_adapter=[spec.format(1)])
    assert not np.array_equal(steered, plain)
    assert np.array_equal(steered[~hole], picture[~hole])
    other_reference = run(picture, hole, folder, ip_adapter=[f"{adapters[adapter]},image={references[2]}"])
    assert not np.array_equal(other_reference, steered)
    # the adapter is unloaded again: the model alone, bit for bit
    assert np.array_equal(run(picture, hole, folder), plain)


def test_several_images_adapters_and_controlnets_together(picture, hole, tiny_folders, adapters, references):
    folder = tiny_folders["sd-txt2img"]
    one = run(picture, hole, folder, ip_adapter=[f"{adapters['sd']},image={references[0]}"])
    two_images = run(picture, hole, folder, ip_adapter=[f"{adapters['sd']},image={references[0]},image={references[1]}"])
    assert not np.array_equal(two_images, one)
    two_adapters = run(picture, hole, folder, ip_adapter=[f"{adapters['sd']},image={references[0]}",
                                                          f"{adapters['sd-other']}:0.5,image={references[1]}"])
    assert not np.array_equal(two_adapters, one)
    with_control = run(picture, hole, folder, ip_adapter=[f"{adapters['sd']},image={references[0]}"],
                       control=[f"{adapters['controlnet']},preprocessor=canny"])
    assert not np.array_equal(with_control, one) and np.array_equal(with_control[~hole], picture[~hole])
    assert np.array_equal(run(picture, hole, folder, ip_adapter=[f"{adapters['sd']},image={references[0]}"]), one)


def test_flux_adapter_in_xlabs_layout(picture, hole, tiny_dit_folders, references, tmp_path):
    from . import tiny_dit

    transformer = tiny_dit.build_transformer("flux-txt2img")
    adapter = tiny_control.save_flux_ip_adapter(transformer, tmp_path / "flux-ip")
    net = tiny_control.save_dit_controlnet(transformer, tmp_path / "flux-cn")
    folder = tiny_dit_folders["flux-txt2img"]
    plain = run(picture, hole, folder, steps=2)
    spec = f"{adapter}:{{}},image={references[0]}"
    assert np.array_equal(run(picture, hole, folder, steps=2, ip_adapter=[spec.format(0)]), plain)
    steered = run(picture, hole, folder, steps=2, ip_adapter=[spec.format(1)])
    assert not np.array_equal(steered, plain) and np.array_equal(steered[~hole], picture[~hole])
    params = dict(model=str(folder), steps=2, seed=1, prompt="a cat", size=64)
    assert not np.array_equal(canvaslab.generate(**params, ip_adapter=[spec.format(1)]).image,
                              canvaslab.generate(**params).image)
    # the ControlNet inpaint pipeline shares the transformer and takes no reference image: the adapter loaded
    # above is unloaded for it, so the result is the ControlNet's alone
    controlled = run(picture, hole, folder, steps=2, control=[f"{net},preprocessor=canny"])
    from canvaslab.engines.diffusion import models

    models.clear_pipeline_cache()
    assert np.array_equal(run(picture, hole, folder, steps=2, control=[f"{net},preprocessor=canny"]), controlled)
    assert "takes no IP-Adapter" in one_line(lambda: run(picture, hole, folder, steps=1, ip_adapter=[spec.format(1)],
                                                         control=[f"{net},preprocessor=canny"]), InputError)
    assert np.array_equal(run(picture, hole, folder, steps=2), plain)


@pytest.fixture(scope="module")
def sd3_adapter(tmp_path_factory):
    from . import tiny_dit

    return tiny_control.save_sd3_ip_adapter(tiny_dit.build_transformer("sd3-txt2img"),
                                            tmp_path_factory.mktemp("sd3-ip"))


def test_sd3_adapter_in_instantx_layout(picture, hole, tiny_dit_folders, sd3_adapter, references, tmp_path):
    from . import tiny_dit

    folder = tiny_dit_folders["sd3-txt2img"]
    plain = run(picture, hole, folder, steps=2)
    spec = f"{sd3_adapter}:{{}},image={references[0]}"
    assert np.array_equal(run(picture, hole, folder, steps=2, ip_adapter=[spec.format(0)]), plain)
    steered = run(picture, hole, folder, steps=2, ip_adapter=[spec.format(1)])
    assert not np.array_equal(steered, plain) and np.array_equal(steered[~hole], picture[~hole])
    assert np.array_equal(run(picture, hole, folder, steps=2, ip_adapter=[spec.format(1)]), steered)  # seeded
    other = run(picture, hole, folder, steps=2, ip_adapter=[f"{sd3_adapter},image={references[2]}"])
    assert not np.array_equal(other, steered)
    params = dict(model=str(folder), steps=2, seed=1, prompt="a cat", size=64)
    alone = canvaslab.generate(**params).image
    assert not np.array_equal(canvaslab.generate(**params, ip_adapter=[spec.format(1)]).image, alone)
    assert np.array_equal(canvaslab.generate(**params).image, alone)  # unloaded: the model alone again
    net = tiny_control.save_dit_controlnet(tiny_dit.build_transformer("sd3-txt2img"), tmp_path / "cn", inpaint=True)
    controlled = run(picture, hole, folder, steps=2, control=[f"{net},preprocessor=inpaint"])
    both = run(picture, hole, folder, steps=2, control=[f"{net},preprocessor=inpaint"], ip_adapter=[spec.format(1)])
    assert not np.array_equal(both, controlled) and np.array_equal(both[~hole], picture[~hole])
    assert "one reference image" in one_line(lambda: run(picture, hole, folder, steps=1, ip_adapter=[
        f"{sd3_adapter},image={references[0]},image={references[1]}"]), InputError)
    bare = tmp_path / "bare" / sd3_adapter.name
    bare.parent.mkdir()
    shutil.copy(sd3_adapter, bare)
    message = one_line(lambda: run(picture, hole, folder, steps=1, ip_adapter=[f"{bare},image={references[0]}"]),
                       ModelNotAvailableError)
    assert "SigLIP" in message and str(bare.parent / "image_encoder") in message
    clip = f"{sd3_adapter},image={references[0]},encoder={clip_encoder_folder(tmp_path)}"
    assert "does not fit" in one_line(lambda: run(picture, hole, folder, steps=1, ip_adapter=[clip]), InputError)
    assert np.array_equal(run(picture, hole, folder, steps=2), plain)


def test_sd35_adapter_with_the_dual_attention_blocks(picture, hole, tiny_dit_folders, references, tmp_path):
    from . import tiny_dit

    adapter = tiny_control.save_sd3_ip_adapter(tiny_dit.build_transformer("sd35-txt2img"), tmp_path / "sd35-ip")
    folder = tiny_dit_folders["sd35-txt2img"]
    plain = run(picture, hole, folder, steps=2)
    spec = f"{adapter}:{{}},image={references[0]}"
    assert np.array_equal(run(picture, hole, folder, steps=2, ip_adapter=[spec.format(0)]), plain)
    steered = run(picture, hole, folder, steps=2, ip_adapter=[spec.format(0.8)])
    assert not np.array_equal(steered, plain) and np.array_equal(steered[~hole], picture[~hole])
    assert np.array_equal(run(picture, hole, folder, steps=2), plain)


def clip_encoder_folder(tmp_path):
    folder = tmp_path / "clip-encoder"
    tiny_control.build_image_encoder().save_pretrained(folder)
    return folder


def test_sd3_generate_records_the_reference_and_replays(tiny_dit_folders, sd3_adapter, references, tmp_path):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    out = tmp_path / "out.png"
    args = ["generate", "--model", tiny_dit_folders["sd3-txt2img"], "--prompt", "a cat", "--size", 64, "--steps", 2,
            "--seed", 4, "-o", out, "--ip-adapter", f"{sd3_adapter}:0.7,image={references[1]}"]
    done = CliRunner().invoke(app, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    meta = json.loads(CliRunner().invoke(app, ["--json", "info", str(out)]).stdout)
    recorded = meta["recipe"]["inputs"]["ip_adapter_0_0"]
    assert recorded["path"] == str(references[1].resolve()) and len(recorded["sha256"]) == 64
    assert "IP-Adapter 0: \"Model: ip-adapter_sd3_tiny, Weight: 0.7, Images: 1\"" in meta["parameters"]
    replay = CliRunner().invoke(app, ["replay", str(out), "-o", str(tmp_path / "again.png"), "--check"])
    assert replay.exit_code == 0, replay.output


def test_generate_records_the_references(tiny_folders, adapters, references, tmp_path):
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    out = tmp_path / "out.png"
    args = ["generate", "--model", tiny_folders["sd-txt2img"], "--prompt", "a cat", "--size", 64, "--steps", 2,
            "--seed", 4, "-o", out, "--ip-adapter", f"{adapters['sd']}:0.7,image={references[0]}"]
    done = CliRunner().invoke(app, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    meta = json.loads(CliRunner().invoke(app, ["--json", "info", str(out)]).stdout)
    assert meta["recipe"]["inputs"]["ip_adapter_0_0"]["path"] == str(references[0].resolve())
    assert "IP-Adapter 0: \"Model: ip-adapter_tiny, Weight: 0.7, Images: 1\"" in meta["parameters"]
    replay = CliRunner().invoke(app, ["replay", str(out), "-o", str(tmp_path / "again.png"), "--check"])
    assert replay.exit_code == 0, replay.output


def one_line(call, kind=CanvaslabError):
    with pytest.raises(kind) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_what_is_missing_is_one_sentence(picture, hole, tiny_folders, adapters, references, tmp_path,
                                         tiny_dit_folders):
    folder = tiny_folders["sd-txt2img"]
    plain = run(picture, hole, folder)
    alone = tmp_path / "alone" / "ip-adapter_sd15.safetensors"
    alone.parent.mkdir()
    shutil.copy(adapters["sd"], alone)
    message = one_line(lambda: run(picture, hole, folder, ip_adapter=[f"{alone},image={references[0]}"]),
                       ModelNotAvailableError)
    assert "image encoder" in message and str(alone.parent / "image_encoder") in message
    assert "not on this machine" in one_line(
        lambda: run(picture, hole, folder, ip_adapter=[f"{tmp_path / 'none.safetensors'},image={references[0]}"]),
        ModelNotAvailableError)
    assert "does not fit" in one_line(lambda: run(picture, hole, folder, ip_adapter=[
        f"{adapters['sdxl']},image={references[0]}"]), InputError)
    assert np.array_equal(run(picture, hole, folder), plain)  # the failed load left nothing behind
    assert "does not fit" in one_line(lambda: canvaslab.inpaint(
        picture, hole, model=str(tiny_dit_folders["sd3-txt2img"]), steps=1,
        ip_adapter=[f"{adapters['sd']},image={references[0]}"]), InputError)
    assert "does not fit" in one_line(lambda: canvaslab.inpaint(
        picture, hole, model=str(tiny_dit_folders["flux-txt2img"]), steps=1,
        ip_adapter=[f"{adapters['sd']},image={references[0]}"]), InputError)
    assert "ip_adapter.0.images" in one_line(lambda: canvaslab.inpaint(picture, hole, model=str(folder),
                                                                       ip_adapter=[str(adapters["sd"])]), InputError)
