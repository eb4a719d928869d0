"""--tiling with the diffusion engine (engines/diffusion/tiling.py), on tiny offline models.

What is asserted, and why: a random tiny model paints close to per-pixel noise, so a seam statistic of
its output barely moves with or without --tiling (averaged over 12 seeds at 4 steps, the seam is ~1.2x
the median interior line without, ~0.95x with). What circular padding guarantees is exact, though: the
UNet and VAE become convolutions on a torus, so starting from rolled noise gives the rolled image, to
float precision; the wrap-around seam of an output is then, pixel for pixel, an interior line of another
output of the same model. Without --tiling the borders break that. The transformer families' latent
rolling is checked for its bookkeeping (with a position-free denoiser, rolling changes nothing) and its
layouts, and their VAE for the same torus property.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

import canvaslab  # noqa: E402
from canvaslab.engines.diffusion import models, tiling  # noqa: E402
from canvaslab.engines.diffusion.tiling import rolling_callback, seamless, with_tiling  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402

from . import tiny, tiny_dit  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

SIZE = 64  # an 8x8 latent; the tiny UNet halves it once, so whole-torus shifts are even latent pixels
SHIFT = (2, 4)  # latent pixels (rows, columns): 16 and 32 image pixels


def generate(folder, **params):
    return canvaslab.generate(**{"prompt": "a lighthouse", "model": str(folder), "steps": 2, "seed": 1, "size": SIZE,
                                 **params}).image


@pytest.fixture
def rolled_start(monkeypatch):
    """Call with a pipeline class: from then on its starting noise is rolled by SHIFT (latent pixels)."""

    def roll_start(cls, shift=SHIFT):
        original = cls.prepare_latents

        def prepare_latents(self, *args, **kwargs):
            return original(self, *args, **kwargs).roll(shifts=shift, dims=(-2, -1))

        monkeypatch.setattr(cls, "prepare_latents", prepare_latents)

    return roll_start


def _largest_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


# -- UNet families: circular padding -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd-txt2img", "sdxl-txt2img"])
def test_with_tiling_rolled_noise_paints_the_rolled_picture(tiny_folders, rolled_start, kind):
    folder = tiny_folders[kind]
    cls = type(models.load_pipeline(folder, task="txt2img"))
    tiled, plain = generate(folder, tiling="both"), generate(folder)
    rolled_start(cls)
    tiled_shifted, plain_shifted = generate(folder, tiling="both"), generate(folder)
    pixels = (8 * SHIFT[0], 8 * SHIFT[1])
    # Up to the last rounding to uint8: the same picture on the torus, wherever its seam is.
    assert _largest_difference(tiled_shifted, np.roll(tiled, pixels, axis=(0, 1))) <= 1
    # Without it the edges are edges: near them, rolled noise paints something else.
    assert _largest_difference(plain_shifted, np.roll(plain, pixels, axis=(0, 1))) > 40
    assert not np.array_equal(tiled, plain)


def test_tiling_one_axis_wraps_that_axis_only(tiny_folders, rolled_start):
    folder = tiny_folders["sd-txt2img"]
    cls = type(models.load_pipeline(folder, task="txt2img"))
    along_x = generate(folder, tiling="x")
    rolled_start(cls, (0, 4))
    assert _largest_difference(generate(folder, tiling="x"), np.roll(along_x, 32, axis=1)) <= 1
    rolled_start(cls, (2, 0))  # on top: now also rolled by two rows, which do not wrap
    shifted = generate(folder, tiling="x")
    assert _largest_difference(shifted, np.roll(along_x, (16, 32), axis=(0, 1))) > 40


def test_a_tiling_request_leaves_the_cached_pipeline_as_it_was(tiny_folders):
    folder = tiny_folders["sd-txt2img"]
    before = generate(folder)
    tiled = generate(folder, tiling="both")
    after = generate(folder)
    np.testing.assert_array_equal(before, after)
    assert not np.array_equal(before, tiled)
    pipe = models.load_pipeline(folder, task="txt2img")
    convs = [m for part in (pipe.unet, pipe.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and not any("_conv_forward" in vars(conv) for conv in convs)  # torch's own method again
    assert tiling._patched == {}


def test_inpaint_with_tiling_keeps_every_pixel_outside_the_mask(photo, tiny_folders):
    image = np.ascontiguousarray(photo[:64, :96])
    mask = np.zeros(image.shape[:2], bool)
    mask[:, :12] = mask[:, -12:] = True  # over the seam
    folder = str(tiny_folders["sd-inpaint"])
    before = canvaslab.inpaint(image, mask, engine="diffusion", model=folder, steps=2, seed=3)
    tiled = canvaslab.inpaint(image, mask, engine="diffusion", model=folder, steps=2, seed=3, tiling="both")
    np.testing.assert_array_equal(tiled.image[~mask], image[~mask])
    assert not np.array_equal(tiled.image[mask], before.image[mask])
    assert "Tiling: True" in tiled.parameters and tiled.recipe["request"]["tiling"] == "both"
    again = canvaslab.inpaint(image, mask, engine="diffusion", model=folder, steps=2, seed=3)
    np.testing.assert_array_equal(again.image, before.image)


def test_inpaint_with_tiling_refuses_to_pad_a_size_that_is_no_multiple_of_8(photo, tiny_folders):
    image = np.ascontiguousarray(photo[:60, :76])
    mask = np.zeros(image.shape[:2], bool)
    mask[:, :8] = True
    params = dict(engine="diffusion", model=str(tiny_folders["sd-inpaint"]), steps=2, seed=0, tiling="x")
    with pytest.raises(InputError, match="76x60 would be padded to a multiple of 8 first"):
        canvaslab.inpaint(image, mask, **params)
    resized = canvaslab.inpaint(image, mask, align="resize", **params)
    np.testing.assert_array_equal(resized.image[~mask], image[~mask])


def test_a_request_without_tiling_is_unchanged_while_another_thread_tiles(tiny_folders):
    pipe = models.load_pipeline(tiny_folders["sd-txt2img"], task="txt2img")
    pipe.set_progress_bar_config(disable=True)

    def paint():
        out = pipe(prompt="a lighthouse", width=SIZE, height=SIZE, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(5), output_type="np")
        return out.images[0]

    reference = paint()
    inside, leave = threading.Event(), threading.Event()

    def tiles():
        with seamless(pipe, "both"):
            inside.set()
            leave.wait(timeout=60)

    other = threading.Thread(target=tiles)
    other.start()
    try:
        assert inside.wait(timeout=60)
        assert tiling._patched  # the other thread's padding is installed on these very modules...
        np.testing.assert_array_equal(paint(), reference)  # ...and this thread does not see it
    finally:
        leave.set()
        other.join()
    assert tiling._patched == {}


def test_the_vae_encoder_wraps_too(tiny_folders):
    # Its stride-2 downsamplers pad themselves (right and bottom) before an unpadded conv; that pad wraps as well.
    vae = models.load_pipeline(tiny_folders["sd-inpaint"], task="inpaint").vae
    pixels = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1

    def encode(x):
        return vae.encode(x).latent_dist.mean

    with torch.no_grad(), seamless(models.load_pipeline(tiny_folders["sd-inpaint"], task="inpaint"), "both"):
        plain, shifted = encode(pixels), encode(pixels.roll((8, 16), dims=(2, 3)))
    torch.testing.assert_close(shifted, plain.roll((1, 2), dims=(2, 3)), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        unpadded = encode(pixels.roll((8, 16), dims=(2, 3)))
    assert (unpadded - plain.roll((1, 2), dims=(2, 3))).abs().max() > 1e-2


# -- transformer families: latent rolling -----------------------------------------------------------


DIT_CALLS = {
    "sd3-txt2img": dict(guidance_scale=5.0, negative_prompt="blurry"),
    "flux-txt2img": dict(guidance_scale=3.5),
    "z-image": dict(guidance_scale=0.0),  # Turbo
    "flux2-klein": dict(guidance_scale=1.0),  # distilled
}


def _dit(kind):
    pipe = tiny_dit.build_dit_pipeline(kind)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dit_call(pipe, kind, tiling_value, **extra):
    call = dict(prompt="a cat", width=SIZE, height=SIZE, num_inference_steps=3,
                generator=torch.Generator().manual_seed(2), **DIT_CALLS[kind], **extra)
    return with_tiling(pipe, tiling_value, seed=7)(**call)


@pytest.mark.parametrize("kind", list(DIT_CALLS))
def test_rolling_changes_nothing_for_a_denoiser_that_ignores_positions(kind):
    # A position-free, per-token denoiser commutes with rolls: rolled between steps and back after the
    # last, the latents must come out exactly as without rolling, while the model did see rolled ones.
    pipe = _dit(kind)
    seen: list[torch.Tensor] = []

    def forward(*args, **kwargs):
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if isinstance(latents, list):  # Z-Image: one tensor per batch item
            seen.append(torch.stack(latents))
            return ([0.3 * item - 0.1 for item in latents],)
        seen.append(latents.clone())
        return (0.3 * latents - 0.1,)

    pipe.transformer.forward = forward
    plain = _dit_call(pipe, kind, "none", output_type="latent").images
    seen_plain, seen[:] = list(seen), []
    rolled = _dit_call(pipe, kind, "both", output_type="latent").images
    torch.testing.assert_close(rolled, plain, atol=0, rtol=0)
    assert torch.equal(seen[0], seen_plain[0])  # the first step runs before any roll
    assert any(not torch.equal(a, b) for a, b in zip(seen[1:], seen_plain[1:]))  # later ones on rolled latents


@pytest.mark.parametrize("kind", list(DIT_CALLS))
def test_tiny_dit_families_paint_deterministically_with_tiling(kind):
    pipe = _dit(kind)
    a = _dit_call(pipe, kind, "both", output_type="np").images[0]
    b = _dit_call(pipe, kind, "both", output_type="np").images[0]
    plain = _dit_call(pipe, kind, "none", output_type="np").images[0]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (SIZE, SIZE, 3) and not np.array_equal(a, plain)
    assert tiling._patched == {}


def test_packed_latents_roll_as_the_picture_they_unpack_to():
    from diffusers import FluxPipeline

    latents = torch.randn((1, 16, 8, 12), generator=torch.Generator().manual_seed(0))  # 8x12 latent: 4x6 tokens
    packed = FluxPipeline._pack_latents(latents, 1, 16, 8, 12)
    rolled = tiling._roll(packed, (1, 2), (4, 6), "packed")
    expected = FluxPipeline._pack_latents(latents.roll((2, 4), dims=(2, 3)), 1, 16, 8, 12)
    assert torch.equal(rolled, expected)


@pytest.mark.parametrize("kind", list(DIT_CALLS))
def test_dit_vaes_decode_on_the_torus(kind):
    pipe = _dit(kind)
    z = torch.randn((1, pipe.vae.config.latent_channels, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), seamless(pipe, "both"):
        plain, shifted = pipe.vae.decode(z).sample, pipe.vae.decode(z.roll((1, 3), dims=(2, 3))).sample
    torch.testing.assert_close(shifted, plain.roll((8, 24), dims=(2, 3)), atol=1e-5, rtol=1e-5)


def test_rolling_follows_the_callback_it_is_given_and_the_step_count():
    pipe = _dit("sd3-txt2img")
    calls = []

    def progress(pipeline, index, timestep, kwargs):
        calls.append(index)
        return kwargs

    _dit_call(pipe, "sd3-txt2img", "both", output_type="latent", callback_on_step_end=progress)
    assert calls == [0, 1, 2]


@pytest.mark.parametrize(
    ("kind", "task", "message"),
    [
        ("flux-fill", "inpaint", "--tiling is not supported for FluxFillPipeline"),
        ("sd3-txt2img", "inpaint", "--tiling is not supported for StableDiffusion3InpaintPipeline"),
        ("qwen-image", "txt2img", "--tiling is not supported for QwenImagePipeline"),
        ("flux-kontext", "edit", "--tiling is not supported for FluxKontextPipeline"),
    ],
)
def test_transformer_pipelines_that_cannot_roll_are_refused_in_one_line(kind, task, message):
    pipe = tiny_dit.build_dit_pipeline(kind, task)
    with pytest.raises(InputError, match=message):
        with_tiling(pipe, "both", seed=0)
    assert with_tiling(pipe, "none", seed=0) is pipe


def test_a_sampler_with_memory_cannot_follow_rolled_latents():
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = _dit("sd3-txt2img")
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(InputError, match="FlowMatchHeunDiscreteScheduler cannot follow"):
        rolling_callback(pipe, "both", seed=0, size=(SIZE, SIZE))


def test_texture_seamless_with_the_diffusion_engine_keeps_everything_outside_the_band(photo, tiny_folders):
    image = np.ascontiguousarray(photo[:64, :96])
    params = dict(engine="diffusion", model=str(tiny_folders["sd-inpaint"]), steps=2, seed=4, band=8, prompt="wood")
    result = canvaslab.texture_seamless(image, **params)
    frame = np.zeros(image.shape[:2], bool)
    frame[:, :8] = frame[:, -8:] = frame[:8] = frame[-8:] = True
    np.testing.assert_array_equal(result.mask, frame)
    np.testing.assert_array_equal(result.image[~frame], image[~frame])
    np.testing.assert_array_equal(canvaslab.texture_seamless(image, **params).image, result.image)
    assert result.recipe["task"] == "texture" and result.recipe["request"]["engine"] == "diffusion"
    assert tiling._patched == {}
