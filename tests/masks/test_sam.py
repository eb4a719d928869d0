"""Segment Anything through transformers with tiny random SAM, SAM-HQ and SAM 2 models: loading through
the public resolver, coordinate mapping both ways on non-square images, the embedding cache, and
one-line errors."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from canvaslab.errors import InputError, ModelNotAvailableError
from canvaslab.masks.models import resolve
from canvaslab.masks.sam import EmbeddingCache, Prompt, segmenter

FAMILIES = ("sam", "sam_hq", "sam2")


def scene(width: int = 120, height: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@contextmanager
def blob_at_the_prompt(model: torch.nn.Module, radius_frac: float = 0.06):
    """Make the mask decoder answer, for each prompt, a disk around its first point or its box's centre.

    A random model's masks say nothing about where a point landed; this one's do. Points and boxes are
    read from what the prompt encoder actually receives (model frame), the disks drawn on the decoder's
    low-resolution grid, and everything after that (post-processing back to the image) is the real code.
    """
    seen: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):
        for index, name in enumerate(("input_points", "input_labels", "input_boxes")):
            value = kwargs.get(name, args[index] if len(args) > index else None)
            if value is not None:
                seen[name] = value.detach().clone()

    def centres() -> list[tuple[float, float]]:
        if "input_points" in seen:
            return [tuple(seen["input_points"].reshape(-1, 2)[0].tolist())]
        boxes = seen["input_boxes"].reshape(-1, 4)
        return [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes.tolist()]

    def draw(module, args, output):
        masks = output[0].clone()
        h, w = masks.shape[-2:]
        frame = model.config.prompt_encoder_config.image_size
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        for prompt, (x, y) in enumerate(centres()):
            disk = ((xx - x * w / frame) ** 2 + (yy - y * h / frame) ** 2) <= (radius_frac * w) ** 2
            masks[:, prompt] = torch.where(disk, 10.0, -10.0).to(masks.dtype)
        return (masks, *output[1:])

    handles = [model.prompt_encoder.register_forward_pre_hook(grab, with_kwargs=True),
               model.mask_decoder.register_forward_hook(draw)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_through_the_resolver_and_answers_at_the_image_size(mask_models, family):
    model = resolve(str(mask_models[family]), want="sam")
    assert (model.kind, model.model_type) == ("sam", family)
    seg = segmenter(model, "cpu")
    embedding, _ = seg.embed(scene(), cache=EmbeddingCache())
    proposals = seg.predict(embedding, Prompt(points=((30, 20),), labels=(1,)), multimask=True)
    assert len(proposals.masks) == 3 and all(m.shape == (50, 120) and m.dtype == bool for m in proposals.masks)
    assert proposals.scores == sorted(proposals.scores, reverse=True)
    single = seg.predict(embedding, Prompt(points=((30, 20),), labels=(1,)))
    assert len(single.masks) == 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("width", "height", "point"), [(120, 50, (97, 11)), (40, 90, (7, 70)), (64, 64, (50, 20))])
def test_a_point_lands_where_it_was_clicked(mask_models, family, width, height, point):
    seg = segmenter(resolve(str(mask_models[family])), "cpu")
    rgb = scene(width, height)
    embedding, _ = seg.embed(rgb, cache=EmbeddingCache())
    with blob_at_the_prompt(seg.model):
        [mask] = seg.predict(embedding, Prompt(points=(point,), labels=(1,))).masks
    ys, xs = np.nonzero(mask)
    assert mask[point[1], point[0]]
    # the disk comes back centred on the click, within a pixel or two of model-frame rounding
    assert abs(xs.mean() - point[0]) <= 2.5 and abs(ys.mean() - point[1]) <= 2.5


@pytest.mark.parametrize("family", ["sam", "sam_hq"])
def test_points_use_the_processors_own_mapping_and_its_pixel_frame(mask_models, family):
    """The mapping equals SamProcessor's (a transformers change would show here), and the image pixel a
    point names is the pixel the model sees at the mapped place."""
    from transformers import AutoProcessor

    seg = segmenter(resolve(str(mask_models[family])), "cpu")
    rgb = np.zeros((50, 120, 3), np.uint8)
    rgb[28:33, 88:93] = 255  # a bright spot around (90, 30)
    embedding, _ = seg.embed(rgb, cache=EmbeddingCache())
    processor = AutoProcessor.from_pretrained(mask_models[family])
    theirs = processor(images=rgb, input_points=[[[[90, 30]]]], return_tensors="pt")
    ours = seg.to_model_frame(np.array([[90, 30]]), embedding)
    np.testing.assert_allclose(ours[0], theirs["input_points"][0, 0, 0].numpy(), atol=1e-6)
    black = processor(images=np.zeros_like(rgb), return_tensors="pt")["pixel_values"][0]
    spot = (theirs["pixel_values"][0] - black).sum(0).clamp(min=0).numpy()  # where the spot is, model frame
    yy, xx = np.mgrid[: spot.shape[0], : spot.shape[1]]
    centre = ((xx * spot).sum() / spot.sum(), (yy * spot).sum() / spot.sum())
    # pixel centres: image pixel 90 spans [90, 91), its centre 90.5 maps to pixel (90.5 * s - 0.5)
    assert abs(centre[0] + 0.5 - (ours[0, 0] + 0.5 * 64 / 120)) <= 0.5
    assert abs(centre[1] + 0.5 - (ours[0, 1] + 0.5 * 27 / 50)) <= 0.5


def test_sam2_preprocesses_with_pillow_as_its_processor_config_says(mask_models):
    seg = segmenter(resolve(str(mask_models["sam2"])), "cpu")
    assert seg.size == 64
    embedding, _ = seg.embed(scene(90, 30), cache=EmbeddingCache())
    assert embedding.original == (30, 90) and embedding.resized == (64, 64)
    np.testing.assert_allclose(seg.to_model_frame(np.array([45.0, 15.0]), embedding), [32.0, 32.0])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_second_click_does_not_rerun_the_image_encoder(mask_models, family):
    seg = segmenter(resolve(str(mask_models[family])), "cpu")
    calls = []
    handle = seg.model.vision_encoder.register_forward_hook(lambda *_: calls.append(1))
    cache = EmbeddingCache(size=2)
    try:
        rgb = scene(seed=1)
        first, cached = seg.embed(rgb, cache=cache)
        assert not cached and len(calls) == 1
        seg.predict(first, Prompt(points=((10, 10),), labels=(1,)))
        again, cached = seg.embed(rgb.copy(), cache=cache)  # the same pixels, another array
        seg.predict(again, Prompt(points=((10, 10), (60, 30)), labels=(1, 0)))
        assert cached and again is first and len(calls) == 1
        seg.embed(scene(seed=2), cache=cache)
        seg.embed(scene(seed=3), cache=cache)  # the cache holds 2: the first image is dropped
        seg.embed(rgb, cache=cache)
        assert len(calls) == 4 and (cache.hits, cache.misses) == (1, 4)
    finally:
        handle.remove()


def test_cached_embeddings_expire(monkeypatch):
    import canvaslab.masks.sam as sam

    clock = [100.0]
    monkeypatch.setattr(sam.time, "monotonic", lambda: clock[0])
    cache = EmbeddingCache(size=4, ttl=60)
    cache.put(("m", "a"), sam.Embedding(None, (1, 1), (1, 1)))
    clock[0] += 59
    assert cache.get(("m", "a")) is not None  # used again: kept another 60 s
    clock[0] += 59
    assert cache.has(("m", "a"))
    clock[0] += 2
    assert cache.get(("m", "a")) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_boxes_land_where_drawn_and_several_boxes_unite(mask_models, family):
    seg = segmenter(resolve(str(mask_models[family])), "cpu")
    embedding, _ = seg.embed(scene(), cache=EmbeddingCache())
    with blob_at_the_prompt(seg.model):
        [one] = seg.predict(embedding, Prompt(boxes=((10, 5, 60, 40),))).masks
        [two] = seg.predict(embedding, Prompt(boxes=((10, 5, 60, 40), (80, 10, 110, 44)))).masks
    assert one[22, 35] and not one[27, 95]
    assert two[22, 35] and two[27, 95]  # each box's disk, at its centre
    assert (two & ~one)[:, 70:].any() and not (two & ~one)[:, :70].any()


@pytest.mark.parametrize(("prompt", "message"), [
    (Prompt(), "needs a point"),
    (Prompt(points=((200, 10),), labels=(1,)), "point 200,10 is outside the 120x50 image"),
    (Prompt(points=((10, 10),), labels=(0,)), "only negative points"),
    (Prompt(boxes=((50, 5, 10, 40),)), "must have x0 < x1"),
    (Prompt(points=((10, 10),), labels=(1,), boxes=((0, 0, 5, 5), (6, 6, 9, 9))), "at most one box"),
])
def test_bad_prompts_are_one_line_errors(mask_models, prompt, message):
    seg = segmenter(resolve(str(mask_models["sam"])), "cpu")
    embedding, _ = seg.embed(scene(), cache=EmbeddingCache())
    with pytest.raises(InputError, match=message):
        seg.predict(embedding, prompt)


def test_models_that_are_not_here_or_not_sam(mask_models, tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"sam \(facebook/sam-vit-base\) is not in the Hugging Face cache: "
                       r"on a connected machine run `hf download facebook/sam-vit-base`"):
        resolve("sam")
    with pytest.raises(ModelNotAvailableError, match="was not found: pass a transformers folder"):
        resolve(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="has no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="is a CLIPSeg model, but this needs a Segment Anything model"):
        resolve(str(mask_models["clipseg"]), want="sam")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((mask_models["sam"] / "config.json").read_text())
    with pytest.raises(ModelNotAvailableError, match="could not be loaded"):
        segmenter(resolve(str(broken)), "cpu")
