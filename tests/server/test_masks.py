"""Masks over HTTP on a live server with tiny random SAM, CLIPSeg and Grounding DINO models: /api/v1/mask
(points land where clicked, the embedding is kept between clicks, words, rules), hostile input refused
with one line before any work, and the segment-anything extension's /sam/* routes through webuiapi."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from canvaslab.server.settings import ServerSettings

from .conftest import b64, png_bytes, start_server

pytest.importorskip("transformers", reason="mask models need the diffusion extra (torch, transformers)")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from masks import tiny

    root = tmp_path_factory.mktemp("server-mask-models")
    return {"sam": tiny.save_sam(root / "tiny-sam"), "clipseg": tiny.save_clipseg(root / "tiny-clipseg"),
            "grounding": tiny.save_grounding_dino(root / "tiny-gdino")}


@pytest.fixture(scope="module")
def live(models, tmp_path_factory):
    settings = ServerSettings(output=tmp_path_factory.mktemp("out"), max_pixels=200 * 200,
                              mask_models=[str(models["sam"]), str(models["clipseg"]), str(models["grounding"])])
    server = start_server(settings)
    yield server
    server.stop()


def picture(width: int = 120, height: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def decoded(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def test_a_click_lands_where_given_and_the_next_click_reuses_the_embedding(live, models):
    from masks.test_sam import blob_at_the_prompt

    from canvaslab.masks.models import resolve
    from canvaslab.masks.sam import segmenter

    seg = segmenter(resolve(str(models["sam"])), "cpu")
    encoder_calls = []
    handle = seg.model.vision_encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    image = b64(png_bytes(picture(seed=11)))
    try:
        with live.client() as client, blob_at_the_prompt(seg.model):
            first = client.post("/api/v1/mask", json={"image": image, "points": [[97, 11]]})
            second = client.post("/api/v1/mask", json={"image": image, "points": [[30, 40]], "grow": 1})
    finally:
        handle.remove()
    assert first.status_code == 200, first.text
    one, two = first.json(), second.json()
    assert (one["embedding_cached"], two["embedding_cached"]) == (False, True) and len(encoder_calls) == 1
    mask = decoded(one["mask"])
    assert mask.shape == (50, 120) and one["size"] == [120, 50]
    ys, xs = np.nonzero(mask == 255)
    assert mask[11, 97] == 255 and abs(xs.mean() - 97) <= 2.5 and abs(ys.mean() - 11) <= 2.5
    assert decoded(two["mask"])[40, 30] == 255
    cache = live.app.state.mask_embeddings
    assert cache.ttl == 600.0 and len(cache._items) == 1  # kept for the next click, dropped after 10 idle minutes


def test_words_and_rules(live):
    image = b64(png_bytes(picture(80, 60, seed=3)))
    with live.client() as client:
        words = client.post("/api/v1/mask", json={"image": image, "text": "the spoon", "threshold": 0.5})
        rule = client.post("/api/v1/mask", json={"image": image, "auto": "damage", "options": {"contrast": 20}})
        listed = client.get("/api/v1/mask/models").json()
    assert words.status_code == 200, words.text
    assert decoded(words.json()["mask"]).shape == (60, 80) and len(words.json()["scores"]) == 1
    assert rule.status_code == 200, rule.text
    assert listed == {"sam": ["tiny-sam"], "text": ["tiny-clipseg", "tiny-gdino"], "aliases": []}


def test_the_http_fields_are_the_request_models(live):
    from canvaslab.tasks.requests import MaskRequest

    with live.client() as client:
        body = client.get("/openapi.json").json()["paths"]["/api/v1/mask"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == set(MaskRequest.model_fields) | {"image"} and schema["required"] == ["image"]
    assert "$ref" not in str(schema)


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"points": [[1, 1]] * 65}, 400, "points has 65 items; the server takes at most 64"),
    ({"points": [[1, 1]] * 40, "negative_points": [[2, 2]] * 40}, 422, "at most 64 points in all"),
    ({"boxes": [[0, 0, 5, 5]] * 17}, 422, "boxes has 17 boxes; the server takes at most 16"),
    ({"text": ["a"] * 9}, 422, "text has 9 phrases"),
    ({"text": "x" * 201}, 422, "a phrase is 201 characters long"),
    ({"points": [[1, 1]], "model": "/etc/passwd"}, 400, "unknown mask model '/etc/passwd': the server offers tiny-sam"),
    ({"points": [[1, 1]], "model": "sam"}, 400, "unknown mask model 'sam'"),
    ({"points": [[500, 1]]}, 400, "point 500,1 is outside the 120x50 image"),
    ({"points": [["a", 1]]}, 422, "points"),
    ({"auto": "watermark"}, 422, "compares a folder of images"),
    ({"points": [[1, 1]], "prompt": "x"}, 422, "unknown field 'prompt'"),
    ({"points": [[1, 1]], "image": "not base64!"}, 400, "image is not valid base64"),
    ({"points": [[1, 1]], "image": b64(png_bytes(picture(300, 300)))}, 400, "image: "),
    ({}, 422, "say where the mask is"),
])
def test_hostile_input_is_refused_in_one_line(live, body, status, message):
    body = {"image": b64(png_bytes(picture())), **body}
    with live.client() as client:
        answer = client.post("/api/v1/mask", json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"] and "\n" not in answer.json()["error"]


def test_a_server_without_mask_models_says_how_to_offer_one(make_server):
    server = make_server()
    with server.client() as client:
        answer = client.post("/api/v1/mask", json={"image": b64(png_bytes(picture())), "points": [[3, 3]]})
        rule = client.post("/api/v1/mask", json={"image": b64(png_bytes(picture())), "auto": "text"})
    assert answer.status_code == 400 and "offers no Segment Anything model: start it with --mask-model" in answer.json()["error"]
    assert rule.status_code == 200  # rules need no model


def test_a_configured_model_that_cannot_be_read_is_named_without_its_path(make_server, tmp_path):
    server = make_server(mask_models=[str(tmp_path / "gone" / "my-sam")])
    with server.client() as client:
        answer = client.post("/api/v1/mask", json={"image": b64(png_bytes(picture())), "points": [[3, 3]]})
    error = answer.json()["error"]
    assert answer.status_code == 400 and "could not read my-sam: see its log" in error and str(tmp_path) not in error


def test_one_mask_at_a_time_and_a_bounded_queue(make_server):
    import time

    from canvaslab.server.masks import MAX_WAITING

    server = make_server(request_timeout=1.0)
    body = {"image": b64(png_bytes(picture())), "auto": "damage"}
    with server.client() as client:
        assert client.post("/api/v1/mask", json=body).status_code == 200
        state = server.app.state
        assert state.mask_lock.acquire(blocking=False)  # a long mask is being made
        try:
            started = time.monotonic()
            waited = client.post("/api/v1/mask", json=body)
            assert waited.status_code == 503 and time.monotonic() - started >= 0.9  # waited its turn, then gave up
            for _ in range(MAX_WAITING + 1):
                assert state.mask_waiting.acquire(blocking=False)  # the running one and MAX_WAITING waiting
            started = time.monotonic()
            full = client.post("/api/v1/mask", json=body)
            assert full.status_code == 503 and time.monotonic() - started < 0.5  # refused at once
            assert "busy making other masks" in full.json()["error"]
        finally:
            for _ in range(MAX_WAITING + 1):
                state.mask_waiting.release()
            state.mask_lock.release()
        assert client.post("/api/v1/mask", json=body).status_code == 200  # free again


def test_the_mask_routes_need_the_token(make_server):
    server = make_server(token="a-strong-token-0123456789")
    body = {"image": b64(png_bytes(picture())), "auto": "damage"}
    with server.client() as client:
        for path in ("/api/v1/mask", "/sam/sam-predict"):
            assert client.post(path, json=body).status_code == 401
        assert client.get("/sam/heartbeat").status_code == 401
        good = client.post("/api/v1/mask", json=body, headers={"Authorization": "Bearer a-strong-token-0123456789"})
    assert good.status_code == 200


@pytest.fixture
def webuiapi():
    return pytest.importorskip("webuiapi", reason="the A1111 client tests need webuiapi (the dev extra)")


def test_webuiapi_segment_anything_points(live, webuiapi):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live.settings.port)
    sam = webuiapi.SegmentAnythingInterface(api)
    assert sam.heartbeat() == {"msg": "Success!"} and sam.get_sam_models() == ["tiny-sam"]
    image = Image.fromarray(picture(90, 60, seed=5))
    result = sam.sam_predict(image, sam_positive_points=[[20, 30]], sam_negative_points=[[80, 5]])  # its default model name
    assert len(result.masks) == len(result.blended_images) == len(result.masked_images) == 3
    assert all(mask.size == (90, 60) and mask.mode == "L" for mask in result.masks)
    first = np.asarray(result.masks[0]) == 255
    masked = np.asarray(result.masked_images[0])
    assert masked.shape == (60, 90, 4) and np.array_equal(masked[..., 3] == 255, first)
    np.testing.assert_array_equal(masked[first][:, :3], np.asarray(image)[first])
    assert "3 masks" in result.message


def test_webuiapi_segment_anything_with_grounding_dino(live, webuiapi):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=live.settings.port)
    sam = webuiapi.SegmentAnythingInterface(api)
    image = Image.fromarray(picture(96, 64, seed=6))
    boxes = sam.dino_predict(image, text_prompt="the spoon", box_threshold=0.0)
    assert boxes.image_with_box.size == (96, 64) and "box" in boxes.message
    result = sam.sam_predict(image, dino_enabled=True, dino_text_prompt="the spoon. a cup", dino_box_threshold=0.0)
    assert len(result.masks) == 3 and result.masks[0].size == (96, 64) and "box(es)" in result.message
    chosen = sam.sam_predict(image, dino_enabled=True, dino_text_prompt="the spoon", dino_box_threshold=0.0,
                             dino_preview_checkbox=True, dino_preview_boxes_selection=[0])
    assert "1 box(es)" in chosen.message



def test_big_answers_are_made_off_the_event_loop(models, tmp_path):
    """sam-predict's answer (3 masks, 3 tinted and 3 cut-out pictures as PNGs) took ~5 CPU s for a 2048x2048 picture,
    and was made on the event loop: every other client (health checks, job events) waited that long. It is made in
    the worker thread now; the server answers others meanwhile."""
    import threading
    import time

    settings = ServerSettings(output=tmp_path / "out", max_pixels=2048 * 2048, mask_models=[str(models["sam"])])
    server = start_server(settings)
    image = b64(png_bytes(picture(1600, 1600, seed=3)))
    answers: list = []
    try:
        with server.client() as client:
            body = {"input_image": image, "sam_positive_points": [[1000, 1000]], "sam_model_name": "tiny-sam"}
            asking = threading.Thread(target=lambda: answers.append(client.post("/sam/sam-predict", json=body)))
            asking.start()
            slowest = 0.0
            while asking.is_alive():
                started = time.monotonic()
                assert client.get("/api/v1/health").status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.02)
            asking.join()
    finally:
        server.stop()
    assert answers[0].status_code == 200 and len(answers[0].json()["masks"]) == 3
    assert slowest < 1.0, f"a health check waited {slowest:.2f} s"  # 3.5 s before (1600x1600)
