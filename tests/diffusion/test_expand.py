"""`train.expand`: widening a 4-channel UNet keeps the base model exactly at step 0 and loads as an
inpainting / editing model through the normal loader."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from canvaslab.engines.diffusion import models  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402
from canvaslab.train.expand import conditioning_layout, expand_conv_in  # noqa: E402

from . import tiny  # noqa: E402

COUNTS = [9, 8, 4 + 4 * 3]
TIMESTEP = torch.tensor(500)


@pytest.fixture(scope="module")
def base() -> UNet2DConditionModel:
    return tiny.build_unet(4)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, tiny.MAX_LENGTH, tiny.TEXT_WIDTH, generator=generator)
    return latents, text


def run(unet: UNet2DConditionModel, sample: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unet(sample, TIMESTEP, encoder_hidden_states=text).sample


def with_extra(latents: torch.Tensor, channels: int, seed: int = 2) -> torch.Tensor:
    """The latents followed by random (non-zero) conditioning channels up to `channels`."""
    generator = torch.Generator().manual_seed(seed)
    extra = torch.randn(latents.shape[0], channels - 4, *latents.shape[2:], generator=generator)
    return torch.cat([latents, extra], dim=1)


def expanded(base: UNet2DConditionModel, channels: int) -> UNet2DConditionModel:
    return expand_conv_in(copy.deepcopy(base), channels)


@pytest.mark.parametrize("channels", COUNTS)
def test_step_zero_reproduces_the_base_model(base, inputs, channels):
    latents, text = inputs
    unet = expanded(base, channels)
    assert unet.conv_in.in_channels == channels and unet.config.in_channels == channels
    reference = run(base, latents, text)
    # Whatever the new channels hold, zero weights make them invisible: bitwise the base output.
    assert torch.equal(run(unet, with_extra(latents, channels, seed=2), text), reference)
    assert torch.equal(run(unet, with_extra(latents, channels, seed=3), text), reference)


@pytest.mark.parametrize("channels", COUNTS)
def test_old_weights_and_bias_are_kept_new_weights_are_zero(base, channels):
    unet = expanded(base, channels)
    old, new = base.conv_in, unet.conv_in
    assert torch.equal(new.weight[:, :4], old.weight)
    assert not new.weight[:, 4:].any()
    assert torch.equal(new.bias, old.bias)
    assert (new.out_channels, new.kernel_size, new.stride, new.padding) == (
        old.out_channels, old.kernel_size, old.stride, old.padding
    )
    assert new.weight.dtype == old.weight.dtype and new.weight.device == old.weight.device
    assert new.weight.requires_grad and new.bias.requires_grad


def test_bias_is_not_reset(base):
    """Regression for the diffusers example scripts, which leave conv_in's bias freshly initialised
    (or zero): a lost bias shifts every activation, so step 0 no longer reproduces the base model."""
    unet = expanded(base, 9)
    assert base.conv_in.bias.abs().sum() > 0  # the check below means nothing against a zero bias
    assert unet.conv_in.bias.abs().sum() > 0
    assert torch.equal(unet.conv_in.bias, base.conv_in.bias)


def test_frozen_and_half_precision_layers_stay_so(base):
    unet = copy.deepcopy(base).to(torch.bfloat16)
    unet.conv_in.requires_grad_(False)
    expand_conv_in(unet, 8)
    assert unet.conv_in.weight.dtype == torch.bfloat16
    assert not unet.conv_in.weight.requires_grad and not unet.conv_in.bias.requires_grad


@pytest.mark.parametrize("channels", COUNTS)
def test_save_and_load_round_trip(base, inputs, tmp_path, channels):
    latents, text = inputs
    unet = expanded(base, channels)
    unet.save_pretrained(tmp_path, safe_serialization=True)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path).eval()
    assert loaded.config.in_channels == channels and loaded.conv_in.in_channels == channels
    sample = with_extra(latents, channels)
    assert torch.equal(run(loaded, sample, text), run(unet, sample, text))


def test_same_count_is_a_no_op(base):
    unet = expanded(base, 9)
    conv = unet.conv_in
    assert expand_conv_in(unet, 9) is unet and unet.conv_in is conv
    plain = copy.deepcopy(base)
    conv = plain.conv_in
    assert expand_conv_in(plain, 4).conv_in is conv


def test_an_edit_model_widens_to_more_frames_keeping_its_channels(base, inputs):
    latents, text = inputs
    pix2pix = expanded(base, 8)
    with torch.no_grad():
        pix2pix.conv_in.weight[:, 4:].normal_()  # as if trained
    sample = with_extra(latents, 8)
    reference = run(pix2pix, sample, text)
    wider = expand_conv_in(copy.deepcopy(pix2pix), 12)
    assert torch.equal(wider.conv_in.weight[:, :8], pix2pix.conv_in.weight)
    new_frame = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(run(wider, torch.cat([sample, new_frame], dim=1), text), reference)


@pytest.mark.parametrize("channels", [5, 3, 10, 0, -4])
def test_bad_counts_are_refused_in_one_line(base, channels):
    unet = copy.deepcopy(base)
    with pytest.raises(InputError) as error:
        expand_conv_in(unet, channels)
    assert "\n" not in str(error.value) and str(channels) in str(error.value)
    assert unet.conv_in.in_channels == 4 and unet.config.in_channels == 4  # untouched


@pytest.mark.parametrize(("start", "target"), [(9, 4), (8, 4), (16, 8), (9, 12), (8, 9), (12, 9)])
def test_shrinking_and_incompatible_layouts_are_refused(base, start, target):
    unet = expanded(base, start)
    with pytest.raises(InputError) as error:
        expand_conv_in(unet, target)
    assert "\n" not in str(error.value)
    assert unet.conv_in.in_channels == start and unet.config.in_channels == start


def test_a_wrapped_conv_in_is_refused(base):
    unet = copy.deepcopy(base)
    unet.conv_in = torch.nn.Sequential(unet.conv_in)
    with pytest.raises(InputError, match="Conv2d"):
        expand_conv_in(unet, 9)


def test_conditioning_layout():
    assert conditioning_layout(4) == ["noisy latents (4)"]
    assert conditioning_layout(9) == ["noisy latents (4)", "mask (1)", "masked image latents (4)"]
    assert conditioning_layout(8) == ["noisy latents (4)", "image latents (4)"]
    assert conditioning_layout(16) == ["noisy latents (4)"] + [f"frame {i} latents (4)" for i in (1, 2, 3)]
    for channels in (4, 8, 9, 12, 16, 20):
        blocks = conditioning_layout(channels)
        assert sum(int(b.rpartition("(")[2].rstrip(")")) for b in blocks) == channels
        # the same channel rules the model loader uses to tell the kinds apart
        kind, frames = models.kind_of_channels(channels, "x")
        assert (kind == "inpaint") == ("mask (1)" in blocks)
        assert kind != "edit" or len(blocks) == 1 + frames
    for channels in (3, 5, 10):
        with pytest.raises(InputError):
            conditioning_layout(channels)


@pytest.mark.parametrize(
    ("channels", "task", "pipeline_class"),
    [(9, "inpaint", StableDiffusionInpaintPipeline), (8, "edit", StableDiffusionInstructPix2PixPipeline)],
)
def test_an_expanded_text_to_image_model_loads_as_its_new_kind(tiny_folders, tmp_path, channels, task, pipeline_class):
    base_pipe = StableDiffusionPipeline.from_pretrained(
        tiny_folders["sd-txt2img"], safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    base_unet = copy.deepcopy(base_pipe.unet)
    components = dict(base_pipe.components, unet=expand_conv_in(base_pipe.unet, channels))
    folder: Path = tmp_path / f"expanded-{channels}"
    pipeline_class(**components).save_pretrained(folder, safe_serialization=True)

    info = models.detect(models.resolve_source(str(folder)))
    assert (info.kind, info.in_channels) == (task, channels)
    pipe = models.load_pipeline(folder, task=task)
    assert isinstance(pipe, pipeline_class)
    assert pipe.unet.config.in_channels == channels
    assert torch.equal(pipe.unet.conv_in.bias, base_unet.conv_in.bias)
    assert torch.equal(pipe.unet.conv_in.weight[:, :4], base_unet.conv_in.weight)
    assert not pipe.unet.conv_in.weight[:, 4:].any()
