"""The AUTOMATIC1111 subset: shapes A1111 clients expect, classical engines and the tiny diffusion models."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from canvaslab.core.metadata import read_metadata

from .conftest import b64, png_bytes
from .test_native import gate_job

A1111_EXTRAS = {"restore_faces": False, "tiling": False, "styles": ["x"], "override_settings": {"a": 1},
                "alwayson_scripts": {}, "script_args": [], "eta": 0.3, "subseed": 7}


def decode(image_b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image_b64))).convert("RGB"))


def test_img2img_inpaint_with_classical_engine(make_server, photo_png, mask_png):
    live = make_server(engine="patchmatch")
    body = {"init_images": [b64(photo_png)], "mask": b64(mask_png), "seed": 9, "mask_blur": 0, "batch_size": 2,
            "denoising_strength": 1, "inpainting_fill": 1, "sampler_name": "Euler a", **A1111_EXTRAS}
    with live.client() as client:
        reply = client.post("/sdapi/v1/img2img", json=body)
        assert reply.status_code == 200, reply.text
        out = reply.json()
    assert set(out) == {"images", "parameters", "info"} and len(out["images"]) == 2
    info = json.loads(out["info"])
    assert info["all_seeds"] == [9, 10] and info["seed"] == 9 and len(info["infotexts"]) == 2
    assert set(A1111_EXTRAS) <= set(info["canvaslab"]["ignored_fields"])
    assert out["parameters"]["seed"] == 9 and "init_images" not in out["parameters"]
    original = np.asarray(Image.open(io.BytesIO(photo_png)))
    mask = np.asarray(Image.open(io.BytesIO(mask_png))) > 127
    for image_b64, seed in zip(out["images"], (9, 10)):
        pixels = decode(image_b64)
        assert np.array_equal(pixels[~mask], original[~mask])  # outside the mask: untouched
        recipe = read_metadata(base64.b64decode(image_b64)).recipe
        assert recipe["request"]["seed"] == seed and recipe["request"]["engine"] == "patchmatch"
    # PatchMatch reads no sampler or CFG scale: left out and reported, as unsupported fields are.
    assert {"sampler_name", "cfg_scale"} <= set(info["canvaslab"]["ignored_fields"])


def test_img2img_mask_invert_and_resize(make_server, photo_png, mask_png):
    live = make_server(engine="telea")
    with live.client() as client:
        inverted = client.post("/sdapi/v1/img2img", json={
            "init_images": [b64(photo_png)], "mask": b64(mask_png), "inpainting_mask_invert": 1, "mask_blur": 0})
        assert inverted.status_code == 200, inverted.text
        recipe = read_metadata(base64.b64decode(inverted.json()["images"][0])).recipe
        assert recipe["request"]["mask_mode"] == "black"
        # Whole picture: width x height is A1111's "just resize" of image and mask.
        resized = client.post("/sdapi/v1/img2img", json={
            "init_images": [b64(photo_png)], "mask": b64(mask_png), "width": 32, "height": 24})
        assert resized.status_code == 200, resized.text
        assert decode(resized.json()["images"][0]).shape == (24, 32, 3)
        # Only masked: the picture keeps its size (width x height is the crop's working size, which
        # a classical engine has no use for: reported as ignored).
        masked = client.post("/sdapi/v1/img2img", json={
            "init_images": [b64(photo_png)], "mask": b64(mask_png), "width": 32, "height": 24, "inpaint_full_res": True,
            "inpaint_full_res_padding": 4})
        assert masked.status_code == 200, masked.text
        assert decode(masked.json()["images"][0]).shape == (48, 64, 3)
        recipe = read_metadata(base64.b64decode(masked.json()["images"][0])).recipe
        assert recipe["request"]["area"] == "masked" and recipe["request"]["padding"] == 4
        info = json.loads(masked.json()["info"])
        assert {"width", "height"} <= set(info["canvaslab"]["ignored_fields"])
        assert any("16 px around the mask" in notice for notice in info["canvaslab"]["notices"])


@pytest.mark.parametrize("body,status,message", [
    ({}, 400, "init_images"),
    ({"init_images": "abc"}, 400, "init_images"),
    ({"init_images": ["bm90IGFuIGltYWdl"]}, 400, "init_images"),
    ({"sampler_name": "Warp Drive"}, 400, "unknown sampler 'Warp Drive'"),
    ({"steps": "many"}, 422, "steps"),
    ({"inpainting_fill": 7}, 400, "inpainting_fill"),
    ({"mask_blur": "soft"}, 422, "mask_blur"),
    ({"batch_size": 100}, 400, "batch_size"),
])
def test_img2img_bad_input(make_server, photo_png, mask_png, body, status, message):
    live = make_server(engine="telea")
    full = {"init_images": [b64(photo_png)], "mask": b64(mask_png), **body}
    if body == {}:
        del full["init_images"]
    with live.client() as client:
        reply = client.post("/sdapi/v1/img2img", json=full)
        assert reply.status_code == status, reply.text
        assert message in reply.json()["error"]
        assert client.get("/sdapi/v1/progress").status_code == 200


def test_txt2img_needs_a_painting_engine(server):
    with server.client() as client:
        reply = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64})
        assert 400 <= reply.status_code < 500 and reply.json()["error"]


def test_options_models_samplers_png_info(make_server, photo_png, mask_png, tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    live = make_server(models=[str(model_dir), "sd15-inpaint"], engine="diffusion")
    with live.client() as client:
        models = client.get("/sdapi/v1/sd-models").json()
        titles = [m["title"] for m in models]
        assert titles[:2] == ["my-model", "sd15-inpaint"] and str(tmp_path) not in json.dumps(models)
        assert set(models[0]) >= {"title", "model_name", "hash", "sha256", "filename", "config"}
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "my-model"
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd15-inpaint [abc123]", "foo": 1}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sd15-inpaint"
        refused = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "/etc/passwd"})
        assert refused.status_code == 400 and "unknown model" in refused.json()["error"]
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sd15-inpaint"
        samplers = client.get("/sdapi/v1/samplers").json()
        assert {"name": "Euler a", "aliases": ["euler-a"], "options": {}} in samplers
        # png-info reads what we wrote (and says nothing about an image without text).
        info = client.post("/sdapi/v1/png-info", json={"image": b64(photo_png)}).json()
        assert info == {"info": "", "items": {}, "parameters": {}}
        assert client.post("/sdapi/v1/png-info", json={"image": b64(b"not a png")}).status_code == 400
        assert client.post("/sdapi/v1/png-info", json={}).status_code == 400


def test_png_info_of_a_result(make_server, photo_png, mask_png):
    live = make_server(engine="telea")
    with live.client() as client:
        out = client.post("/sdapi/v1/img2img", json={"init_images": [b64(photo_png)], "mask": b64(mask_png),
                                                      "prompt": "a cup", "seed": 4}).json()
        info = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + out["images"][0]}).json()
    # telea reads no prompt: it is left out (and reported) rather than recorded as if it had been used.
    assert "prompt" in json.loads(out["info"])["canvaslab"]["ignored_fields"]
    assert info["parameters"]["Prompt"] == "" and info["parameters"]["Seed"] == "4"
    assert info["parameters"]["Engine"] == "telea"
    assert json.loads(info["items"]["canvaslab"])["request"]["seed"] == 4


def test_progress_and_interrupt(make_server, photo_png, mask_png):
    live = make_server(engine="telea")
    with live.client() as client:
        idle = client.get("/sdapi/v1/progress").json()
        assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
        gate, release = gate_job(live)
        time.sleep(0.1)
        busy = client.get("/sdapi/v1/progress").json()
        assert busy["state"]["job"] == gate.id and busy["state"]["sampling_steps"] == 1000
        assert 0 < busy["progress"] < 1 and busy["state"]["job_count"] == 1
        # A synchronous img2img waiting behind the gate; interrupt stops the running (gate) job only.
        answers: list = []
        waiting = threading.Thread(target=lambda: answers.append(live.client().post(
            "/sdapi/v1/img2img", json={"init_images": [b64(photo_png)], "mask": b64(mask_png)})))
        waiting.start()
        time.sleep(0.3)
        assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 2
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        waiting.join(30)
        release.set()
        assert gate.status.value == "cancelled"
        assert answers[0].status_code == 200 and len(answers[0].json()["images"]) == 1


# -- the tiny diffusion models -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):  # type: ignore[no-untyped-def]
    pytest.importorskip("diffusers")
    import torch

    from diffusion import tiny

    torch.set_num_threads(1)
    return tiny.save_pipeline_folder("sd-txt2img", tmp_path_factory.mktemp("tiny") / "tiny-sd")


def test_txt2img_and_img2img_with_a_tiny_diffusion_model(make_server, tiny_model, photo_png):
    live = make_server(engine="diffusion", models=[str(tiny_model)])
    body = {"prompt": "a red cup", "negative_prompt": "blur", "seed": 3, "steps": 2, "cfg_scale": 5, "width": 64,
            "height": 64, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "n_iter": 2, "enable_hr": True}
    with live.client() as client:
        reply = client.post("/sdapi/v1/txt2img", json=body)
        assert reply.status_code == 200, reply.text
        out = reply.json()
        info = json.loads(out["info"])
        assert info["all_seeds"] == [3, 4] and info["sd_model_name"] == "tiny-sd" and "enable_hr" in info["canvaslab"]["ignored_fields"]
        images = [decode(image) for image in out["images"]]
        assert [image.shape for image in images] == [(64, 64, 3)] * 2 and not np.array_equal(*images)
        recipe = read_metadata(base64.b64decode(out["images"][0])).recipe
        assert recipe["task"] == "generate" and recipe["request"]["scheduler"] == "dpm++2m-karras"
        assert "Steps: 2" in info["infotexts"][0] and "Sampler: DPM++ 2M Karras" in info["infotexts"][0]
        again = client.post("/sdapi/v1/txt2img", json={**body, "n_iter": 1}).json()
        assert np.array_equal(decode(again["images"][0]), images[0])  # same seed, same picture
        # img2img without a mask: the whole picture repainted at the denoising strength.
        photo = np.asarray(Image.open(io.BytesIO(photo_png)).resize((64, 64)))
        edit = client.post("/sdapi/v1/img2img", json={
            "init_images": [b64(png_bytes(photo))], "prompt": "a cup", "seed": 1, "steps": 4, "denoising_strength": 0.5,
            "inpainting_fill": 2})
        assert edit.status_code == 200, edit.text
        recipe = read_metadata(base64.b64decode(edit.json()["images"][0])).recipe
        assert recipe["request"]["strength"] == 0.5 and recipe["request"]["masked_content"] == "latent-noise"
        assert decode(edit.json()["images"][0]).shape == (64, 64, 3)


def test_native_generate_streams_diffusion_steps(make_server, tiny_model):
    from .test_native import read_events

    live = make_server(engine="diffusion", models=[str(tiny_model)])
    with live.client() as client:
        reply = client.post("/api/v1/generate", json={"prompt": "a cup", "steps": 3, "size": 64, "seed": 2})
        assert reply.status_code == 202, reply.text
        events = read_events(client, reply.json()["id"])
    steps = [data for name, data in events if name == "progress"]
    assert steps and steps[-1] == {"step": 3, "total": 3}
    assert [s["step"] for s in steps] == sorted(s["step"] for s in steps)
    result = events[-1][1]["result"]
    request = result["recipe"]["request"]
    # the server's own path to its model never reaches a client: a name and the files' hash instead
    assert events[-1][1]["status"] == "done" and request["model"] == "tiny-sd" and result["recipe"]["private"]
    assert result["recipe"]["models"]["model"]["sha256"]
    assert request["local_files_only"] is True  # the server never downloads unless started with --allow-downloads
    with live.client() as client:
        job = client.get(f"/api/v1/jobs/{events[-1][1]['id']}").text
        png = client.get(result["images"][0]["url"]).content
    assert str(tiny_model) not in job and str(tiny_model).encode() not in png
    assert read_metadata(png).recipe["request"]["model"] == "tiny-sd"


def test_a_server_started_with_metadata_full_keeps_paths(make_server, tiny_model):
    from .test_native import read_events

    live = make_server(engine="diffusion", models=[str(tiny_model)], metadata="full")
    with live.client() as client:
        reply = client.post("/api/v1/generate", json={"prompt": "a cup", "steps": 1, "size": 64, "seed": 2})
        events = read_events(client, reply.json()["id"])
    assert events[-1][1]["result"]["recipe"]["request"]["model"] == str(tiny_model)


def test_a_named_model_brings_its_engine_on_a_classical_server(make_server, tiny_model, photo_png, mask_png):
    """The server's --engine is the default only when the client names neither an engine nor a model."""
    live = make_server(engine="patchmatch", models=[str(tiny_model)])
    image = png_bytes(np.asarray(Image.open(io.BytesIO(photo_png)).resize((64, 64))))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 16:40] = 255
    with live.client() as client:
        reply = client.post("/api/v1/inpaint", json={"image": b64(image), "mask": b64(png_bytes(mask)),
                                                     "model": "tiny-sd", "steps": 2, "prompt": "a cup", "seed": 1})
        assert reply.status_code == 202, reply.text
        from .conftest import wait_done

        job = wait_done(client, reply.json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["result"]["recipe"]["request"]["engine"] == "diffusion"


def test_big_batches_are_answered_off_the_event_loop(make_server):
    """img2img's answer (3 noisy 2048x2048 PNGs: ~50 MB of base64 JSON) was encoded on the event loop: base64
    and one json.dumps held it ~0.25 s, and every other client (health checks, job events) waited. The answer is
    made in a worker thread now, base64 in pieces that let the loop in between."""
    side = 2048
    live = make_server(engine="telea", max_pixels=side * side)
    noise = np.random.default_rng(5).integers(0, 256, (side, side, 3), np.uint8)
    mask = np.zeros((side, side), np.uint8)
    mask[100:120, 100:120] = 255
    body = {"init_images": [b64(png_bytes(noise))], "mask": b64(png_bytes(mask)), "mask_blur": 0, "batch_size": 3,
            "seed": 2}
    answers: list = []
    with live.client() as client:
        asking = threading.Thread(target=lambda: answers.append(client.post("/sdapi/v1/img2img", json=body)))
        asking.start()
        while not live.app.state.queue.recent(1) and asking.is_alive():  # measured once the upload is read
            time.sleep(0.01)
        slowest = 0.0
        while asking.is_alive():
            started = time.monotonic()
            assert client.get("/api/v1/health").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.01)
        asking.join()
    assert answers[0].status_code == 200 and answers[0].headers["content-type"] == "application/json"
    out = answers[0].json()
    assert set(out) == {"images", "parameters", "info"} and json.loads(out["info"])["all_seeds"] == [2, 3, 4]
    first = decode(out["images"][0])
    assert first.shape == (side, side, 3) and np.array_equal(first[:100], noise[:100])  # untouched outside the mask
    assert slowest < 0.15, f"a health check waited {slowest:.2f} s"  # 0.23-0.26 s before, 0.07 now


def test_send_images_false_answers_without_images(make_server, photo_png, mask_png):
    live = make_server(engine="telea")
    with live.client() as client:
        reply = client.post("/sdapi/v1/img2img", json={"init_images": [b64(photo_png)], "mask": b64(mask_png),
                                                       "send_images": False, "seed": 4, "batch_size": 2})
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["images"] == [] and out["parameters"]["seed"] == 4 and json.loads(out["info"])["all_seeds"] == [4, 5]
