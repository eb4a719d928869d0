"""The browser UI's Control panel in a real headless chromium (Playwright) against a live server offering a
tiny SD model and a tiny ControlNet: the panel lists the server's ControlNet and preprocessors, shows the
chosen preprocessor's settings, previews the map through /controlnet/detect (the same pixels the
preprocessor makes), and a run sends the unit, which the result's recipe records. Without a diffusion
engine the panel is not shown."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canvaslab.core.metadata import read_metadata
from canvaslab.server.settings import ServerSettings

from .browser import launched, opened, require_playwright
from .conftest import EXAMPLES, start_server

sync_api = require_playwright()
pytest.importorskip("diffusers", reason="the Control panel's models need the diffusion extra")

expect = sync_api.expect
SIZE = 64


@pytest.fixture(scope="module")
def live(tmp_path_factory):  # type: ignore[no-untyped-def]
    from diffusion import tiny, tiny_control

    root = tmp_path_factory.mktemp("ui-control")
    model = tiny.save_pipeline_folder("sd-txt2img", root / "tiny-sd")
    net = tiny_control.save_controlnet(tiny.build_unet(4), root / "tiny-canny")
    server = start_server(ServerSettings(output=root / "out", engine="diffusion", models=[str(model)],
                                         control_models=[str(net)]))
    yield server
    server.stop()


@pytest.fixture
def page(live) -> Iterator:  # type: ignore[no-untyped-def]
    with launched(sync_api) as browser, opened(browser, live.url, height=1200) as page:
        yield page


@pytest.fixture
def picture(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgb = Image.open(EXAMPLES / "coffee.png").convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    rgb.save(tmp_path / "coffee.png")
    return tmp_path / "coffee.png", np.asarray(rgb)


def paint_box(page) -> None:  # type: ignore[no-untyped-def]
    box = page.locator("#mask-canvas").bounding_box()
    scale = box["width"] / SIZE
    page.get_by_label("Brush size").fill("12")
    page.mouse.move(box["x"] + 20 * scale, box["y"] + 32 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + 44 * scale, box["y"] + 32 * scale, steps=8)
    page.mouse.up()


def test_control_panel_previews_the_map_and_runs_the_unit(page, picture, tmp_path):  # type: ignore[no-untyped-def]
    from canvaslab.engines.diffusion import preprocessors

    path, rgb = picture
    page.get_by_label("Image file").set_input_files(str(path))
    expect(page.locator("#image-info")).to_contain_text(f"{SIZE} × {SIZE}")
    panel = page.locator("#control-panel")
    page.get_by_label("Engine").select_option("diffusion")
    expect(panel).to_be_visible()
    page.get_by_label("ControlNet", exact=True).select_option("tiny-canny")
    page.get_by_label("Preprocessor").select_option("canny")
    expect(page.get_by_label("Low threshold")).to_have_value("100")  # the preprocessor's own settings
    page.get_by_label("Low threshold").fill("50")
    page.get_by_label("High threshold").fill("150")
    page.get_by_role("button", name="Preview map").click()
    preview = page.get_by_role("img", name="Control map")
    expect(preview).to_be_visible()
    data = preview.get_attribute("src").split(",", 1)[1]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    assert np.array_equal(shown, preprocessors.run("canny", rgb, threshold_a=50, threshold_b=150))

    paint_box(page)
    page.get_by_label("Steps").fill("2")
    page.get_by_label("Control weight").fill("0.8")
    page.get_by_role("button", name="Run").click()
    page.wait_for_function("() => document.getElementById('result-img').naturalWidth > 0")
    expect(page.get_by_role("alert")).to_be_hidden()
    with page.expect_download() as info:
        page.get_by_role("link", name="Download").click()
    out = tmp_path / info.value.suggested_filename
    info.value.save_as(out)
    unit = read_metadata(out).recipe["request"]["control"][0]
    assert unit["model"] == "tiny-canny" and unit["weight"] == 0.8 and unit["preprocessor"] == "canny"
    assert (unit["threshold_a"], unit["threshold_b"]) == (50, 150) and unit["image"] is None
