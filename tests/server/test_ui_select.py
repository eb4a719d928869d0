"""The browser UI's Select tool in a real headless chromium (Playwright) against a live server offering a
tiny random SAM: a click asks /api/v1/mask, the proposal appears over the image in its own colour where
the click was, a right-click adds a point that is not on the object (and the embedding is reused), and
Add / Subtract change the painted mask. The tiny model's decoder is made to answer a disk at the prompt
(tests/masks/test_sam.py), so where the proposal lands says where the click landed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canvaslab.server.settings import ServerSettings

from .browser import launched, opened, require_playwright
from .conftest import start_server

sync_api = require_playwright()
pytest.importorskip("transformers", reason="the Select tool's model needs the diffusion extra (torch, transformers)")

expect = sync_api.expect
WIDTH, HEIGHT = 120, 80


@pytest.fixture(scope="module")
def sam(tmp_path_factory) -> Path:
    from masks import tiny

    return tiny.save_sam(tmp_path_factory.mktemp("ui-sam") / "tiny-sam")


@pytest.fixture(scope="module")
def live(sam, tmp_path_factory):
    server = start_server(ServerSettings(output=tmp_path_factory.mktemp("out"), mask_models=[str(sam)]))
    yield server
    server.stop()


@pytest.fixture
def page(live, sam) -> Iterator:
    from masks.test_sam import blob_at_the_prompt

    from canvaslab.masks.models import resolve
    from canvaslab.masks.sam import segmenter

    seg = segmenter(resolve(str(sam)), "cpu")
    with blob_at_the_prompt(seg.model, radius_frac=0.08), launched(sync_api) as browser, opened(browser, live.url) as page:
        yield page


def pixel(page, canvas: str, x: int, y: int) -> list[int]:
    return page.evaluate(
        "([id, x, y]) => Array.from(document.getElementById(id).getContext('2d').getImageData(x, y, 1, 1).data)",
        [canvas, x, y],
    )


def click_at(page, x: float, y: float, button: str = "left") -> None:
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / WIDTH, box["y"] + (y + 0.5) * box["height"] / HEIGHT,
                     button=button)


def test_click_an_object_see_the_proposal_and_add_it_to_the_mask(page, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    page.get_by_label("Image file").set_input_files(str(path))
    expect(page.locator("#image-info")).to_contain_text(f"{WIDTH} × {HEIGHT}")

    page.get_by_role("button", name="Select", exact=True).click()
    expect(page.get_by_role("button", name="Select", exact=True)).to_have_attribute("aria-pressed", "true")
    click_at(page, 30, 40)
    info = page.locator("#select-info")
    expect(info).to_contain_text("proposal covers")
    expect(info).to_contain_text("image embedded")
    # the proposal is drawn in the Select tool's colour at the click, and nothing far from it
    inside, outside = pixel(page, "select-canvas", 30, 36), pixel(page, "select-canvas", 100, 10)
    assert inside[3] > 0 and inside[2] > inside[0], inside
    assert outside[3] == 0, outside
    assert pixel(page, "mask-canvas", 30, 36)[3] == 0  # a proposal is not yet the mask
    expect(page.locator("#mask-info")).to_contain_text("covers 0.0%")

    click_at(page, 100, 10, button="right")  # a point not on the object: asked again, the embedding kept
    expect(info).to_contain_text("2 point(s)")
    expect(info).to_contain_text("embedding reused")

    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("#mask-info")).not_to_contain_text("covers 0.0%")
    assert pixel(page, "mask-canvas", 30, 36)[3] == 255 and pixel(page, "mask-canvas", 100, 10)[3] == 0
    assert pixel(page, "select-canvas", 30, 36)[3] == 0  # the points and the proposal are cleared

    click_at(page, 30, 40)
    expect(info).to_contain_text("proposal covers")
    page.keyboard.press("Shift+Enter")  # subtract: the mask is empty again
    expect(page.locator("#mask-info")).to_contain_text("covers 0.0%")
    page.keyboard.press("Control+z")  # one undo step brings it back
    expect(page.locator("#mask-info")).not_to_contain_text("covers 0.0%")

    page.get_by_role("button", name="Brush").click()
    expect(page.get_by_role("button", name="Select", exact=True)).to_have_attribute("aria-pressed", "false")
