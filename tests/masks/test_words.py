"""Masks from words with tiny random CLIPSeg, OWL-ViT, OWLv2 and Grounding DINO models loaded through the
public resolver: where a score or a box the model gives lands in the image (non-square inputs), the
grounded-SAM path (a detector's boxes -> SAM), thresholds, several phrases, one-line errors."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from canvaslab.errors import InputError
from canvaslab.masks.clipseg import text_segmenter
from canvaslab.masks.detect import detector
from canvaslab.masks.models import resolve
from canvaslab.masks.sam import EmbeddingCache, segmenter
from canvaslab.tasks.mask import make_mask
from masks.test_sam import blob_at_the_prompt, scene

DETECTORS = ("owlvit", "owlv2", "grounding")


@contextmanager
def answer(model: torch.nn.Module, **fields: torch.Tensor):
    """Make `model` return these output fields (logits, pred_boxes) whatever it is shown."""

    def replace(module, args, output):
        for name, value in fields.items():
            output[name] = value.expand_as(output[name]).clone()  # ModelOutput: item and attribute together
        return output

    handle = model.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def detects_one(det, box_cxcywh: tuple[float, float, float, float]):
    def replace(module, args, output):
        real = torch.isfinite(output.logits)  # Grounding DINO: -inf past the text's tokens stays so
        logits = torch.where(real, -20.0, output.logits)
        logits[:, 0] = torch.where(real[:, 0], 20.0, output.logits[:, 0])
        boxes = output.pred_boxes.clone()
        boxes[:, 0] = torch.tensor(box_cxcywh)
        output["logits"], output["pred_boxes"] = logits, boxes
        return output

    handle = det.model.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def test_clipseg_scores_land_at_the_same_relative_place_on_a_non_square_image(mask_models):
    seg = text_segmenter(resolve(str(mask_models["clipseg"]), want="text"), "cpu")
    logits = torch.full((1, 32, 32), -10.0)
    logits[:, 8:16, 20:28] = 10.0  # model frame rows 8-16 of 32, columns 20-28 of 32
    with answer(seg.model, logits=logits):
        mask, top = seg.mask(scene(120, 50), ["the spoon"], threshold=0.5)
    assert mask.shape == (50, 120) and top > 0.99
    ys, xs = np.nonzero(mask)
    # 20/32 * 120 = 75 .. 28/32 * 120 = 105; 8/32 * 50 = 12.5 .. 16/32 * 50 = 25 (bilinear edge within a pixel or two)
    assert abs(xs.min() - 75) <= 2 and abs(xs.max() - 104) <= 2
    assert abs(ys.min() - 12.5) <= 1.5 and abs(ys.max() - 24) <= 1.5


def test_clipseg_threshold_and_phrases_with_the_real_random_model(mask_models):
    seg = text_segmenter(resolve(str(mask_models["clipseg"]), want="text"), "cpu")
    rgb = scene(90, 60, seed=4)
    scores = seg.scores(rgb, ["the spoon", "a cup"])
    assert scores.shape == (2, 60, 90) and scores.dtype == np.float32 and 0 <= scores.min() <= scores.max() <= 1
    np.testing.assert_array_equal(scores, seg.scores(rgb, ["the spoon", "a cup"]))  # deterministic
    cut = float(np.median(scores))
    low, _ = seg.mask(rgb, ["the spoon"], cut - 0.01)
    high, _ = seg.mask(rgb, ["the spoon"], cut + 0.01)
    assert not (high & ~low).any() and (low & ~high).any()  # a higher threshold keeps fewer pixels, never new ones
    both, _ = seg.mask(rgb, ["the spoon", "a cup"], cut)
    np.testing.assert_array_equal(both, (scores > cut).any(axis=0))


@pytest.mark.parametrize("name", DETECTORS)
def test_a_detector_box_maps_back_to_image_pixels(mask_models, name):
    """Query 0 answers the normalised box (cx 0.25, cy 0.2, w 0.2, h 0.1) of what the model saw. OWL-ViT
    and Grounding DINO see the image stretched, so it is that fraction of 120 x 50; OWLv2 sees it padded
    to a 120 x 120 square at the bottom, so y is a fraction of 120."""
    det = detector(resolve(str(mask_models[name]), want="text"), "cpu")
    with detects_one(det, (0.25, 0.2, 0.2, 0.1)):
        boxes = det.boxes(scene(120, 50), ["the spoon"], threshold=0.5)
    assert len(boxes) == 1 and boxes[0].phrase == "the spoon" and boxes[0].score > 0.99
    expected = (18, 18, 42, 30) if name == "owlv2" else (18, 7.5, 42, 12.5)
    np.testing.assert_allclose(boxes[0].xyxy, expected, atol=0.6)


@pytest.mark.parametrize("name", DETECTORS)
def test_words_through_a_detector_and_sam_mask_the_box(mask_models, name):
    """The grounded-SAM path: the detector's box goes to SAM, whose answer (a disk at the box centre the
    prompt encoder received) lands at the box centre in the image."""
    det = detector(resolve(str(mask_models[name]), want="text"), "cpu")
    seg = segmenter(resolve(str(mask_models["sam"]), want="sam"), "cpu")
    with detects_one(det, (0.25, 0.2, 0.2, 0.2)), blob_at_the_prompt(seg.model, radius_frac=0.05):
        made = make_mask(scene(120, 50), text=["the spoon"], text_model=str(mask_models[name]),
                         model=str(mask_models["sam"]), threshold=0.5, device="cpu", cache=EmbeddingCache())
    box = made.boxes[0]["box"]
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    ys, xs = np.nonzero(made.mask)
    assert made.mask[round(centre[1]), round(centre[0])]
    assert abs(xs.mean() - centre[0]) <= 3 and abs(ys.mean() - centre[1]) <= 3
    assert made.recipe["request"]["text"] == ["the spoon"] and set(made.recipe["models"]) == {"model", "text_model"}


def test_a_detector_that_finds_nothing_gives_an_empty_mask_and_says_so(mask_models):
    det = detector(resolve(str(mask_models["owlvit"]), want="text"), "cpu")
    with detects_one(det, (0.5, 0.5, 0.2, 0.2)):
        made = make_mask(scene(), text=["the spoon"], text_model=str(mask_models["owlvit"]), threshold=1.0,
                         model=str(mask_models["sam"]), device="cpu")
    assert not made.mask.any() and made.boxes == []
    assert any("the mask is empty" in note for note in made.notices)


def test_word_errors_are_one_line(mask_models):
    with pytest.raises(InputError, match="is a Segment Anything model, but this needs a CLIPSeg model or an object detector"):
        make_mask(scene(), text=["x"], text_model=str(mask_models["sam"]), device="cpu")
    with pytest.raises(InputError, match="CLIPSeg scores pixels itself"):
        make_mask(scene(), text=["x"], text_model=str(mask_models["clipseg"]), multimask=True, device="cpu")
    with pytest.raises(InputError, match="is an object detector, but this needs a Segment Anything model"):
        make_mask(scene(), text=["x"], text_model=str(mask_models["owlvit"]), model=str(mask_models["owlv2"]),
                  threshold=0.0, device="cpu")
