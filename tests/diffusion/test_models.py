"""Model resolution, detection and pipeline loading, on tiny models saved to disk and loaded back.

Everything runs offline (HF_HUB_OFFLINE=1, set in conftest) on tiny seeded models: folders and
single files go through the same public loader a real checkpoint does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from canvaslab.engines.diffusion import families, models  # noqa: E402
from canvaslab.engines.diffusion.models import ModelInfo, ModelSource  # noqa: E402
from canvaslab.errors import EngineError, InputError, ModelNotAvailableError  # noqa: E402

from . import tiny  # noqa: E402
from .tiny import NATURAL_TASK  # noqa: E402

# diffusers 0.42's schedulers call np.array on tensors in a way numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

FAMILY = {kind: family for kind, (family, _) in tiny.KIND_SPECS.items()}
CHANNELS = {kind: channels for kind, (_, channels) in tiny.KIND_SPECS.items()}
PIPELINE_CLASS = {
    "sd-txt2img": "StableDiffusionPipeline",
    "sd-inpaint": "StableDiffusionInpaintPipeline",
    "sd-pix2pix": "StableDiffusionInstructPix2PixPipeline",
    "sd2-txt2img": "StableDiffusionPipeline",
    "sdxl-txt2img": "StableDiffusionXLPipeline",
    "sdxl-inpaint": "StableDiffusionXLInpaintPipeline",
}


# -- helpers -----------------------------------------------------------------------------------


def photo(size: int = 64) -> Image.Image:
    """A smooth colour gradient: a stand-in image with structure, no file needed."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 0.5 * (x + y)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def box_mask(size: int = 64, box: tuple[int, int, int, int] = (16, 48, 16, 48)) -> Image.Image:
    """White = fill. The default box sits on the 8-px latent grid (latent cells 2..5)."""
    mask = np.zeros((size, size), np.uint8)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = 255
    return Image.fromarray(mask)


def run(pipe, task: str, *, seed: int = 0, steps: int = 2, size: int = 64, prompt: str = "a cat", **extra):
    """One short, seeded run; returns the output as a float array (H, W, 3) or latents."""
    kwargs = dict(prompt=prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed))
    kwargs.update({"output_type": "np", **extra})
    if task == "inpaint":
        kwargs.setdefault("image", photo(size))
        kwargs.setdefault("mask_image", box_mask(size))
    if task == "edit":
        kwargs.setdefault("image", photo(size))
    else:
        kwargs.update(height=size, width=size)
    return pipe(**kwargs).images[0]


def assert_one_line_naming(exc: BaseException, *names: str) -> None:
    message = str(exc)
    assert "\n" not in message, message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"


def failure(fn, *args, **kwargs) -> BaseException:
    """The ModelNotAvailableError `fn` raises. It must come at once: any network attempt on the way (a
    hub lookup, its retries) fails the test through the suite's network guard (tests/netguard)."""
    with pytest.raises(ModelNotAvailableError) as caught:
        fn(*args, **kwargs)
    return caught.value


# -- the tiny factory --------------------------------------------------------------------------


def test_tiny_tokenizer_loads_its_vocabulary(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny.write_tokenizer_files(tmp_path))
    assert len(tokenizer) > 2
    ids = tokenizer("the cat").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids("the</w>") in ids  # the merges apply


def test_tiny_components_are_reproducible():
    first, second = tiny.build_unet(9), tiny.build_unet(9)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_single_file_holds_the_same_weights_as_the_folder(kind, tiny_folders, tiny_single_files):
    """The original-layout writer is the exact inverse of diffusers' single-file conversion."""
    import diffusers

    cls = getattr(diffusers, PIPELINE_CLASS[kind])
    folder = cls.from_pretrained(tiny_folders[kind], local_files_only=True)
    single = cls.from_single_file(str(tiny_single_files[kind]), config=str(tiny_folders[kind]), local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(folder, name, None) is None:
            continue
        expected, loaded = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert expected.keys() == loaded.keys(), name
        assert all(torch.equal(expected[k], loaded[k]) for k in expected), name


# -- aliases and sources -----------------------------------------------------------------------


def test_aliases_are_data_with_hub_ids():
    for name, alias in models.ALIASES.items():
        assert alias.name == name
        assert alias.hub_id.count("/") == 1
        assert alias.family in families.FAMILIES and alias.kind in ("txt2img", "inpaint", "edit")
        assert families.family(alias.family).aliases  # each alias lives in its family's module
        assert alias.native_resolution in (512, 768, 1024)
    assert models.ALIASES["sd15-inpaint"].hub_id == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert models.ALIASES["sdxl-inpaint"].hub_id == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert models.ALIASES["instruct-pix2pix"].kind == "edit"


def test_alias_resolves_to_the_cached_snapshot(hub_cache):
    source = models.resolve_source("sd15-inpaint", cache_dir=hub_cache)
    assert source.format == "folder"
    assert source.hub_id == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert (source.path / "model_index.json").is_file()
    assert models.resolve_source(source.hub_id, cache_dir=hub_cache).path == source.path


def test_alias_loads_offline_from_the_cache(hub_cache):
    pipe = models.load_pipeline("sd15-inpaint", task="inpaint", cache_dir=hub_cache)
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert run(pipe, "inpaint").shape == (64, 64, 3)


def test_local_folder_and_single_file_sources(tiny_folders, tiny_single_files):
    folder = models.resolve_source(tiny_folders["sd-inpaint"])
    assert folder.format == "folder" and folder.path == tiny_folders["sd-inpaint"].resolve()
    single = models.resolve_source(tiny_single_files["sd-inpaint"], config=tiny_folders["sd-inpaint"])
    assert single.format == "single_file" and single.config_from_user
    assert single.config == str(tiny_folders["sd-inpaint"].resolve())


def test_single_file_without_config_uses_the_cached_standard_config(tiny_single_files, hub_cache):
    """An SD 1.x inpainting file pairs with the sd15-inpaint configs, found in the cache offline."""
    source = models.resolve_source(tiny_single_files["sd-inpaint"], cache_dir=hub_cache)
    assert not source.config_from_user
    assert Path(source.config).parent.parent.name == "models--stable-diffusion-v1-5--stable-diffusion-inpainting"
    pipe = models.load_pipeline(source, task="inpaint")
    assert pipe.unet.config.in_channels == 9


# -- errors: fast, one line, naming the model ----------------------------------------------------


def test_missing_local_path_fails_fast(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    error = failure(models.resolve_source, missing)
    assert_one_line_naming(error, str(missing))


def test_hub_id_not_in_cache_fails_fast_offline(tmp_path):
    error = failure(models.load_pipeline, "someone/not-downloaded", cache_dir=tmp_path)
    assert_one_line_naming(error, "someone/not-downloaded", "canvaslab models pull", "HF_HOME")


def test_alias_not_in_cache_names_the_alias_and_the_fix(tmp_path):
    error = failure(models.resolve_source, "sdxl-inpaint", cache_dir=tmp_path)
    assert_one_line_naming(error, "sdxl-inpaint", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                           "canvaslab models pull sdxl-inpaint")


def test_single_file_without_any_config_offline_says_how_to_provide_one(tiny_single_files, tmp_path):
    error = failure(models.resolve_source, tiny_single_files["sdxl-txt2img"], cache_dir=tmp_path)
    assert_one_line_naming(error, str(tiny_single_files["sdxl-txt2img"].resolve()), "config=", "canvaslab models pull sdxl")


def test_no_network_even_when_the_hub_is_not_in_offline_mode(tmp_path):
    """local_files_only=True alone must keep us off the network (and torch must stay unloaded).

    The subprocess runs under the network guard (inherited PYTHONPATH): a hub lookup fails this test."""
    code = (
        "import sys\n"
        "from canvaslab.engines.diffusion.models import resolve_source\n"
        "from canvaslab.errors import ModelNotAvailableError\n"
        "try:\n"
        f"    resolve_source('someone/not-downloaded', cache_dir={str(tmp_path)!r}, local_files_only=True)\n"
        "except ModelNotAvailableError:\n"
        "    print([m for m in ('torch', 'diffusers') if m in sys.modules])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    assert "netguard" in env["PYTHONPATH"] and env["CANVASLAB_NETGUARD_LOG"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize(
    "breakage, problem",
    [
        (lambda f: (f / "model_index.json").unlink(), "no model_index.json"),
        (lambda f: [p.unlink() for p in (f / "unet").glob("*.safetensors")], "unet/ has no weights"),
        (lambda f: shutil.rmtree(f / "tokenizer"), "tokenizer/ is missing"),
        (lambda f: (f / "tokenizer" / "tokenizer.json").unlink(), "tokenizer/ has no tokenizer files"),
        (lambda f: (f / "model_index.json").write_text("{not json"), "not valid JSON"),
    ],
    ids=["no-index", "no-unet-weights", "no-tokenizer", "no-vocabulary", "bad-json"],
)
def test_broken_folder_fails_fast(breakage, problem, tiny_folders, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_folders["sd-inpaint"], folder)
    breakage(folder)
    error = failure(models.load_pipeline, folder)
    assert_one_line_naming(error, str(folder), problem)


def test_empty_tokenizer_is_caught_after_loading(tiny_folders, tmp_path):
    """transformers 5 loads an empty vocabulary as a 2-token tokenizer instead of failing."""
    folder = tmp_path / "empty-vocab"
    shutil.copytree(tiny_folders["sd-inpaint"], folder)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "vocab.json").write_text("{}")
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ModelNotAvailableError) as caught:
        models.load_pipeline(folder)
    assert_one_line_naming(caught.value, str(folder), "empty tokenizer")


def test_config_is_refused_where_it_does_not_apply(tiny_folders):
    with pytest.raises(InputError, match="config= only applies to single"):
        models.resolve_source(tiny_folders["sd-inpaint"], config=tiny_folders["sd-inpaint"])
    source = models.resolve_source(tiny_folders["sd-inpaint"])
    with pytest.raises(InputError, match="a ModelSource already has them"):
        models.load_pipeline(source, cache_dir="/tmp")


def test_config_from_another_family_is_refused(tiny_folders, tiny_single_files):
    with pytest.raises(InputError, match="is an sd1 checkpoint but config .* is an sdxl model"):
        models.resolve_source(tiny_single_files["sd-inpaint"], config=tiny_folders["sdxl-inpaint"])


def test_truncated_single_file_is_reported(tiny_single_files, tiny_folders, tmp_path):
    broken = tmp_path / "cut.safetensors"
    broken.write_bytes(tiny_single_files["sd-inpaint"].read_bytes()[:5000])
    with pytest.raises(ModelNotAvailableError) as caught:
        models.load_pipeline(broken, config=tiny_folders["sd-inpaint"])
    assert_one_line_naming(caught.value, str(broken))


def test_a_file_that_is_not_a_model_is_an_input_error(tmp_path):
    from safetensors.torch import save_file

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(lora))
    with pytest.raises(InputError, match="not a Stable Diffusion checkpoint"):
        models.detect(ModelSource("lora", "single_file", path=lora))


# -- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_detect_folder(kind, tiny_folders):
    info = models.detect(models.resolve_source(tiny_folders[kind]))
    assert (info.family, info.in_channels, info.prediction_type) == (FAMILY[kind], CHANNELS[kind], "epsilon")
    assert info.native_resolution == tiny.NATIVE_SIZE
    assert info.kind == {4: "txt2img", 9: "inpaint", 8: "edit"}[CHANNELS[kind]]
    assert info.condition_frames == (1 if kind == "sd-pix2pix" else 0)


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_detect_single_file(kind, tiny_folders, tiny_single_files):
    source = models.resolve_source(tiny_single_files[kind], config=tiny_folders[kind])
    info = models.detect(source)
    assert (info.family, info.in_channels, info.prediction_type) == (FAMILY[kind], CHANNELS[kind], "epsilon")
    assert info.native_resolution == tiny.NATIVE_SIZE  # an explicit config gives the size


def test_detect_v_prediction_from_the_scheduler_config(v_prediction_folder):
    info = models.detect(models.resolve_source(v_prediction_folder))
    assert (info.family, info.prediction_type) == ("sd2", "v_prediction")


@pytest.mark.parametrize(
    "file_name, expected, resolution",
    [
        ("v2-1_768-ema-pruned.safetensors", "v_prediction", 768),
        ("v2-1_512-ema-pruned.safetensors", "epsilon", 512),
        ("sd2-base.safetensors", "epsilon", 512),
    ],
)
def test_sd2_single_file_prediction_heuristic(file_name, expected, resolution, tiny_single_files, tmp_path):
    """Without markers or an explicit config, SD 2.x text-to-image files are the 768-v models
    unless named as the 512 base."""
    path = tmp_path / file_name
    shutil.copy(tiny_single_files["sd2-txt2img"], path)
    info = models.detect(ModelSource(file_name, "single_file", path=path))
    assert (info.family, info.prediction_type, info.native_resolution) == ("sd2", expected, resolution)


def test_sd2_ckpt_trained_875000_steps_is_the_epsilon_base(tmp_path):
    path = tiny.save_single_file("sd2-txt2img", tmp_path / "model.ckpt")
    data = torch.load(path, weights_only=True)
    data["global_step"] = 875000
    torch.save(data, path)
    assert models.detect(ModelSource("base", "single_file", path=path)).prediction_type == "epsilon"


def test_v_prediction_markers_outrank_the_config(tiny_folders, tmp_path):
    marked = tiny.save_single_file("sd-txt2img", tmp_path / "marked.safetensors", mark_v_prediction=True)
    source = models.resolve_source(marked, config=tiny_folders["sd-txt2img"])  # epsilon config
    assert models.detect(source).prediction_type == "v_prediction"
    pipe = models.load_pipeline(source, task="txt2img")
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_a1111_sidecar_yaml_marks_v_prediction(tiny_single_files, tmp_path):
    path = tmp_path / "custom.safetensors"
    shutil.copy(tiny_single_files["sdxl-txt2img"], path)
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert models.detect(ModelSource("custom", "single_file", path=path)).prediction_type == "v_prediction"


def test_ckpt_files_are_detected_and_loaded(tiny_folders, tmp_path):
    path = tiny.save_single_file("sd-inpaint", tmp_path / "inpaint.ckpt")
    source = models.resolve_source(path, config=tiny_folders["sd-inpaint"])
    assert (models.detect(source).family, models.detect(source).in_channels) == ("sd1", 9)
    assert run(models.load_pipeline(source, task="inpaint"), "inpaint").shape == (64, 64, 3)


def test_unet_channels_name_the_model_kind():
    assert models.kind_of_channels(4, "m") == ("txt2img", 0)
    assert models.kind_of_channels(9, "m") == ("inpaint", 0)
    assert models.kind_of_channels(8, "m") == ("edit", 1)
    assert models.kind_of_channels(16, "m") == ("edit", 3)  # 4 + 4N: N previous frames
    with pytest.raises(InputError, match="5 input channels"):
        models.kind_of_channels(5, "m")


# -- pipeline choice ---------------------------------------------------------------------------


def info(family: str, channels: int) -> ModelInfo:
    kind, frames = models.kind_of_channels(channels, "m")
    return ModelInfo(family, kind, channels, "epsilon", 512, frames)


@pytest.mark.parametrize(
    "family, channels, task, expected",
    [
        ("sd1", 9, "inpaint", "StableDiffusionInpaintPipeline"),
        ("sd2", 9, "inpaint", "StableDiffusionInpaintPipeline"),
        ("sd1", 4, "inpaint", "StableDiffusionInpaintPipeline"),  # latent blending
        ("sd1", 4, "txt2img", "StableDiffusionPipeline"),
        ("sd1", 8, "edit", "StableDiffusionInstructPix2PixPipeline"),
        ("sdxl", 9, "inpaint", "StableDiffusionXLInpaintPipeline"),
        ("sdxl", 4, "inpaint", "StableDiffusionXLInpaintPipeline"),
        ("sdxl", 4, "txt2img", "StableDiffusionXLPipeline"),
        ("sdxl", 8, "edit", "StableDiffusionXLInstructPix2PixPipeline"),
    ],
)
def test_pipeline_class_for_family_unet_and_task(family, channels, task, expected):
    assert models.pipeline_class_name(info(family, channels), task) == expected


def test_mismatched_task_is_refused_with_a_suggestion():
    with pytest.raises(InputError, match="inpainting model .* cannot run task 'txt2img'.*sd15"):
        models.pipeline_class_name(info("sd1", 9), "txt2img")
    with pytest.raises(InputError, match="text-to-image model .* cannot run task 'edit'"):
        models.pipeline_class_name(info("sd1", 4), "edit")
    with pytest.raises(EngineError, match="3 conditioning frames"):
        models.pipeline_class_name(info("sdxl", 16), "edit")  # SD 1.x/2.x multi-frame models run (frames.py)


# -- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_every_tiny_folder_loads_and_runs(kind, tiny_folders):
    pipe = models.load_pipeline(tiny_folders[kind], task=NATURAL_TASK[kind], device="cpu")
    assert type(pipe).__name__ == PIPELINE_CLASS[kind]
    assert getattr(pipe, "safety_checker", None) is None
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    image = run(pipe, NATURAL_TASK[kind])
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_every_tiny_single_file_loads_like_its_folder(kind, tiny_folders, tiny_single_files):
    task = NATURAL_TASK[kind]
    from_folder = run(models.load_pipeline(tiny_folders[kind], task=task), task)
    single = models.load_pipeline(tiny_single_files[kind], task=task, config=tiny_folders[kind])
    assert type(single).__name__ == PIPELINE_CLASS[kind]
    # Same weights (see the test above); the file's memory-mapped tensors can take other SIMD paths
    # than copied ones, which shows as ~1e-6 differences in SDXL outputs.
    np.testing.assert_allclose(run(single, task), from_folder, atol=1e-5)


def test_inpainting_file_with_a_text_to_image_config_takes_its_channels_from_the_weights(
    tiny_folders, tiny_single_files
):
    source = models.resolve_source(tiny_single_files["sd-inpaint"], config=tiny_folders["sd-txt2img"])
    pipe = models.load_pipeline(source, task="inpaint")
    assert pipe.unet.config.in_channels == 9
    expected = run(models.load_pipeline(tiny_folders["sd-inpaint"]), "inpaint")
    np.testing.assert_array_equal(run(pipe, "inpaint"), expected)


def test_tiny_inpaint_is_deterministic_with_a_seeded_generator(tiny_folders):
    pipe = models.load_pipeline(tiny_folders["sd-inpaint"], task="inpaint")
    first, second = run(pipe, "inpaint", seed=7), run(pipe, "inpaint", seed=7)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, run(pipe, "inpaint", seed=8))
    # Anchors the weights the factory builds; 1e-3 absorbs thread-count noise (~4e-6).
    expected = np.array([[0.4729, 0.2531, 0.4681], [0.4748, 0.2833, 0.5306], [0.5409, 0.3656, 0.5396]])
    np.testing.assert_allclose(first[30:33, 30:33, 0], expected, atol=1e-3)


def test_plain_unet_inpaints_by_blending_known_latents(tiny_folders):
    """A 4-channel UNet through the inpaint pipeline: after the last step the latents outside the
    mask are exactly the image's latents, so two prompts differ only inside the mask."""
    pipe = models.load_pipeline(tiny_folders["sd-txt2img"], task="inpaint")
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline" and pipe.unet.config.in_channels == 4
    a = run(pipe, "inpaint", prompt="a cat", output_type="latent")  # (4, 8, 8) latents
    b = run(pipe, "inpaint", prompt="the sea", output_type="latent")
    inside = np.zeros(a.shape[-2:], bool)
    inside[2:6, 2:6] = True  # the 16..48 px box on the 8-px latent grid
    assert torch.equal(a[:, ~inside], b[:, ~inside])
    assert (a[:, inside] - b[:, inside]).abs().mean() > 1e-3

    # After decoding, pixels far from the hole barely move between prompts; inside they change.
    big_mask = box_mask(128, (0, 32, 0, 32))
    one = run(pipe, "inpaint", prompt="a cat", size=128, mask_image=big_mask)
    two = run(pipe, "inpaint", prompt="the sea", size=128, mask_image=big_mask)
    change_inside = np.abs(one[:32, :32] - two[:32, :32]).mean()
    change_far = np.abs(one[80:, 80:] - two[80:, 80:]).mean()
    assert change_far < 0.1 * change_inside


def test_second_call_reuses_the_loaded_pipeline(tiny_folders):
    first = models.load_pipeline(tiny_folders["sd-txt2img"], task="txt2img")
    assert models.load_pipeline(tiny_folders["sd-txt2img"], task="txt2img") is first
    inpaint = models.load_pipeline(tiny_folders["sd-txt2img"], task="inpaint")
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert inpaint.unet is first.unet  # another task shares the loaded modules
    assert models.load_pipeline(tiny_folders["sd-txt2img"], task="txt2img", dtype="bf16") is not first


def test_memory_options_toggle_on_the_cached_pipeline(tiny_folders):
    pipe = models.load_pipeline(tiny_folders["sd-inpaint"], attention_slicing=True, vae_tiling=True)
    assert pipe.vae.use_tiling
    assert run(pipe, "inpaint").shape == (64, 64, 3)
    assert models.load_pipeline(tiny_folders["sd-inpaint"]) is pipe
    assert not pipe.vae.use_tiling


def test_bad_load_options_are_input_errors(tiny_folders):
    folder = tiny_folders["sd-inpaint"]
    with pytest.raises(InputError, match="dtype 'fp16' is not supported on the CPU"):
        models.load_pipeline(folder, dtype="fp16", device="cpu")
    with pytest.raises(InputError, match="needs device 'cuda'"):
        models.load_pipeline(folder, offload="model", device="cpu")
    with pytest.raises(InputError, match="dtype 'fp64' is not one of"):
        models.load_pipeline(folder, dtype="fp64")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device 'cuda' is not available"):
            models.load_pipeline(folder, device="cuda")


def test_fp16_vae_is_kept_in_fp32_for_sd_pipelines():
    """SD 1.x/2.x pipelines never upcast the VAE; ours stays fp32 with casts at its edges.
    (fp16 runs on this CPU only because the test calls the pipeline directly.)"""
    pipe = tiny.build_pipeline("sd-inpaint").to(torch.float16)
    models.keep_vae_in_fp32(pipe.vae)
    assert pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.float16
    for _ in range(2):
        image = run(pipe, "inpaint")
        assert np.isfinite(image).all()
    assert pipe.vae.dtype == torch.float32


def test_importing_the_engine_package_stays_light():
    code = (
        "import sys\n"
        "import canvaslab.engines.diffusion, canvaslab.engines.diffusion.models\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_model_index_is_what_diffusers_wrote(tiny_folders):
    """Guards the factory: each folder declares the pipeline class its kind stands for."""
    for kind, folder in tiny_folders.items():
        assert json.loads((folder / "model_index.json").read_text())["_class_name"] == PIPELINE_CLASS[kind]
