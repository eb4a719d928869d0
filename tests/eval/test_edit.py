"""An edit protocol run end to end: a tiny InstructPix2Pix pipeline edits every case with its own
instruction, CLIP metrics from a tiny CLIP folder, and the report's image-guidance trade-off plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .test_cli import cli, cli_json

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def edit_protocol(photos, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edit-data")
    data = root / "edits"
    for folder in ("input", "edited"):
        (data / folder).mkdir(parents=True)
    captions = []
    for name, instruction in (("coffee", "make it a cup of tea"), ("rocket", "make it night")):
        image = Image.open(photos / f"{name}.png").convert("RGB").resize((64, 48))
        image.save(data / "input" / f"{name}.png")
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(data / "edited" / f"{name}.png")
        (data / "edited" / f"{name}.txt").write_text(instruction)
        captions.append(json.dumps({"key": name, "input_caption": f"a photo of {name}", "output_caption": instruction}))
    (root / "captions.jsonl").write_text("\n".join(captions) + "\n")
    code, _, err = cli("eval", "protocol", "edit", "--data", data, "--captions", root / "captions.jsonl", "-o", root / "protocol")
    assert code == 0, err
    return root / "protocol"


@pytest.fixture(scope="module")
def pix2pix(tmp_path_factory) -> Path:
    from diffusion.tiny import save_pipeline_folder

    return save_pipeline_folder("sd-pix2pix", tmp_path_factory.mktemp("tiny-pix2pix") / "model")


def test_edit_runs_use_each_cases_instruction_and_plot_the_guidance_sweep(edit_protocol, pix2pix, clip_dir, tmp_path):
    runs = []
    for scale in (1.0, 2.0):
        run = tmp_path / f"ig{scale}.json"
        cli_json("eval", "run", "-p", edit_protocol, "--model", pix2pix, "--set", "steps=2", "--set",
                 f"image_guidance_scale={scale}", "--metrics", "pixels,clip", "--clip", clip_dir, "-o", run, "--seed", "5")
        runs.append(run)
    first, second = (json.loads(r.read_text()) for r in runs)
    assert first["protocol"]["task"] == "edit" and "prompt" not in first["system"]["request"]
    assert first["system"]["request"]["image_guidance_scale"] == 1.0
    for case in first["cases"]:
        output = Image.open(case["output"])
        assert output.size == (64, 48)
        assert output.text["parameters"].startswith(json.loads((edit_protocol / "protocol.json").read_text())["cases"][
            [c["id"] for c in first["cases"]].index(case["id"])]["instruction"])
        assert {"psnr", "ssim", "l1", "clip_score", "clip_t", "clip_i", "clip_img", "clip_dir"} <= set(case)
        assert "psnr_hole" not in case  # no mask in an edit
    assert any(not np.array_equal(np.asarray(Image.open(a["output"])), np.asarray(Image.open(b["output"])))
               for a, b in zip(first["cases"], second["cases"]))  # the guidance scale reached the pipeline
    page = tmp_path / "report.html"
    code, _, err = cli("eval", "report", *runs, "-o", page)
    assert code == 0, err
    text = page.read_text()
    assert "Edit strength trade-off" in text and ">1<" in text and ">2<" in text  # the points, by image guidance
    code, _, err = cli("eval", "run", "-p", edit_protocol, "--model", pix2pix, "--prompt", "x", "-o", tmp_path / "x.json")
    assert code == 2 and "an edit protocol gives each case its instruction" in err


def test_an_edit_model_that_is_not_there_stops_at_the_first_case(edit_protocol, tmp_path):
    code, _, err = cli("eval", "run", "-p", edit_protocol, "--model", tmp_path / "no-model", "-o", tmp_path / "r.json")
    assert code == 3 and err.count("\n") == 1 and "no-model" in err and not (tmp_path / "r.json").exists()
