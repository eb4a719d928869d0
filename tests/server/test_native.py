"""The native API against a live server: every route, a job's life, events, cancel, history, queue limits."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from canvaslab.core.metadata import read_metadata
from canvaslab.core.progress import report_progress

from .conftest import b64, wait_done


def inpaint_body(photo_png: bytes, mask_png: bytes, **extra: object) -> dict:
    return {"image": b64(photo_png), "mask": b64(mask_png), "engine": "telea", **extra}


def read_events(client: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    """All events of a job's stream, until the server closes it after `done`."""
    events, name = [], None
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def gate_job(live, task: str = "inpaint"):  # type: ignore[no-untyped-def]
    """A job that holds the worker until released, reporting a step every 10 ms (so it can be cancelled)."""
    release, started = threading.Event(), threading.Event()

    def work():  # type: ignore[no-untyped-def]
        started.set()
        step = 0
        while not release.is_set():
            step += 1
            report_progress(step, 1000)
            time.sleep(0.01)
        yield from ()

    job = live.app.state.queue.submit(task, work)
    assert started.wait(10)
    return job, release


def test_inpaint_job_life_with_events_and_recipe(server, photo_png, mask_png):
    with server.client() as client:
        gate, release = gate_job(server)
        reply = client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png, seed=11))
        assert reply.status_code == 202
        body = reply.json()
        assert body["status"] == "queued" and body["position"] == 0 and body["task"] == "inpaint"
        assert body["links"] == {"self": f"/api/v1/jobs/{body['id']}", "events": f"/api/v1/jobs/{body['id']}/events",
                                 "cancel": f"/api/v1/jobs/{body['id']}/cancel"}
        collected: list = []
        reader = threading.Thread(target=lambda: collected.extend(read_events(server.client(), body["id"])))
        reader.start()
        time.sleep(0.3)
        assert client.get(f"/api/v1/jobs/{body['id']}").json()["status"] == "queued"
        release.set()
        reader.join(30)
        names = [name for name, _ in collected]
        statuses = [data["status"] for name, data in collected if name == "status"]
        assert statuses == ["queued", "running", "done"]  # every change, even one shorter than a poll
        assert ("progress", {"step": 1, "total": 1}) in collected
        assert names[-1] == "done" and collected[-1][1]["status"] == "done"
        job = client.get(f"/api/v1/jobs/{body['id']}").json()
        assert job["status"] == "done" and job["error"] is None and job["finished"] is not None
        assert job["progress"] == {"step": 1, "total": 1}
        image = job["result"]["images"][0]
        assert image["seed"] == 11 and image["url"].startswith(f"/api/v1/results/{body['id']}/")
        assert job["result"]["recipe"]["request"]["seed"] == 11 and "Seed: 11" in job["result"]["parameters"]
        download = client.get(image["url"])
        assert download.status_code == 200 and download.headers["content-type"] == "image/png"
        assert download.headers["content-disposition"].startswith("attachment")
        recipe = read_metadata(download.content).recipe
        assert recipe["task"] == "inpaint" and recipe["request"]["engine"] == "telea" and recipe["request"]["seed"] == 11
        assert gate.status.value == "done"


def test_same_seed_same_pixels_and_multipart_equals_json(server, photo_png, mask_png):
    with server.client() as client:
        first = client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png, seed=5, engine="patchmatch")).json()
        second = client.post(
            "/api/v1/inpaint", data={"request": json.dumps({"engine": "patchmatch", "seed": 5})},
            files={"image": ("p.png", photo_png, "image/png"), "mask": ("m.png", mask_png, "image/png")},
        )
        assert second.status_code == 202, second.text
        a, b = (wait_done(client, job["id"]) for job in (first, second.json()))
        pixels = [client.get(job["result"]["images"][0]["url"]).content for job in (a, b)]
        from PIL import Image
        import io
        import numpy as np

        arrays = [np.asarray(Image.open(io.BytesIO(data))) for data in pixels]
        assert np.array_equal(arrays[0], arrays[1])


def test_outpaint_and_data_url(server, photo_png):
    with server.client() as client:
        body = {"image": "data:image/png;base64," + b64(photo_png), "engine": "telea", "right": 16, "seed": 1}
        job = wait_done(client, client.post("/api/v1/outpaint", json=body).json()["id"])
        assert job["status"] == "done", job["error"]
        assert job["result"]["recipe"]["size"] == [80, 48]


def test_generate_and_understand_fail_cleanly_without_models(make_server):
    """An offered model that is not on this machine: a failed job with a one-line error, and the server keeps serving."""
    live = make_server(allow_downloads=True)
    with live.client() as client:
        reply = client.post("/api/v1/generate", json={"prompt": "a lighthouse", "steps": 1, "size": 64, "model": "sd15"})
        assert reply.status_code == 202
        job = wait_done(client, reply.json()["id"])
        assert job["status"] == "failed" and job["error"] and "\n" not in job["error"]
        assert client.get("/api/v1/health").json()["status"] == "ok"


def test_cancel_queued_and_running(server, photo_png, mask_png):
    with server.client() as client:
        gate, release = gate_job(server)
        queued = client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png)).json()
        cancelled = client.post(f"/api/v1/jobs/{queued['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["position"] is None and cancelled["finished"]
        events = read_events(client, queued["id"])
        assert events[-1][0] == "done" and events[-1][1]["status"] == "cancelled"
        # The running gate job stops at its next reported step.
        running = client.post(f"/api/v1/jobs/{gate.id}/cancel").json()
        assert running["status"] in ("running", "cancelled")
        assert wait_done(client, gate.id, 10)["status"] == "cancelled"
        release.set()
        # The worker is free again: the next job runs.
        after = client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png)).json()
        assert wait_done(client, after["id"])["status"] == "done"


def test_cancel_stops_a_running_patchmatch_job_between_iterations(server):
    """A big classical job is cancelled while it runs, not after its last iteration."""
    import numpy as np

    from .conftest import png_bytes

    rng = np.random.default_rng(3)
    image = png_bytes(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8))
    mask = np.zeros((384, 512), np.uint8)
    mask[96:288, 128:384] = 255
    with server.client() as client:
        job = client.post("/api/v1/inpaint", json={"image": b64(image), "mask": b64(png_bytes(mask)),
                                                    "engine": "patchmatch", "seed": 1}).json()
        with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as stream:
            name = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name == "progress":
                    first = json.loads(line[6:])
                    break
        assert first["total"] > 1, first  # reported per iteration, so there is a "between"
        client.post(f"/api/v1/jobs/{job['id']}/cancel")
        final = wait_done(client, job["id"], 60)
    assert final["status"] == "cancelled" and final["progress"]["step"] < final["progress"]["total"], final


def test_history_newest_first(server, photo_png, mask_png):
    with server.client() as client:
        ids = [client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png, seed=i)).json()["id"] for i in range(3)]
        for job_id in ids:
            wait_done(client, job_id)
        jobs = client.get("/api/v1/jobs", params={"limit": 2}).json()["jobs"]
        assert [job["id"] for job in jobs] == ids[::-1][:2]
        assert client.get("/api/v1/jobs", params={"limit": 0}).status_code == 422


def test_many_clients_all_served_in_order(server, photo_png, mask_png):
    gate, release = gate_job(server)
    submitted: list[str] = []
    lock = threading.Lock()

    def client_thread(seed: int) -> None:
        with server.client() as client:
            for k in range(3):
                with lock:  # the submission order is what FIFO must keep
                    reply = client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png, seed=seed * 10 + k))
                    assert reply.status_code == 202
                    submitted.append(reply.json()["id"])

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    release.set()
    with server.client() as client:
        finished = [wait_done(client, job_id) for job_id in submitted]
    assert len(finished) == 24 and all(job["status"] == "done" for job in finished)
    queue = server.app.state.queue
    started = [queue.get(job_id).started for job_id in submitted]
    assert started == sorted(started)  # one worker: jobs started in the order they were queued


def test_full_queue_answers_429_then_recovers(make_server, photo_png, mask_png):
    live = make_server(queue_size=2)
    with live.client() as client:
        gate, release = gate_job(live)
        replies = [client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png)) for _ in range(3)]
        assert [r.status_code for r in replies] == [202, 202, 429]
        assert "queue is full" in replies[2].json()["error"]
        assert [r.json()["position"] for r in replies[:2]] == [0, 1]
        release.set()
        for reply in replies[:2]:
            assert wait_done(client, reply.json()["id"])["status"] == "done"
        assert client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png)).status_code == 202


def test_info_routes(make_server):
    live = make_server(engine="patchmatch")
    with live.client() as client:
        health = client.get("/api/v1/health").json()
        assert health["status"] == "ok" and health["workers"] == 1 and health["queue"] == 0 and health["version"]
        engines = {row["name"]: row for row in client.get("/api/v1/engines").json()["engines"]}
        assert {"patchmatch", "telea", "diffusion"} <= set(engines) and "patch_size" in engines["patchmatch"]["options"]
        samplers = {row["name"]: row["a1111_name"] for row in client.get("/api/v1/samplers").json()["samplers"]}
        assert samplers["euler-a"] == "Euler a"
        models = client.get("/api/v1/models").json()
        assert models == {"models": [], "loras": []}  # only --model; the built-in aliases need --allow-downloads
        assert client.get("/api/v1/jobs/" + "0" * 32).status_code == 404
        assert client.get("/api/v1/jobs/not-an-id").json()["error"]


def test_openapi_matches_the_routes(server):
    with server.client() as client:
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    paths = schema["paths"]
    for task in ("inpaint", "outpaint", "edit", "generate", "understand"):
        body = paths[f"/api/v1/{task}"]["post"]["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= set(body)
        assert "seed" in body["application/json"]["schema"]["properties"]
    assert "mask" in paths["/api/v1/inpaint"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    # Every $ref points at a component that exists.
    text = json.dumps(schema)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schema["components"]["schemas"], ref
    routes = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert routes == CONTRACT
    # And every documented route exists on the live server (no 404/405 from the router).
    with server.client() as client:
        for method, path in sorted(routes):
            url = path.replace("{job_id}", "0" * 32).replace("{name}", "x.png")
            reply = client.request(method, url, json={})
            assert reply.status_code != 405, (method, path)
            assert reply.json() is None or reply.status_code != 404 or reply.json()["error"] != "Not Found", (method, path)


CONTRACT = {
    *(("POST", f"/api/v1/{task}") for task in ("inpaint", "outpaint", "edit", "generate", "understand")),
    ("GET", "/api/v1/jobs"), ("GET", "/api/v1/jobs/{job_id}"), ("GET", "/api/v1/jobs/{job_id}/events"),
    ("POST", "/api/v1/jobs/{job_id}/cancel"), ("GET", "/api/v1/results/{job_id}/{name}"),
    ("GET", "/api/v1/models"), ("GET", "/api/v1/engines"), ("GET", "/api/v1/samplers"), ("GET", "/api/v1/health"),
    ("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/img2img"), ("GET", "/sdapi/v1/sd-models"),
    ("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/options"), ("GET", "/sdapi/v1/samplers"),
    ("GET", "/sdapi/v1/progress"), ("POST", "/sdapi/v1/png-info"), ("POST", "/sdapi/v1/interrupt"),
    ("POST", "/sdapi/v1/skip"), ("GET", "/sdapi/v1/schedulers"), ("GET", "/sdapi/v1/cmd-flags"),
    ("GET", "/sdapi/v1/upscalers"), ("POST", "/sdapi/v1/interrogate"), ("POST", "/sdapi/v1/extra-single-image"),
    ("GET", "/sdapi/v1/scripts"), ("GET", "/sdapi/v1/loras"), ("GET", "/sdapi/v1/embeddings"),
    ("POST", "/sdapi/v1/refresh-checkpoints"),
    *(("GET", f"/sdapi/v1/{name}") for name in ("sd-vae", "face-restorers", "realesrgan-models", "prompt-styles",
                                                  "hypernetworks", "latent-upscale-modes")),
    # the sd-webui-controlnet extension's routes (issue 12)
    *(("GET", f"/controlnet/{name}") for name in ("version", "model_list", "module_list")),
    *(("POST", f"/controlnet/{name}") for name in ("detect", "txt2img", "img2img")),
    # masks (issue 14): native, and the sd-webui-segment-anything extension's routes
    ("POST", "/api/v1/mask"), ("GET", "/api/v1/mask/models"),
    ("GET", "/sam/heartbeat"), ("GET", "/sam/sam-model"), ("POST", "/sam/sam-predict"), ("POST", "/sam/dino-predict"),
    # video inpainting (issue 16): a queued job with frame progress
    ("POST", "/api/v1/video/inpaint"),
}


BAD_INPUTS = [
    ("malformed JSON", {"content": b'{"image": ', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("not an object", {"json": [1, 2]}, 400, "JSON object"),
    ("wrong type", {"json": {"steps": "many"}}, 422, "steps"),
    ("unknown field", {"json": {"colour": "red"}}, 422, "unknown parameter 'colour'"),
    ("unknown sampler", {"json": {"scheduler": "warp-drive"}}, 422, "unknown scheduler"),
    ("missing image", {"json": {"no_image": True}}, 400, "needs an input image"),
    ("missing mask", {"json": {"no_mask": True}}, 400, "needs a mask"),
    ("not an image", {"json": {"image_bytes": b"hello, not a picture"}}, 400, "image"),
    ("bad base64", {"json": {"image_text": "***"}}, 400, "base64"),
    # Pillow opens EPS by handing it to Ghostscript when installed: refused by its header on every upload
    ("EPS image", {"json": {"image_bytes": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"}}, 400, "image is EPS"),
    ("mask of another size", {"json": {"mask_size": (32, 32)}}, 400, "the mask is 32x32 but the image is 64x48"),
    ("model path", {"json": {"model": "/etc/passwd"}}, 400, "unknown model '/etc/passwd'"),
    ("cache_dir path", {"json": {"cache_dir": "/tmp"}}, 400, "cache_dir"),
    ("lora path", {"json": {"lora": ["/etc/shadow:0.5"]}}, 400, "unknown LoRA"),
    ("config option", {"json": {"options": {"config": "/etc"}}}, 400, "option config"),
    ("wrong content type", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(server, photo_png, mask_png, case):
    import numpy as np

    from .conftest import png_bytes

    _, kwargs, status, message = case
    kwargs = dict(kwargs)
    if "json" in kwargs and isinstance(kwargs["json"], dict):
        spec = dict(kwargs["json"])
        body = inpaint_body(photo_png, mask_png)
        if spec.pop("no_image", False):
            del body["image"]
        if spec.pop("no_mask", False):
            del body["mask"]
        if "image_bytes" in spec:
            body["image"] = b64(spec.pop("image_bytes"))
        if "image_text" in spec:
            body["image"] = spec.pop("image_text")
        if "mask_size" in spec:
            width, height = spec.pop("mask_size")
            body["mask"] = b64(png_bytes(np.zeros((height, width), np.uint8)))
        body.update(spec)
        kwargs["json"] = body
    with server.client() as client:
        reply = client.post("/api/v1/inpaint", **kwargs)
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert message in error and "\n" not in error
        assert client.get("/api/v1/health").json()["status"] == "ok"
        assert client.get("/api/v1/jobs").json()["jobs"] == []  # nothing was queued


def test_huge_images_and_bodies(make_server, photo_png, mask_png):
    import numpy as np

    from .conftest import png_bytes

    live = make_server(max_pixels=64 * 64, max_upload_mb=0.05)
    with live.client() as client:
        big = png_bytes(np.zeros((60, 80, 3), np.uint8))
        reply = client.post("/api/v1/inpaint", json=inpaint_body(big, mask_png))
        assert reply.status_code == 400 and "limit" in reply.json()["error"] and reply.json()["field"] == "image"
        noise = png_bytes(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
        reply = client.post("/api/v1/inpaint", json=inpaint_body(noise, mask_png))
        assert reply.status_code == 413 and "upload limit" in reply.json()["error"]
        reply = client.post("/api/v1/inpaint", files={"image": ("a.png", noise, "image/png")})
        assert reply.status_code == 413
        reply = client.post("/api/v1/outpaint", json={"image": b64(photo_png), "engine": "telea", "right": 64})
        assert reply.status_code == 400 and "pixel limit" in reply.json()["error"]
        reply = client.post("/api/v1/generate", json={"prompt": "x", "size": 512})
        assert reply.status_code == 400
        assert client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png)).status_code == 202


def test_results_only_from_the_output_folder(server, photo_png, mask_png, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(photo_png)
    with server.client() as client:
        job = wait_done(client, client.post("/api/v1/inpaint", json=inpaint_body(photo_png, mask_png)).json()["id"])
        name = job["result"]["images"][0]["url"].rsplit("/", 1)[1]
        for url in (f"/api/v1/results/{job['id']}/..%2F..%2Fsecret.png", f"/api/v1/results/{job['id']}/../../secret.png",
                    f"/api/v1/results/..%2F{job['id']}/{name}", f"/api/v1/results/{job['id']}/.hidden.png",
                    f"/api/v1/results/{job['id']}/", "/static/../app.py", "/static/"):
            reply = client.get(url)
            assert reply.status_code == 404, url
            assert reply.content != photo_png


def test_understand_and_unified_inpaint_with_a_tiny_unified_model(make_server, tmp_path_factory, photo_png, mask_png):
    pytest.importorskip("transformers")
    from unified import tiny as unified_tiny

    folder = unified_tiny.shared_bundle_folder(tmp_path_factory)
    live = make_server(engine="unified", models=[str(folder)])
    with live.client() as client:
        reply = client.post("/api/v1/understand", json={"image": b64(photo_png), "questions": ["What is it?", "Colour?"],
                                                        "max_new_tokens": 4})
        assert reply.status_code == 202, reply.text
        job = wait_done(client, reply.json()["id"])
        assert job["status"] == "done", job["error"]
        answers = job["result"]["answers"]
        assert [a["question"] for a in answers] == ["What is it?", "Colour?"] and job["result"]["images"] == []
        assert job["result"]["recipe"]["task"] == "understand"
        events_job = client.post("/api/v1/inpaint", json={"image": b64(photo_png), "mask": b64(mask_png), "steps": 2,
                                                          "seed": 1, "prompt": "a cup"}).json()
        events = read_events(client, events_job["id"])
        assert events[-1][1]["status"] == "done", events[-1][1]["error"]
        assert events[-1][1]["result"]["recipe"]["request"]["engine"] == "unified"
        assert any(name == "progress" and data["total"] == 2 for name, data in events)


def test_a_job_failing_inside_a_library_names_no_server_folder(tmp_path):
    from canvaslab.errors import EngineError
    from canvaslab.server.jobs import JobQueue

    def crash():
        raise RuntimeError("cannot open /srv/models/secret-project/unet/weights.bin")
        yield

    def refuse():
        raise EngineError("the model in /srv/models/secret-project/unet is not an inpainting model")
        yield

    queue = JobQueue(tmp_path)
    try:
        jobs = [queue.submit("inpaint", crash), queue.submit("inpaint", refuse)]
        for job in jobs:
            assert job.done_flag.wait(10)
        texts = [job.error for job in jobs]
    finally:
        queue.stop()
    assert all("/srv" not in text and "secret-project" not in text for text in texts), texts
    assert "weights.bin" in texts[0] and texts[0].startswith("internal error: RuntimeError")
