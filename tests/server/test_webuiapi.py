"""The AUTOMATIC1111 subset through the real `webuiapi` client, with its own defaults, on a live server.

`webuiapi.img2img` sends `inpaint_full_res=True`, padding 0, 512x512, "Euler a" and a pile of fields
we ignore; these tests call it the way its README does and check the pictures that come back.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from canvaslab.core.metadata import read_metadata

from .conftest import b64, png_bytes

webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client tests need webuiapi (the dev extra)")

STRONG = "a-strong-token-0123456789"


def client_for(live, **kwargs) -> "webuiapi.WebUIApi":  # type: ignore[no-untyped-def]
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.settings.port, **kwargs)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real 64x48 photo crop."""
    from .conftest import EXAMPLES

    return Image.open(EXAMPLES / "coffee.png").convert("RGB").resize((64, 48), Image.Resampling.LANCZOS)


def box_mask(mode: str = "L") -> tuple[Image.Image, np.ndarray]:
    fill = np.zeros((48, 64), bool)
    fill[16:32, 20:44] = True
    return Image.fromarray((fill * 255).astype(np.uint8)).convert(mode), fill


def test_default_img2img_just_works_on_the_default_engine(server, photo):
    mask, fill = box_mask()
    result = client_for(server).img2img(images=[photo], mask_image=mask, seed=7)
    out = np.asarray(result.image.convert("RGB"))
    original = np.asarray(photo)
    # A1111's "only masked": the picture keeps its size, only the masked pixels change.
    assert out.shape == original.shape
    assert np.array_equal(out[~fill], original[~fill])
    assert not np.array_equal(out[fill], original[fill])
    info = result.info
    # What PatchMatch does not read (the crop's working size, sampler, CFG, strength) is reported, not refused.
    ignored = set(info["canvaslab"]["ignored_fields"])
    assert info["canvaslab"]["engine"] == "patchmatch"
    assert {"width", "height", "sampler_name", "cfg_scale", "denoising_strength"} <= ignored
    recipe = read_metadata(_png(result.image)).recipe
    assert recipe["request"]["area"] == "masked" and recipe["request"]["scheduler"] is None


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_text_info(image))
    return buffer.getvalue()


def _text_info(image: Image.Image):  # type: ignore[no-untyped-def]
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    return info


def test_padding_zero_gives_classical_engines_context_everywhere(make_server, photo):
    """A mask touching nothing but itself: every context-needing engine still gets pixels to fill from."""
    mask, fill = box_mask()
    for engine in ("patchmatch", "telea", "ns"):
        live = make_server(engine=engine)
        result = client_for(live).img2img(images=[photo], mask_image=mask, seed=1, mask_blur=0,
                                          inpaint_full_res_padding=0)
        out = np.asarray(result.image.convert("RGB"))
        assert np.array_equal(out[~fill], np.asarray(photo)[~fill]), engine


@pytest.mark.parametrize("stroke", [(255, 255, 255, 255), (0, 0, 0, 255)], ids=["white strokes", "black strokes"])
def test_rgba_masks_on_a_transparent_background(make_server, photo, stroke):
    """A1111 reads an RGBA mask's alpha: opaque = inpaint, transparent = keep (in both size paths)."""
    live = make_server(engine="telea")
    _, fill = box_mask()
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[...] = (255, 255, 255, 0)  # transparent white, what mask painters export
    rgba[fill] = stroke
    mask = Image.fromarray(rgba, "RGBA")
    api = client_for(live)
    same = api.img2img(images=[photo], mask_image=mask, inpaint_full_res=False, width=64, height=48, mask_blur=0)
    out = np.asarray(same.image.convert("RGB"))
    assert np.array_equal(out[~fill], np.asarray(photo)[~fill])
    resized = api.img2img(images=[photo], mask_image=mask, inpaint_full_res=False, width=96, height=72, mask_blur=0)
    out = np.asarray(resized.image.convert("RGB"))
    expected = np.asarray(photo.resize((96, 72), Image.Resampling.LANCZOS))
    keep = ~np.asarray(Image.fromarray(fill).resize((96, 72), Image.Resampling.NEAREST))
    assert out.shape == (72, 96, 3) and np.array_equal(out[keep], expected[keep])


def test_resize_path_applies_exif_orientation(make_server, photo):
    """A phone photo stored sideways with an EXIF orientation is resized as shown, not squashed."""
    import httpx

    live = make_server(engine="telea")
    stored = photo.transpose(Image.Transpose.ROTATE_90)  # 48x64 on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue())))), np.asarray(photo))
    mask, fill = box_mask()
    body = {"init_images": [b64(buffer.getvalue())], "mask": b64(png_bytes(np.asarray(mask))), "width": 96,
            "height": 72, "inpaint_full_res": False, "mask_blur": 0}
    with httpx.Client(base_url=live.url, timeout=60) as client:
        reply = client.post("/sdapi/v1/img2img", json=body)
    assert reply.status_code == 200, reply.text
    import base64

    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]))).convert("RGB"))
    expected = np.asarray(photo.resize((96, 72), Image.Resampling.LANCZOS))
    keep = ~np.asarray(Image.fromarray(fill).resize((96, 72), Image.Resampling.NEAREST))
    assert out.shape == (72, 96, 3) and np.array_equal(out[keep], expected[keep])


def test_routes_clients_call(server, photo):
    api = client_for(server)
    assert {"name": "automatic", "label": "Automatic"}.items() <= api.get_schedulers()[0].items()
    assert "karras" in [s["name"] for s in api.get_schedulers()]
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    flags = api.get_cmd_flags()
    assert flags["api"] is True and flags["port"] == server.settings.port and "/" not in str(flags)
    assert [u["name"] for u in api.get_upscalers()][:3] == ["None", "Lanczos", "Nearest"]
    for empty in (api.get_sd_vae(), api.get_face_restorers(), api.get_realesrgan_models(), api.get_prompt_styles(),
                  api.get_hypernetworks(), api.get_loras(), api.get_latent_upscale_modes()):
        assert empty == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.refresh_checkpoints() is None
    api.util_wait_for_ready(check_interval=0.1)
    # extras: upscaler None returns the picture as it was; Lanczos/Nearest scale it as A1111 does.
    same = api.extra_single_image(photo)
    assert np.array_equal(np.asarray(same.image.convert("RGB")), np.asarray(photo))
    bigger = api.extra_single_image(photo, upscaler_1="Lanczos", upscaling_resize=2)
    assert bigger.image.size == (128, 96)
    exact = api.extra_single_image(photo, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=100,
                                   upscaling_resize_h=100, upscaling_crop=True)
    assert exact.image.size == (100, 100)
    with pytest.raises(RuntimeError, match="unknown upscaler"):
        api.extra_single_image(photo, upscaler_1="4x-UltraSharp")
    with pytest.raises(RuntimeError, match="limit"):
        api.extra_single_image(photo, upscaler_1="Lanczos", upscaling_resize=64)
    # No unified model on this server: interrogate says so in one line.
    with pytest.raises(RuntimeError, match="unified model"):
        api.interrogate(photo)


def test_interrogate_with_the_unified_model(make_server, tmp_path_factory, photo):
    pytest.importorskip("transformers")
    from unified import tiny as unified_tiny

    folder = unified_tiny.shared_bundle_folder(tmp_path_factory)
    live = make_server(engine="unified", models=[str(folder)])
    result = client_for(live).interrogate(photo)
    assert isinstance(result.info, str) and result.json["caption"] == result.info
    with pytest.raises(RuntimeError, match="interrogate model"):
        client_for(live).interrogate(photo, model="blip-9000")


def test_basic_auth_carries_the_token(make_server, photo):
    live = make_server(token=STRONG, engine="telea")
    mask, fill = box_mask()
    api = client_for(live, username="anyone", password=STRONG)
    result = api.img2img(images=[photo], mask_image=mask, seed=2)
    assert np.array_equal(np.asarray(result.image.convert("RGB"))[~fill], np.asarray(photo)[~fill])
    wrong = client_for(live, username="anyone", password="not-the-token-0123")
    with pytest.raises(RuntimeError, match="401"):
        wrong.img2img(images=[photo], mask_image=mask)


def test_skip_ends_the_current_image_only(server, photo):
    """skip: the running image of a batch is dropped, the next ones are made."""
    from canvaslab.core.progress import report_progress
    from canvaslab.server.jobs import each_result

    import canvaslab

    mask = box_mask()[1]
    started = threading.Event()

    def make(index: int):  # type: ignore[no-untyped-def]
        if index == 0:
            started.set()
            for step in range(1, 2001):  # 20 s unless skipped
                report_progress(step, 2000)
                time.sleep(0.01)
        return canvaslab.inpaint(np.asarray(photo), mask, engine="telea", seed=index)

    job = server.app.state.queue.submit("inpaint", lambda: each_result(3, make), expected=3)
    assert started.wait(10)
    api = client_for(server)
    assert api.get_progress()["state"]["job"] == job.id
    api.skip()
    assert job.done_flag.wait(20)
    assert job.status.value == "done" and [image.seed for image in job.images] == [1, 2]
