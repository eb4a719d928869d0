"""The browser UI in a real headless browser (Debian's chromium driven by Playwright).

A live server on a loopback port serves the page; the tests use it as a person would: open an
image, paint a stroke with the mouse, pick the classical engine, run, compare, download. The
downloaded PNG must carry its recipe, and its pixels must show that the painted mask (not some
other region) was filled.

Set-up these tests need (they skip with the reason otherwise): `pip install playwright` (no
`playwright install`: the browser is the system one) and `apt-get install -y chromium`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from canvaslab.core.metadata import read_metadata

from .browser import launched, opened, require_playwright

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

sync_api = require_playwright()
uvicorn = pytest.importorskip("uvicorn", reason="the browser test needs the server extra (fastapi, uvicorn)")

from canvaslab.server import ServerSettings, create_app  # noqa: E402  (after the skips: fastapi may be absent)

expect = sync_api.expect
WIDTH, HEIGHT = 96, 64
BAR_ROWS = slice(28, 37)  # a white bar the test paints over; telea must fill it from the gradient around
BAR_COLS = slice(16, 81)


def scene() -> np.ndarray:
    """A smooth gradient with a white bar: filling the bar from its surroundings visibly removes it."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 2, y * 3, 255 - x * 2], axis=-1).clip(0, 255).astype(np.uint8)
    rgb[BAR_ROWS, BAR_COLS] = 255
    return rgb


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app (create_app + uvicorn) in a thread, on a free loopback port; yields its base URL."""
    settings = ServerSettings(output=tmp_path_factory.mktemp("server-output"))
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free port; uvicorn serves this very socket
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched(sync_api) as browser:
        yield browser


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    with opened(browser, server) as page:
        yield page


@pytest.fixture
def scene_png(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(scene()).save(path)
    return path


def open_image(page: Page, path: Path) -> None:
    page.get_by_label("Image file").set_input_files(str(path))
    expect(page.locator("#image-info")).to_contain_text(f"{WIDTH} × {HEIGHT}")


def to_screen(box: Mapping[str, float], x: float, y: float) -> tuple[float, float]:
    """Screen position of image pixel (x, y) on a canvas showing the image scaled to `box`."""
    return box["x"] + (x + 0.5) * box["width"] / WIDTH, box["y"] + (y + 0.5) * box["height"] / HEIGHT


def paint_stroke(page: Page, y: int, x0: int, x1: int) -> None:
    """A left-button mouse drag along image row y from x0 to x1."""
    box = page.locator("#mask-canvas").bounding_box()
    assert box is not None, "the mask canvas is not on screen"
    page.mouse.move(*to_screen(box, x0, y))
    page.mouse.down()
    page.mouse.move(*to_screen(box, x1, y), steps=12)
    page.mouse.up()


def run_and_download(page: Page, tmp_path: Path) -> Path:
    """Press Run, wait for the result image, download it through the page's link."""
    page.get_by_role("button", name="Run").click()
    result = page.get_by_role("img", name="Result")
    expect(result).to_be_visible()
    page.wait_for_function("() => document.getElementById('result-img').naturalWidth > 0")
    expect(page.get_by_role("alert")).to_be_hidden()
    with page.expect_download() as info:
        page.get_by_role("link", name="Download").click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    return path


def test_paint_a_mask_run_telea_and_download_the_recipe(page: Page, scene_png: Path, tmp_path: Path) -> None:
    open_image(page, scene_png)
    # Running with nothing painted is refused in one line, before anything is sent.
    page.get_by_role("button", name="Run").click()
    expect(page.get_by_role("alert")).to_contain_text("mask is empty")

    page.get_by_label("Brush size").fill("14")
    page.keyboard.press("]")  # the bracket keys resize the brush
    assert int(page.get_by_label("Brush size").input_value()) > 14
    page.get_by_label("Brush size").fill("14")
    paint_stroke(page, y=32, x0=20, x1=76)
    expect(page.locator("#mask-info")).not_to_contain_text("covers 0.0%")
    page.keyboard.press("Control+z")
    expect(page.locator("#mask-info")).to_contain_text("covers 0.0%")
    page.keyboard.press("Control+Shift+z")
    expect(page.locator("#mask-info")).not_to_contain_text("covers 0.0%")

    page.get_by_label("Engine").select_option("telea")
    expect(page.get_by_label("Prompt", exact=True)).to_be_hidden()  # classical engines take no prompt
    path = run_and_download(page, tmp_path)

    slider = page.get_by_label("Before/after comparison")
    expect(slider).to_be_visible()
    expect(page.get_by_role("img", name="Before")).to_be_visible()
    slider.fill("20")
    assert page.locator("#compare").evaluate("el => el.style.getPropertyValue('--split')") == "20%"

    metadata = read_metadata(path)
    assert metadata.recipe is not None and metadata.parameters is not None
    assert metadata.recipe["task"] == "inpaint"
    assert metadata.recipe["request"]["engine"] == "telea"
    assert "telea" in metadata.parameters

    before, after = scene().astype(int), np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert after.shape == before.shape
    # Under the stroke the white bar is filled from the gradient; far from it nothing moved.
    under = np.abs(after[30:35, 30:66] - before[30:35, 30:66]).mean()
    assert under > 40, f"the painted bar was not filled (mean change {under:.1f})"
    np.testing.assert_array_equal(after[:18], before[:18])
    np.testing.assert_array_equal(after[48:], before[48:])
    np.testing.assert_array_equal(after[:, :8], before[:, :8])
    np.testing.assert_array_equal(after[:, 90:], before[:, 90:])

    history = page.get_by_role("list", name="History").get_by_role("button")
    expect(history.first).to_be_visible()


def test_outpaint_one_side_by_pixels_makes_the_image_wider(page: Page, scene_png: Path, tmp_path: Path) -> None:
    page.get_by_role("tab", name="Outpaint").click()
    expect(page.get_by_role("toolbar", name="Mask tools")).to_be_hidden()
    open_image(page, scene_png)
    for side in ("Top", "Left", "Bottom"):
        page.get_by_label(side, exact=True).uncheck()
    page.get_by_label("Right", exact=True).check()
    page.get_by_label("Pixels per side").fill("32")
    expect(page.locator("#outpaint-size")).to_contain_text(f"{WIDTH + 32} × {HEIGHT}")
    page.get_by_label("Engine").select_option("telea")
    path = run_and_download(page, tmp_path)

    metadata = read_metadata(path)
    assert metadata.recipe is not None
    assert metadata.recipe["task"] == "outpaint"
    assert metadata.recipe["request"]["engine"] == "telea"
    assert metadata.recipe["request"]["right"] == 32
    with Image.open(path) as result:
        assert result.size == (WIDTH + 32, HEIGHT)
        kept = np.asarray(result.convert("RGB"))[:, :WIDTH].astype(int)
    # The original sits at the left, unchanged away from the seam band the engine may blend.
    np.testing.assert_array_equal(kept[:, :WIDTH - 16], scene()[:, :WIDTH - 16].astype(int))
