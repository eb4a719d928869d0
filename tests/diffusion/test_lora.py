"""LoRAs on the cached diffusion pipeline: formats, weights, switching without leakage, and errors.

Tiny LoRAs are built offline (`save_diffusers_lora` / `save_kohya_lora` below) with random,
non-zero B matrices so they visibly change a 2-step 64 px inpaint. Comparisons within one thread
count are exact; the conftest pins torch to one thread.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import canvaslab  # noqa: E402
from canvaslab.engines.diffusion import models  # noqa: E402
from canvaslab.engines.diffusion.lora import apply_loras, loaded_loras, resolve_lora  # noqa: E402
from canvaslab.errors import InputError, ModelNotAvailableError  # noqa: E402

from conftest import write_png  # noqa: E402

from . import tiny  # noqa: E402

SIZE = 64


# -- tiny LoRAs, in diffusers/peft and kohya (A1111) formats ---------------------------------------
# (kept here rather than in tiny.py: only these tests use them)

LORA_RANK = 4
_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# component -> kohya key prefix (SDXL names its two encoders te1/te2; SD 1.x uses te)
_KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
_KOHYA_PREFIXES_SDXL = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


@functools.lru_cache(maxsize=None)  # one tiny pipeline build per (kind, seed), shared by the formats
def build_lora_layers(kind: str, *, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """component -> peft LoRA state dict for the tiny `kind` model, UNet and every text encoder.

    B is random (peft would start it at zero), so the LoRA changes the output; alpha = rank (scale 1).
    Cached: callers must not modify the tensors.
    """
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = tiny.build_pipeline(kind)
    components = ["unet"] + [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    layers = {}
    for offset, name in enumerate(components):
        torch.manual_seed(seed * 100 + offset)
        module = getattr(pipe, name)
        targets = _UNET_TARGETS if name == "unet" else _TEXT_TARGETS
        module.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=targets, init_lora_weights=False))
        layers[name] = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(module).items()}
    return layers


def save_diffusers_lora(kind: str, folder: Path, *, seed: int, alpha: float | None = None) -> Path:
    """A diffusers LoRA folder (`pytorch_lora_weights.safetensors`), written by the pipeline's own saver.

    With `alpha`, the file says so in its `lora_adapter_metadata` (as `canvaslab train` exports do) and B
    is multiplied by rank / alpha, so the effective weights stay those of seed `seed` at scale 1.
    """
    cls = _pipeline_class(kind)
    layers = build_lora_layers(kind, seed=seed)
    arguments = {}
    for name, state in layers.items():
        if alpha is None:
            arguments[f"{name}_lora_layers"] = state
            continue
        arguments[f"{name}_lora_layers"] = {k: (v * (LORA_RANK / alpha) if ".lora_B." in k else v).contiguous()
                                            for k, v in state.items()}
        targets = _UNET_TARGETS if name == "unet" else _TEXT_TARGETS
        arguments[f"{name}_lora_adapter_metadata"] = {"r": LORA_RANK, "lora_alpha": alpha, "target_modules": targets}
    cls.save_lora_weights(Path(folder), **arguments)
    return Path(folder)


def _pipeline_class(kind: str) -> type:
    import diffusers

    return diffusers.StableDiffusionXLInpaintPipeline if kind.startswith("sdxl") else diffusers.StableDiffusionInpaintPipeline


def save_kohya_lora(kind: str, path: Path, *, seed: int, alpha: float = LORA_RANK) -> Path:
    """The weights of `save_diffusers_lora(kind, ..., seed=seed)` in kohya/A1111 layout.

    Keys: `lora_unet_<module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`. kohya scales
    by alpha / rank, so `up` is multiplied by rank / alpha to keep the effective weights the same.
    """
    prefixes = _KOHYA_PREFIXES_SDXL if kind.startswith("sdxl") else _KOHYA_PREFIXES
    state: dict[str, torch.Tensor] = {}
    for component, layer_state in build_lora_layers(kind, seed=seed).items():
        for key, value in layer_state.items():
            module, _, part = key.rpartition(".lora_")  # "<module>", "A.weight" | "B.weight"
            module = module.removeprefix(f"{component}.")
            if component != "unet" and not module.startswith("text_model."):
                module = "text_model." + module  # kohya names CLIP layers from the transformers root
            name = prefixes[component] + module.replace(".", "_")
            if part == "A.weight":
                state[f"{name}.lora_down.weight"] = value
                state[f"{name}.alpha"] = torch.tensor(float(alpha))
            else:
                state[f"{name}.lora_up.weight"] = (value * (LORA_RANK / alpha)).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> LoRA path: SD 1.x A and B (diffusers folders), A again as kohya file, SDXL in both formats."""
    root = tmp_path_factory.mktemp("loras")
    return {
        "a": save_diffusers_lora("sd-inpaint", root / "a", seed=1),
        "b": save_diffusers_lora("sd-inpaint", root / "b", seed=2),
        # alpha 2 with rank 4: exercises kohya's alpha/rank scaling, same effective weights as "a"
        "a-kohya": save_kohya_lora("sd-inpaint", root / "a_kohya.safetensors", seed=1, alpha=2.0),
        # the same in diffusers format, its alpha in the file's metadata (what `canvaslab train` writes)
        "a-alpha": save_diffusers_lora("sd-inpaint", root / "a_alpha", seed=1, alpha=2.0),
        "xl": save_diffusers_lora("sdxl-inpaint", root / "xl", seed=3),
        "xl-kohya": save_kohya_lora("sdxl-inpaint", root / "xl_kohya.safetensors", seed=3),
    }


@pytest.fixture(scope="module")
def inputs() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    return image, Image.fromarray(mask)


def load(folder: Path):
    pipe = models.load_pipeline(str(folder), task="inpaint")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def paint(pipe, inputs, loras=()) -> np.ndarray:
    apply_loras(pipe, loras)
    image, mask = inputs
    result = pipe(prompt="a cat", image=image, mask_image=mask, height=SIZE, width=SIZE, num_inference_steps=2,
                  generator=torch.Generator("cpu").manual_seed(1), output_type="np")
    return result.images[0]


def fresh(folder: Path, inputs, loras=()) -> np.ndarray:
    """The output of a newly loaded pipeline: what a request gives with no history behind it."""
    models.clear_pipeline_cache()
    return paint(load(folder), inputs, loras)


def test_lora_changes_output_and_weight_zero_or_none_is_the_base_model(tiny_folders, loras, inputs, monkeypatch):
    pipe = load(tiny_folders["sd-inpaint"])
    base = paint(pipe, inputs)
    calls = []
    original = pipe.load_lora_weights
    monkeypatch.setattr(pipe, "load_lora_weights", lambda *a, **k: calls.append(a) or original(*a, **k))

    with_lora = paint(pipe, inputs, [(str(loras["a"]), 1.0)])
    assert np.abs(with_lora - base).max() > 0.01
    again = paint(pipe, inputs, [(str(loras["a"]), 1.0)])
    np.testing.assert_array_equal(again, with_lora)
    assert len(calls) == 1  # the second request reused the loaded adapter

    half = paint(pipe, inputs, [(str(loras["a"]), 0.5)])
    assert not np.array_equal(half, with_lora) and not np.array_equal(half, base)
    np.testing.assert_array_equal(paint(pipe, inputs, [(str(loras["a"]), 0.0)]), base)
    np.testing.assert_array_equal(paint(pipe, inputs), base)
    np.testing.assert_array_equal(paint(pipe, inputs, [(str(loras["a"]), 1.0)]), with_lora)  # re-enabled
    assert len(calls) == 1 and len(loaded_loras(pipe)) == 1


def test_switching_loras_leaks_nothing(tiny_folders, loras, inputs):
    folder = tiny_folders["sd-inpaint"]
    a, b = [(str(loras["a"]), 0.8)], [(str(loras["b"]), 1.0)]
    both = [(str(loras["a"]), 0.5), (str(loras["b"]), 0.5)]
    expected = {name: fresh(folder, inputs, spec) for name, spec in (("a", a), ("b", b), ("both", both), ("none", ()))}

    models.clear_pipeline_cache()
    pipe = load(folder)
    for name, spec in (("a", a), ("b", b), ("none", ()), ("both", both), ("a", a), ("none", ())):
        np.testing.assert_array_equal(paint(pipe, inputs, spec), expected[name], err_msg=f"after switching to {name}")
    assert not np.array_equal(expected["a"], expected["b"])


def test_kohya_and_diffusers_formats_give_the_same_output(tiny_folders, loras, inputs):
    pipe = load(tiny_folders["sd-inpaint"])
    diffusers_format = paint(pipe, inputs, [(str(loras["a"]), 1.0)])
    kohya_format = paint(pipe, inputs, [(str(loras["a-kohya"]), 1.0)])
    np.testing.assert_allclose(kohya_format, diffusers_format, atol=1e-5)
    with_alpha = paint(pipe, inputs, [(str(loras["a-alpha"]), 1.0)])  # alpha / rank = 1/2 read from the metadata
    np.testing.assert_allclose(with_alpha, diffusers_format, atol=1e-5)


def test_sdxl_two_text_encoders_both_formats(tiny_folders, loras, inputs):
    pipe = load(tiny_folders["sdxl-inpaint"])
    base = paint(pipe, inputs)
    with_lora = paint(pipe, inputs, [(str(loras["xl"]), 1.0)])
    assert np.abs(with_lora - base).max() > 0.01
    adapters = pipe.get_list_adapters()
    assert set(adapters) == {"unet", "text_encoder", "text_encoder_2"}
    np.testing.assert_allclose(paint(pipe, inputs, [(str(loras["xl-kohya"]), 1.0)]), with_lora, atol=1e-5)
    np.testing.assert_array_equal(paint(pipe, inputs), base)


def test_local_file_folder_and_hub_cache_sources(loras, tmp_path):
    folder = resolve_lora(str(loras["a"]))
    assert folder.path.name == "pytorch_lora_weights.safetensors"
    assert resolve_lora(str(folder.path)).adapter_name == folder.adapter_name
    tiny.install_in_hub_cache(loras["a"], "someone/tiny-lora", tmp_path / "hub")
    cached = resolve_lora("someone/tiny-lora", cache_dir=tmp_path / "hub")
    assert cached.path.read_bytes() == folder.path.read_bytes()
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="LoRA 'someone/absent' is neither a local path nor in the Hugging Face cache"):
        resolve_lora("someone/absent", cache_dir=tmp_path / "hub")
    assert time.perf_counter() - started < 2  # no network retries


def test_an_edited_file_is_reloaded(tiny_folders, inputs, tmp_path):
    pipe = load(tiny_folders["sd-inpaint"])
    path = save_kohya_lora("sd-inpaint", tmp_path / "style.safetensors", seed=1)
    first = paint(pipe, inputs, [(str(path), 1.0)])
    save_kohya_lora("sd-inpaint", path, seed=5)
    second = paint(pipe, inputs, [(str(path), 1.0)])
    assert not np.array_equal(first, second)
    assert len(loaded_loras(pipe)) == 1  # the stale version was deleted


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_bad_loras_are_one_line_errors_naming_the_file(tiny_folders, loras, inputs, tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelNotAvailableError) as exc:
        resolve_lora(str(missing))
    assert f"LoRA file {missing} does not exist" in one_line(exc)

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="has no pytorch_lora_weights.safetensors") as exc:
        resolve_lora(str(tmp_path / "empty"))
    one_line(exc)

    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(4, 4)}, str(checkpoint))
    with pytest.raises(InputError, match="not a LoRA.*full model checkpoint") as exc:
        resolve_lora(str(checkpoint))
    assert str(checkpoint) in one_line(exc)

    random = tmp_path / "random.safetensors"
    save_file({"weights": torch.randn(3, 3)}, str(random))
    with pytest.raises(InputError, match="not a LoRA.*other tensors") as exc:
        resolve_lora(str(random))
    one_line(exc)

    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(InputError, match="not a readable .safetensors") as exc:
        resolve_lora(str(garbage))
    one_line(exc)

    pipe = load(tiny_folders["sd-inpaint"])
    base = paint(pipe, inputs)
    for other_family in (loras["xl"], loras["xl-kohya"]):
        with pytest.raises(InputError, match="does not fit this model") as exc:
            apply_loras(pipe, [(str(other_family), 1.0)])
        assert str(other_family) in one_line(exc)
    # the failed loads left nothing behind
    assert not any(pipe.get_list_adapters().values())
    np.testing.assert_array_equal(paint(pipe, inputs), base)


def test_public_api_lora(tiny_folders, loras):
    rng = np.random.default_rng(1)
    image = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[16:48, 16:48] = True
    params = dict(engine="diffusion", model=str(tiny_folders["sd-inpaint"]), steps=2, seed=1)
    plain = canvaslab.inpaint(image, mask, **params)
    styled = canvaslab.inpaint(image, mask, lora=[f"{loras['a-kohya']}:0.8"], **params)
    assert not np.array_equal(plain.image, styled.image)
    np.testing.assert_array_equal(canvaslab.inpaint(image, mask, **params).image, plain.image)


@pytest.mark.slow
def test_an_incompatible_transformers_peft_pair_is_one_line_naming_the_fix(tiny_folders, loras, tmp_path):
    """transformers 5.24 with peft 0.21 (what a fresh unpinned install resolved on 2026-12-01) fails every
    LoRA load deep inside transformers; canvaslab says which pair and which pip command, before loading."""
    fake = tmp_path / "site"
    info = fake / "transformers-5.24.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 5.24.0\n")
    image, mask = write_png(tmp_path / "in.png", np.full((SIZE, SIZE, 3), 128, np.uint8)), tmp_path / "m.png"
    write_png(mask, np.pad(np.ones((16, 16), bool), 24))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "canvaslab", "inpaint", str(image), "--mask", str(mask), "--engine", "diffusion",
            "--model", str(tiny_folders["sd-inpaint"]), "--steps", "1", "-o", str(tmp_path / "out.png")]
    done = subprocess.run([*args, "--lora", str(loras["a"])], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: transformers 5.24.0 does not work with peft"), done.stderr
    assert "pip install 'transformers<5.24'" in lines[-1]
    assert not (tmp_path / "out.png").exists()
