"""ControlNet and IP-Adapter over HTTP: the sd-webui-controlnet extension's API as the `webuiapi` client speaks
it (alwayson_scripts units, the old controlnet_units field, /controlnet/* routes) and the native API's
`control` / `ip_adapter` fields, on a live server with a tiny SD model, ControlNet and IP-Adapter."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from canvaslab.core.metadata import read_metadata

from .conftest import b64, png_bytes, wait_done

webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client tests need webuiapi (the dev extra)")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def models(tmp_path_factory):  # type: ignore[no-untyped-def]
    from diffusion import tiny, tiny_control

    root = tmp_path_factory.mktemp("control-server")
    return {
        "sd": tiny.save_pipeline_folder("sd-txt2img", root / "tiny-sd"),
        "cn": tiny_control.save_controlnet(tiny.build_unet(4), root / "tiny-canny"),
        "ip": tiny_control.save_ip_adapter(tiny.build_unet(4), root / "ip"),
    }


@pytest.fixture
def live(make_server, models):  # type: ignore[no-untyped-def]
    return make_server(engine="diffusion", models=[str(models["sd"])], control_models=[str(models["cn"])],
                       ip_adapters=[str(models["ip"])])


@pytest.fixture(scope="module")
def picture():  # type: ignore[no-untyped-def]
    from .conftest import EXAMPLES

    return Image.open(EXAMPLES / "coffee.png").convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)


def box_mask() -> tuple[Image.Image, np.ndarray]:
    fill = np.zeros((64, 64), bool)
    fill[16:48, 16:48] = True
    return Image.fromarray((fill * 255).astype(np.uint8)), fill


def client_for(live):  # type: ignore[no-untyped-def]
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.settings.port, steps=2)


def img2img(api, picture, mask, **kwargs):  # type: ignore[no-untyped-def]
    # A fresh alwayson_scripts each call: webuiapi writes the units into its shared default dict, which would
    # carry them into other test modules' calls.
    return api.img2img(images=[picture], mask_image=mask, seed=5, denoising_strength=1.0, inpaint_full_res=False,
                       width=64, height=64, cfg_scale=5, mask_blur=0, alwayson_scripts={}, **kwargs)


def test_img2img_with_a_controlnet_unit_through_webuiapi(live, picture):  # type: ignore[no-untyped-def]
    api = client_for(live)
    mask, fill = box_mask()
    plain = np.asarray(img2img(api, picture, mask).image.convert("RGB"))
    unit = webuiapi.ControlNetUnit(image=picture, module="canny", model="tiny-canny [0123abcd]", weight=1.0,
                                   threshold_a=80, threshold_b=160, guidance_end=0.9)
    result = img2img(api, picture, mask, controlnet_units=[unit])
    out = np.asarray(result.image.convert("RGB"))
    assert np.array_equal(out[~fill], np.asarray(picture)[~fill])
    assert not np.array_equal(out, plain)
    silent = webuiapi.ControlNetUnit(image=picture, module="canny", model="tiny-canny", weight=0.0)
    assert np.array_equal(np.asarray(img2img(api, picture, mask, controlnet_units=[silent]).image.convert("RGB")), plain)
    # what the extension reads and we do not is named, never dropped silently
    ignored = result.info["canvaslab"]["ignored_fields"]
    assert "alwayson_scripts.ControlNet.args[0].processor_res" in ignored
    assert "alwayson_scripts.ControlNet.args[0].threshold_a" not in ignored
    recipe = read_metadata(_png(result.image)).recipe
    assert recipe["request"]["control"][0] | {"image": None} == {
        "model": "tiny-canny", "weight": 1.0, "image": None, "preprocessor": "canny", "start": 0.0, "end": 0.9,
        "mode": "balanced", "resize": "fill", "threshold_a": 80.0, "threshold_b": 160.0}
    assert 'ControlNet 0: "Module: canny, Model: tiny-canny, Weight: 1' in result.info["infotexts"][0]


def _png(image: Image.Image) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_units_without_image_use_the_init_image_and_ip_adapter_units(live, picture):  # type: ignore[no-untyped-def]
    api = client_for(live)
    mask, fill = box_mask()
    own = webuiapi.ControlNetUnit(module="canny", model="tiny-canny")
    with_init = img2img(api, picture, mask, controlnet_units=[own])
    explicit = img2img(api, picture, mask, controlnet_units=[webuiapi.ControlNetUnit(image=picture, module="canny",
                                                                                   model="tiny-canny", resize_mode=1)])
    assert np.array_equal(np.asarray(with_init.image), np.asarray(explicit.image))
    adapter = webuiapi.ControlNetUnit(image=picture, module="ip-adapter_clip_sd15", model="ip-adapter_tiny")
    steered = img2img(api, picture, mask, controlnet_units=[adapter])
    assert steered.info["canvaslab"]["engine"] == "diffusion"
    assert 'IP-Adapter 0: "Model: ip-adapter_tiny, Weight: 1' in steered.info["infotexts"][0]
    after = img2img(api, picture, mask)
    assert "IP-Adapter" not in after.info["infotexts"][0]
    assert not np.array_equal(np.asarray(steered.image), np.asarray(after.image))


def test_extension_routes_and_the_old_units_field(live, picture):  # type: ignore[no-untyped-def]
    from canvaslab.engines.diffusion import preprocessors

    api = client_for(live)
    assert api.controlnet_version() == 2
    # the extension shows in the script list, so webuiapi clears units on calls without them (see the IP test)
    assert api.has_controlnet and api.get_scripts()["img2img"] == ["controlnet", "controlnet m2m"]
    assert api.controlnet_model_list() == ["tiny-canny", "ip-adapter_tiny"]
    modules = api.controlnet_module_list()
    assert "canny" in modules and "inpaint_only" in modules and "depth_midas" not in modules
    detected = api.controlnet_detect([picture], module="canny", threshold_a=50, threshold_b=150)
    made = np.asarray(detected.image.convert("RGB"))
    assert np.array_equal(made, preprocessors.run("canny", np.asarray(picture), threshold_a=50, threshold_b=150))
    assert detected.json["canvaslab"]["ignored_fields"] == ["controlnet_processor_res"]
    mask, fill = box_mask()
    unit = webuiapi.ControlNetUnit(image=picture, module="canny", model="tiny-canny")
    old = img2img(api, picture, mask, controlnet_units=[unit], use_deprecated_controlnet=True)
    new = img2img(api, picture, mask, controlnet_units=[unit])
    assert np.array_equal(np.asarray(old.image), np.asarray(new.image))


def test_txt2img_with_a_controlnet_unit_through_webuiapi(live, picture):  # type: ignore[no-untyped-def]
    api = client_for(live)
    common = dict(prompt="a cup", seed=3, width=64, height=64, cfg_scale=5, alwayson_scripts={})
    plain = np.asarray(api.txt2img(**common).image)
    unit = webuiapi.ControlNetUnit(image=picture, module="canny", model="tiny-canny", threshold_a=80, threshold_b=160)
    steered = api.txt2img(controlnet_units=[unit], **{**common, "alwayson_scripts": {}})
    assert not np.array_equal(np.asarray(steered.image), plain)
    assert steered.image.size == (64, 64)
    assert 'ControlNet 0: "Module: canny, Model: tiny-canny' in steered.info["infotexts"][0]


def test_refusals_name_the_unit_field(live, picture):  # type: ignore[no-untyped-def]
    with live.client() as client:
        base = {"init_images": [b64(png_bytes(np.asarray(picture)))], "steps": 1, "width": 64, "height": 64}
        unknown = client.post("/sdapi/v1/img2img", json={**base, "alwayson_scripts": {"ControlNet": {"args": [
            {"module": "canny", "model": "not-here"}]}}})
        assert unknown.status_code == 400 and unknown.json()["field"] == "alwayson_scripts.ControlNet.args[0].model"
        off = client.post("/sdapi/v1/img2img", json={**base, "denoising_strength": 1, "alwayson_scripts": {"ControlNet": {
            "args": [{"enabled": "false", "module": "canny", "model": "not-here"}]}}})  # the extension reads "false" as off
        assert off.status_code == 200, off.text
        # A1111's default denoising strength 0.75 at 1 step leaves diffusers no step: one line, not a 500
        none = client.post("/sdapi/v1/img2img", json=base)
        assert none.status_code in (400, 422) and "no denoising step" in none.json()["error"], none.text
        assert "--steps 2" in none.json()["error"]
        learned = client.post("/sdapi/v1/img2img", json={**base, "alwayson_scripts": {"ControlNet": {"args": [
            {"module": "depth_midas", "model": "tiny-canny"}]}}})
        assert learned.status_code == 422 and "torchvision" in learned.json()["error"]
        assert learned.json()["field"] == "alwayson_scripts.ControlNet.args[0]"
        no_image = client.post("/sdapi/v1/txt2img", json={"steps": 1, "alwayson_scripts": {"ControlNet": {"args": [
            {"module": "canny", "model": "tiny-canny"}]}}})
        assert no_image.status_code == 400 and no_image.json()["field"].endswith(".image")
        image = b64(png_bytes(np.asarray(picture)))
        many = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [image] * 9})
        assert many.status_code == 400 and many.json()["field"] == "controlnet_input_images"
        learned = client.post("/controlnet/detect", json={"controlnet_module": "openpose", "controlnet_input_images": [image]})
        assert learned.status_code == 422 and "torchvision" in learned.json()["error"]


def test_native_api_control_and_ip_adapter_fields(live, picture):  # type: ignore[no-untyped-def]
    image = b64(png_bytes(np.asarray(picture)))
    _, fill = box_mask()
    with live.client() as client:
        fields = {"image": image, "mask": b64(png_bytes(fill.astype(np.uint8) * 255)), "steps": 2, "seed": 3,
                  "control": [{"model": "tiny-canny", "image": image, "preprocessor": "canny"}],
                  "ip_adapter": [{"model": "ip-adapter_tiny", "images": [image], "weight": 0.5}]}
        job = client.post("/api/v1/inpaint", json=fields).json()
        done = wait_done(client, job["id"])
        assert done["status"] == "done", done
        path = client.post("/api/v1/inpaint", json={**fields, "control": [{"model": "tiny-canny", "image": "/etc/hosts"}]})
        assert path.status_code == 400 and path.json()["field"] == "control.0.image"
        encoder = client.post("/api/v1/inpaint", json={**fields, "ip_adapter": [
            {"model": "ip-adapter_tiny", "images": [image], "encoder": "/tmp"}]})
        assert encoder.status_code == 400 and encoder.json()["field"] == "ip_adapter.0.encoder"
        many = client.post("/api/v1/inpaint", json={**fields, "control": fields["control"] * 9})
        assert many.status_code == 400 and many.json()["field"] == "control"
        references = client.post("/api/v1/inpaint", json={**fields, "ip_adapter": [
            {"model": "ip-adapter_tiny", "images": [image] * 17}]})
        assert references.status_code == 400 and references.json()["field"] == "ip_adapter.0.images"


def test_a_controlnet_that_fails_when_the_job_runs_is_named_without_its_folder(make_server, models, picture, tmp_path):  # type: ignore[no-untyped-def]
    broken = tmp_path / "server-secret-folder" / "broken-canny"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # a folder without weights: found out only when the job loads it
    live = make_server(engine="diffusion", models=[str(models["sd"])], control_models=[str(broken)])
    image = b64(png_bytes(np.asarray(picture)))
    _, fill = box_mask()
    mask = b64(png_bytes(fill.astype(np.uint8) * 255))
    with live.client() as client:
        job = client.post("/api/v1/inpaint", json={"image": image, "mask": mask, "steps": 1,
                                                   "control": [{"model": "broken-canny"}]}).json()
        done = wait_done(client, job["id"])
        assert done["status"] == "failed" and "broken-canny" in done["error"]
        synchronous = client.post("/sdapi/v1/img2img", json={"init_images": [image], "mask": mask, "steps": 1,
                                                             "controlnet_units": [{"module": "canny", "model": "broken-canny"}]})
        assert 400 <= synchronous.status_code < 500 and "broken-canny" in synchronous.json()["error"]
        for text in (json.dumps(done), synchronous.text):
            assert "server-secret-folder" not in text and str(tmp_path) not in text, text


def test_reference_images_are_checked_by_their_headers_within_a_pixel_budget(live, picture):  # type: ignore[no-untyped-def]
    """8 IP-Adapters x 16 references at the pixel limit (a 17 KB PNG each) were all decoded before queueing (~75 ms
    each: a 3 MB body bought 10 CPU s) and held by the job: now headers only, and at most REFERENCE_BUDGET images'
    worth of pixels at the limit in all."""
    from canvaslab.server.inputs import REFERENCE_BUDGET

    flat = io.BytesIO()
    Image.new("RGB", (2048, 2048), (10, 20, 30)).save(flat, "PNG")  # at the default pixel limit
    big = b64(flat.getvalue())
    image = b64(png_bytes(np.asarray(picture)))
    _, fill = box_mask()
    base = {"image": image, "mask": b64(png_bytes(fill.astype(np.uint8) * 255)), "steps": 1}
    too_many = REFERENCE_BUDGET // 16 + 1
    with live.client() as client:
        over = client.post("/api/v1/inpaint", json={**base, "ip_adapter": [
            {"model": "ip-adapter_tiny", "images": [big] * 16} for _ in range(too_many)]})
        assert over.status_code == 400 and over.json()["field"] == "ip_adapter", over.text
        assert "pixel" in over.json()["error"]
        eps = client.post("/api/v1/inpaint", json={**base, "ip_adapter": [
            {"model": "ip-adapter_tiny", "images": [b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")]}]})
        assert eps.status_code == 400 and eps.json()["field"] == "ip_adapter.0.images", eps.text
        assert "EPS" in eps.json()["error"]


def test_a_video_job_takes_control_units_as_the_image_routes_do(live, picture, tmp_path):  # type: ignore[no-untyped-def]
    """Units of a video job: the ControlNet by the server's name, the control image sent as base64 (it was read
    from a server path); the job runs with it and its recipe holds no server path."""
    frames = [png_bytes(np.roll(np.asarray(picture), shift, axis=1)) for shift in (0, 2, 4)]
    _, fill = box_mask()
    parts = [("frame", (f"{i}.png", data)) for i, data in enumerate(frames)]
    parts.append(("mask", ("mask.png", png_bytes(fill.astype(np.uint8) * 255))))
    fields = {"steps": 1, "seed": 2, "control": [{"model": "tiny-canny", "preprocessor": "canny",
                                                  "image": b64(png_bytes(np.asarray(picture)))}]}
    with live.client() as client:
        answer = client.post("/api/v1/video/inpaint", files=parts, data={"request": json.dumps(fields)})
        assert answer.status_code == 202, answer.text
        done = wait_done(client, answer.json()["id"], timeout=120)
    assert done["status"] == "done", done["error"]
    recipe = json.dumps(done["result"]["recipe"])
    assert '"model": "tiny-canny"' in recipe and str(live.settings.output) not in recipe and "/tmp" not in recipe, recipe
    assert not list(live.settings.output.glob(".video-*"))
