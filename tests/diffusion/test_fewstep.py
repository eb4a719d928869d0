"""Few-step sampling recipes (docs/fewstep.md), each run on the tiny model of its family.

For every row of the recipes table: a tiny random LoRA in the layout the real file comes in (kohya for
SDXL-Lightning and Hyper-SD 1.5/XL, diffusers/peft for LCM, TCD and the FLUX/SD3 ones), named like the
real file; then what the run used (scheduler class and key config, the timesteps the denoiser was
called at, the LoRA active at its weight), the same pixels for the same seed, the A1111 parameters and
the JSON recipe, and `canvaslab replay --check` on the saved output. Whether a recipe makes good
images needs the real weights: these tests show that canvaslab runs exactly what the recipe says.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import torch  # noqa: E402

import canvaslab  # noqa: E402
from canvaslab.engines.diffusion import models  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402
from conftest import write_png  # noqa: E402

from . import tiny_dit  # noqa: E402
from .test_lora import LORA_RANK, save_diffusers_lora, save_kohya_lora  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "fewstep.md"

# diffusers' trailing spacing on 1000 training steps: the first step is the last timestep (pure noise)
TRAILING = {1: (999,), 2: (999, 499), 4: (999, 749, 499, 249), 8: (999, 874, 749, 624, 499, 374, 249, 124)}
# LCM and TCD pick from 50 "original" steps (19, 39, ..., 999), skipping evenly from the top
CONSISTENCY = {1: (999,), 4: (999, 759, 499, 259)}
# FLUX.1 dev/Fill, 8 steps at the tiny 64x48: the pipeline's sigmas linspace(1, 1/8, 8), shifted by the
# model's dynamic shift for 12 image tokens (mu 0.4587; a real 1024x1024 has 4096 tokens, mu 1.15)
FLUX_8 = (1000.0, 917.18, 825.97, 725.02, 612.71, 486.97, 345.27, 184.34)


@dataclass(frozen=True)
class Recipe:
    """One row of docs/fewstep.md: the flags a user types, and what a run of them must show."""

    name: str
    model: str  # tiny kind (tiny.KINDS, tiny_dit.DIT_KINDS, or a turbo folder below)
    lora: str | None  # file name, as the real file is called
    weight: float
    scheduler: str | None  # None: the model's own
    steps: int
    guidance: float | None  # None: the model's own (FLUX.2 Klein's distilled model ignores it)
    scheduler_class: str
    config: dict  # scheduler config the run must carry
    timesteps: tuple[float, ...]  # where the denoiser is called, in training timesteps
    a1111_sampler: str
    eta: float | None = None  # --opt eta

    def flags(self) -> str:
        """The flags of the recipe as docs/fewstep.md writes them (the model is the user's own)."""
        parts = [f"--lora {self.lora}:{self.weight:g}"] if self.lora else []
        parts += [f"--scheduler {self.scheduler}"] if self.scheduler else []
        parts += [f"--steps {self.steps}"]
        parts += [f"--guidance-scale {self.guidance:g}"] if self.guidance is not None else []
        parts += [f"--opt eta={self.eta:g}"] if self.eta is not None else []
        return " ".join(parts)


_EULER_TRAILING = {"timestep_spacing": "trailing", "use_karras_sigmas": False}
_DDIM_TRAILING = {"timestep_spacing": "trailing"}
_FLOW = {"use_karras_sigmas": False}

RECIPES = [
    Recipe("lcm-lora-sd15", "sd-inpaint", "lcm-lora-sdv1-5.safetensors", 1.0, "lcm", 4, 1.0,
           "LCMScheduler", {"original_inference_steps": 50}, CONSISTENCY[4], "LCM"),
    Recipe("lcm-lora-sdxl", "sdxl-txt2img", "lcm-lora-sdxl.safetensors", 1.0, "lcm", 4, 1.5,
           "LCMScheduler", {"original_inference_steps": 50}, CONSISTENCY[4], "LCM"),
    Recipe("tcd-lora-sd15", "sd-inpaint", "TCD-SD15-LoRA.safetensors", 1.0, "tcd", 4, 0.0,
           "TCDScheduler", {"original_inference_steps": 50}, CONSISTENCY[4], "TCD"),
    Recipe("tcd-lora-sdxl", "sdxl-txt2img", "TCD-SDXL-LoRA.safetensors", 1.0, "tcd", 4, 0.0,
           "TCDScheduler", {"original_inference_steps": 50}, CONSISTENCY[4], "TCD", eta=0.5),
    *[Recipe(f"sdxl-lightning-{n}", "sdxl-txt2img", f"sdxl_lightning_{n}step_lora.safetensors", 1.0, "euler-trailing",
             n, 0.0, "EulerDiscreteScheduler", _EULER_TRAILING, TRAILING[n], "Euler SGM Uniform") for n in (2, 4, 8)],
    Recipe("hyper-sd15-8", "sd-inpaint", "Hyper-SD15-8steps-lora.safetensors", 1.0, "ddim-trailing", 8, 0.0,
           "DDIMScheduler", _DDIM_TRAILING, TRAILING[8], "DDIM SGM Uniform"),
    Recipe("hyper-sd15-1step-tcd", "sd-inpaint", "Hyper-SD15-1step-lora.safetensors", 1.0, "tcd", 1, 0.0,
           "TCDScheduler", {}, CONSISTENCY[1], "TCD", eta=1.0),
    Recipe("hyper-sdxl-8", "sdxl-txt2img", "Hyper-SDXL-8steps-lora.safetensors", 1.0, "ddim-trailing", 8, 0.0,
           "DDIMScheduler", _DDIM_TRAILING, TRAILING[8], "DDIM SGM Uniform"),
    Recipe("hyper-sdxl-8-cfg", "sdxl-inpaint", "Hyper-SDXL-8steps-CFG-lora.safetensors", 1.0, "ddim-trailing", 8,
           5.0, "DDIMScheduler", _DDIM_TRAILING, TRAILING[8], "DDIM SGM Uniform"),
    Recipe("hyper-flux-fill", "flux-fill", "Hyper-FLUX.1-dev-8steps-lora.safetensors", 0.125, None, 8, 30.0,
           "FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True}, FLUX_8, "Euler"),
    Recipe("hyper-flux-dev", "flux-txt2img", "Hyper-FLUX.1-dev-8steps-lora.safetensors", 0.125, None, 8, 3.5,
           "FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True}, FLUX_8, "Euler"),
    Recipe("flux-turbo-alpha-fill", "flux-fill", "FLUX.1-Turbo-Alpha.safetensors", 1.0, "euler", 8, 30.0,
           "FlowMatchEulerDiscreteScheduler", {**_FLOW, "use_dynamic_shifting": True}, FLUX_8, "Euler"),
    Recipe("hyper-sd3-8-cfg", "sd3-txt2img", "Hyper-SD3-8steps-CFG-lora.safetensors", 0.125, None, 8, 5.0,
           "FlowMatchEulerDiscreteScheduler", {"shift": 3.0},
           (1000.0, 947.54, 882.79, 800.84, 693.79, 548.05, 337.97, 8.93), "Euler"),
    Recipe("sdxl-turbo", "sdxl-turbo", None, 1.0, "euler-a-trailing", 1, 0.0,
           "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, TRAILING[1], "Euler a SGM Uniform"),
    Recipe("sd-turbo", "sd-turbo", None, 1.0, "euler-trailing", 1, 0.0,
           "EulerDiscreteScheduler", _EULER_TRAILING, TRAILING[1], "Euler SGM Uniform"),
    Recipe("flux-schnell", "flux-schnell", None, 1.0, None, 4, 0.0,
           "FlowMatchEulerDiscreteScheduler", {"shift": 1.0, "use_dynamic_shifting": False},
           (1000.0, 750.0, 500.0, 250.0), "Euler"),
    Recipe("z-image-turbo", "z-image", None, 1.0, None, 9, 0.0,
           "FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "use_dynamic_shifting": False},
           (1000.0, 960.0, 913.04, 857.14, 789.47, 705.88, 600.0, 461.54, 272.73), "Euler"),
    # the pipeline's own empirical shift depends on the image size: these are the tiny 64x48's
    Recipe("flux2-klein", "flux2-klein", None, 1.0, None, 4, None,
           "FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True}, (1000.0, 954.5, 874.89, 699.78), "Euler"),
]
RECIPE_NAMES = [r.name for r in RECIPES]
BY_NAME = {r.name: r for r in RECIPES}

# LoRA file -> (how it is written, tiny kind whose layers it targets, seed). The layouts are those of the
# real downloads: kohya for SDXL-Lightning and Hyper-SD 1.5/XL, diffusers for LCM, TCD and transformers.
LORA_FILES = {
    "lcm-lora-sdv1-5.safetensors": ("diffusers", "sd-inpaint", 11),
    "lcm-lora-sdxl.safetensors": ("diffusers", "sdxl-txt2img", 12),
    "TCD-SD15-LoRA.safetensors": ("diffusers", "sd-inpaint", 13),
    "TCD-SDXL-LoRA.safetensors": ("diffusers", "sdxl-txt2img", 14),
    "sdxl_lightning_2step_lora.safetensors": ("kohya", "sdxl-txt2img", 15),
    "sdxl_lightning_4step_lora.safetensors": ("kohya", "sdxl-txt2img", 16),
    "sdxl_lightning_8step_lora.safetensors": ("kohya", "sdxl-txt2img", 17),
    "Hyper-SD15-8steps-lora.safetensors": ("kohya", "sd-inpaint", 18),
    "Hyper-SD15-1step-lora.safetensors": ("kohya", "sd-inpaint", 19),
    "Hyper-SDXL-8steps-lora.safetensors": ("kohya", "sdxl-txt2img", 20),
    "Hyper-SDXL-8steps-CFG-lora.safetensors": ("kohya", "sdxl-inpaint", 21),
    "Hyper-FLUX.1-dev-8steps-lora.safetensors": ("transformer", "flux-txt2img", 22),
    # FLUX.1-Turbo-Alpha also adapts x_embedder, trained at dev's 64 input channels (Fill has 384)
    "FLUX.1-Turbo-Alpha.safetensors": ("transformer+x_embedder", "flux-txt2img", 23),
    "Hyper-SD3-8steps-CFG-lora.safetensors": ("transformer", "sd3-txt2img", 24),
}
_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]

# The real models' scheduler_config.json (stabilityai/sdxl-turbo, stabilityai/sd-turbo), on the tiny weights
_TURBO_BASE = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                   interpolation_type="linear", num_train_timesteps=1000, prediction_type="epsilon",
                   sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
                   timestep_spacing="trailing", trained_betas=None)
TURBO_MODELS = {
    "sdxl-turbo": ("sdxl-txt2img", {"_class_name": "EulerAncestralDiscreteScheduler", **_TURBO_BASE}),
    "sd-turbo": ("sd2-txt2img", {"_class_name": "EulerDiscreteScheduler", **_TURBO_BASE, "sigma_max": None,
                                 "sigma_min": None, "timestep_type": "discrete", "use_karras_sigmas": False}),
}


def save_transformer_lora(kind: str, path: Path, *, seed: int, targets: list[str]) -> Path:
    """A diffusers-layout LoRA (`transformer.<module>.lora_A/B.weight`) for the tiny `kind` transformer."""
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = tiny_dit.build_transformer(kind)
    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=targets, init_lora_weights=False))
    layers = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    tiny_dit.pipeline_class(kind, "txt2img").save_lora_weights(path.parent, transformer_lora_layers=layers,
                                                                weight_name=path.name)
    return path


def save_lora(name: str, root: Path) -> Path:
    layout, kind, seed = LORA_FILES[name]
    path = root / name
    if layout == "kohya":
        return save_kohya_lora(kind, path, seed=seed)
    if layout == "diffusers":
        folder = save_diffusers_lora(kind, root / f"{path.stem}-folder", seed=seed)
        return Path(shutil.move(folder / "pytorch_lora_weights.safetensors", path))
    targets = _ATTENTION + (["x_embedder"] if layout.endswith("x_embedder") else [])
    return save_transformer_lora(kind, path, seed=seed, targets=targets)


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewstep-loras")
    return {name: save_lora(name, root) for name in LORA_FILES}


@pytest.fixture(scope="module")
def turbo_folders(tiny_folders, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SDXL Turbo and SD-Turbo as tiny models: the tiny SDXL / SD 2.x weights with the real scheduler configs."""
    root = tmp_path_factory.mktemp("turbo")
    folders = {}
    for name, (kind, config) in TURBO_MODELS.items():
        folder = Path(shutil.copytree(tiny_folders[kind], root / name))
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config), encoding="utf-8")
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        index["scheduler"] = ["diffusers", config["_class_name"]]
        (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def inputs(photo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 64x48 photo crop (a multiple of 16, the transformer families' size step) and a box mask, as files."""
    root = tmp_path_factory.mktemp("fewstep-inputs")
    image = np.ascontiguousarray(photo[20:68, 40:104])
    mask = np.zeros(image.shape[:2], bool)
    mask[12:36, 16:48] = True
    return write_png(root / "image.png", image), write_png(root / "mask.png", mask)


@pytest.fixture
def model_folder(tiny_folders, tiny_dit_folders, turbo_folders):
    def folder(kind: str) -> Path:
        if kind in TURBO_MODELS:
            return turbo_folders[kind]
        return tiny_folders[kind] if kind in tiny_folders else tiny_dit_folders[kind]

    return folder


def params(recipe: Recipe, folder: Path, lora_files: dict[str, Path], **extra) -> dict:
    """The recipe as keywords of the Python API, exactly as its flags say."""
    values = dict(engine="diffusion", model=str(folder), steps=recipe.steps, guidance_scale=recipe.guidance,
                  scheduler=recipe.scheduler, prompt="a stone wall", seed=7)
    if recipe.lora:
        values["lora"] = [f"{lora_files[recipe.lora]}:{recipe.weight:g}"]
    if recipe.eta is not None:
        values["options"] = {"eta": recipe.eta}
    return {**values, **extra}


@contextlib.contextmanager
def denoiser_calls(pipe):
    """One entry per call of the pipeline's UNet/transformer: the training timestep a UNet was called at,
    None for a transformer (each family scales the timestep its own way; its schedule is read instead)."""
    seen: list[float | None] = []
    unet = getattr(pipe, "unet", None)

    def hook(module, args, kwargs):
        if unet is None:
            seen.append(None)
            return
        seen.append(float(torch.as_tensor(args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0]))

    handle = (unet if unet is not None else pipe.transformer).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def lora_scales(denoiser) -> set[float]:
    """The scale of every active LoRA layer in the denoiser (weight x alpha / rank)."""
    from peft.tuners.lora import LoraLayer

    scales = set()
    for module in denoiser.modules():
        if isinstance(module, LoraLayer) and not module.disable_adapters:
            scales.update(round(float(module.scaling[name]), 6) for name in module.active_adapters)
    return scales


def run_cli(*args):
    """The CLI in this process, where torch and the tiny models are already loaded."""
    from typer.testing import CliRunner

    from canvaslab.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


# -- the recipes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_runs_what_it_says_and_replays(name, inputs, lora_files, model_folder, tmp_path):
    recipe = BY_NAME[name]
    folder = model_folder(recipe.model)
    image, mask = inputs
    first = canvaslab.inpaint(str(image), str(mask), **params(recipe, folder, lora_files))

    # What the run used: the cached pipeline keeps the scheduler and LoRAs of the last request.
    pipe = models.load_pipeline(str(folder), task="inpaint")
    with denoiser_calls(pipe) as seen:
        again = canvaslab.inpaint(str(image), str(mask), **params(recipe, folder, lora_files))
    scheduler = pipe.scheduler
    assert type(scheduler).__name__ == recipe.scheduler_class
    assert {key: scheduler.config[key] for key in recipe.config} == recipe.config
    assert scheduler.timesteps.tolist() == pytest.approx(list(recipe.timesteps), abs=0.01)
    assert len(seen) == recipe.steps  # one denoiser call per step (CFG batches both passes in one)
    if getattr(pipe, "unet", None) is not None:
        assert seen == list(recipe.timesteps)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    assert lora_scales(denoiser) == ({recipe.weight} if recipe.lora else set())

    # Same seed, same pixels; another seed, other pixels.
    np.testing.assert_array_equal(first.image, again.image)
    other = canvaslab.inpaint(str(image), str(mask), **params(recipe, folder, lora_files, seed=8))
    assert not np.array_equal(first.image, other.image)

    # The A1111 text and the JSON recipe say what ran.
    text = first.parameters.splitlines()[-1]
    assert f"Steps: {recipe.steps}, Sampler: {recipe.a1111_sampler}, CFG scale: " in text
    if recipe.guidance is not None:
        assert f"CFG scale: {recipe.guidance}," in text
    if recipe.lora:
        assert re.search(rf'Lora hashes: "{re.escape(Path(recipe.lora).stem)}: [0-9a-f]{{12}}"', text), text
    request = first.recipe["request"]
    assert (request["scheduler"], request["steps"], request["guidance_scale"]) == (
        recipe.scheduler, recipe.steps, recipe.guidance)
    assert request["lora"] == ([f"{lora_files[recipe.lora]}:{recipe.weight:g}"] if recipe.lora else [])
    assert request["options"] == ({"eta": recipe.eta} if recipe.eta is not None else {})

    # replay reruns the recorded request (in this process; a fresh one in the slow tests below)
    out = first.save(tmp_path / "out.png")
    replay = run_cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.exit_code == 0 and "identical pixels" in replay.output, replay.output


def test_the_recipes_table_in_the_docs_gives_the_tested_flags():
    text = DOCS.read_text(encoding="utf-8")
    for recipe in RECIPES:
        assert f"`{recipe.flags()}`" in text, f"docs/fewstep.md has no row with `{recipe.flags()}` ({recipe.name})"


# -- what the recipes rely on ----------------------------------------------------------------------


@pytest.mark.parametrize("steps", sorted(TRAILING))
def test_trailing_names_start_at_the_last_training_timestep(steps, inputs, tiny_folders):
    """euler-trailing, ddim-trailing, ... on SD's own config (leading spacing, steps_offset 1)."""
    from canvaslab.engines.diffusion.schedulers import make_scheduler

    config = models.load_pipeline(str(tiny_folders["sd-inpaint"]), task="inpaint").scheduler.config
    assert (config["timestep_spacing"], config["steps_offset"]) == ("leading", 1)
    for name in ("euler-trailing", "euler-a-trailing", "ddim-trailing", "dpm++2m-trailing"):
        scheduler = make_scheduler(name, config)
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == list(TRAILING[steps]), name
    plain = make_scheduler("euler", config)  # the model's own spacing: 4 steps start at 751
    plain.set_timesteps(4)
    assert plain.timesteps.tolist() == [751, 501, 251, 1]


def test_model_default_and_explicit_names_are_the_same_sampler(inputs, model_folder, lora_files):
    """SDXL Turbo's own scheduler is euler-a-trailing, SD-Turbo's euler-trailing, FLUX's euler: same pixels."""
    image, mask = inputs
    for name in ("sdxl-turbo", "sd-turbo", "hyper-flux-fill"):
        recipe = BY_NAME[name]
        folder = model_folder(recipe.model)
        explicit = canvaslab.inpaint(str(image), str(mask), **params(recipe, folder, lora_files, scheduler="euler"
                                                                     if recipe.scheduler is None else recipe.scheduler))
        own = canvaslab.inpaint(str(image), str(mask), **params(recipe, folder, lora_files, scheduler=None))
        np.testing.assert_array_equal(explicit.image, own.image, err_msg=name)


def test_tcd_runs_at_eta_0_3_unless_told(inputs, tiny_folders):
    """diffusers pipelines pass their own eta (0) to TCD; canvaslab passes TCD's recommended 0.3."""
    image, mask = inputs
    folder = tiny_folders["sd-inpaint"]
    common = dict(engine="diffusion", model=str(folder), scheduler="tcd", steps=4, guidance_scale=0, seed=3)
    pipe = models.load_pipeline(str(folder), task="inpaint")
    etas = []
    original = type(pipe).__call__

    def spy(self, *args, **kwargs):
        etas.append(kwargs.get("eta"))
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(pipe), "__call__", spy)
        default = canvaslab.inpaint(str(image), str(mask), **common)
        explicit = canvaslab.inpaint(str(image), str(mask), **common, options={"eta": 0.3})
        zero = canvaslab.inpaint(str(image), str(mask), **common, options={"eta": 0})
    assert etas == [0.3, 0.3, 0]
    np.testing.assert_array_equal(default.image, explicit.image)
    assert not np.array_equal(default.image, zero.image)
    assert "Engine eta: 0," in zero.parameters and "Engine eta" not in default.parameters


def test_eta_for_a_sampler_without_one_is_refused_in_one_line(inputs, tiny_folders):
    image, mask = inputs
    with pytest.raises(InputError) as caught:
        canvaslab.inpaint(str(image), str(mask), engine="diffusion", model=str(tiny_folders["sd-inpaint"]), steps=2,
                          scheduler="euler-trailing", options={"eta": 0.3})
    message = str(caught.value)
    assert "\n" not in message and "eta" in message and "euler-trailing" in message and "tcd" in message


@pytest.mark.parametrize("name", ["euler-trailing", "ddim-trailing", "tcd"])
def test_noise_prediction_samplers_are_refused_on_flow_models(name, inputs, tiny_dit_folders):
    image, mask = inputs
    with pytest.raises(InputError) as caught:
        canvaslab.inpaint(str(image), str(mask), engine="diffusion", model=str(tiny_dit_folders["flux-fill"]),
                          steps=2, scheduler=name)
    message = str(caught.value)
    assert "\n" not in message and f"{name!r} does not fit a flow-matching model" in message
    assert ("use euler" in message) == name.endswith("-trailing")


def test_a_dev_lora_with_x_embedder_runs_on_fill(inputs, lora_files, tiny_dit_folders):
    """FLUX.1-Turbo-Alpha adapts x_embedder at dev's 64 input channels; on Fill (384) diffusers pads the
    LoRA's down matrix with zeros, so the mask and masked-image channels pass through untouched."""
    from safetensors.torch import load_file

    image, mask = inputs
    folder = tiny_dit_folders["flux-fill"]
    name = "FLUX.1-Turbo-Alpha.safetensors"
    canvaslab.inpaint(str(image), str(mask), engine="diffusion", model=str(folder), steps=2,
                      lora=[f"{lora_files[name]}:1"], seed=1)
    layer = models.load_pipeline(str(folder), task="inpaint").transformer.x_embedder
    (adapter,) = layer.active_adapters
    down = layer.lora_A[adapter].weight.detach()
    trained = load_file(str(lora_files[name]))["transformer.x_embedder.lora_A.weight"]
    assert tuple(down.shape) == (LORA_RANK, 384)
    torch.testing.assert_close(down[:, :64], trained)
    assert not down[:, 64:].any()


def test_a1111_clients_name_trailing_spacing_sgm_uniform():
    from canvaslab.server.a1111 import scheduler_for

    assert scheduler_for({"sampler_name": "Euler", "scheduler": "sgm_uniform"}) == "euler-trailing"
    assert scheduler_for({"sampler_name": "Euler a", "scheduler": "SGM Uniform"}) == "euler-a-trailing"
    assert scheduler_for({"sampler_name": "DDIM SGM Uniform"}) == "ddim-trailing"
    assert scheduler_for({"sampler_name": "TCD"}) == "tcd"


# -- the command lines themselves, in fresh processes ---------------------------------------------------


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sdxl-lightning-4", "tcd-lora-sdxl", "hyper-flux-fill"])
def test_cli_recipe_then_replay_in_a_fresh_process(name, inputs, lora_files, model_folder, tmp_path):
    recipe = BY_NAME[name]
    image, mask = inputs
    flags = recipe.flags().split()
    if recipe.lora:
        flags[1] = f"{lora_files[recipe.lora]}:{recipe.weight:g}"
    out = tmp_path / "out.png"
    done = cli("inpaint", image, "--mask", mask, "--model", model_folder(recipe.model), *flags, "--seed", 5,
               "--prompt", "a stone wall", "-o", out)
    assert done.returncode == 0, done.stderr
    meta = json.loads(cli("--json", "info", out).stdout)
    assert f"Sampler: {recipe.a1111_sampler}," in meta["parameters"]
    request = meta["recipe"]["request"]
    assert (request["scheduler"], request["steps"], request["guidance_scale"], request["lora"]) == (
        recipe.scheduler, recipe.steps, recipe.guidance, [flags[1]])
    replay = cli("replay", out, "-o", tmp_path / "again.png", "--check")
    assert replay.returncode == 0 and "identical pixels" in replay.stderr, replay.stderr
