"""The tiny DiT-family factory (tiny_dit.py): every kind saves, loads back through its pipelines' public
`from_pretrained(folder, local_files_only=True)` and runs each task it supports, offline, deterministically.

Also pins what transformer-only files load for the FLUX kinds: the diffusers layout and GGUF files
(with `config=` naming a local folder) do; BFL's original FLUX.1 layout does not at a tiny width.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from . import tiny_dit  # noqa: E402
from .tiny_dit import DIT_KINDS, DIT_SPECS, FLUX_TRANSFORMER_KINDS  # noqa: E402

# diffusers 0.42's schedulers call np.array on tensors in a way numpy 2 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

SIZE = tiny_dit.NATIVE_SIZE

# What real use sets, so the tiny runs take the same branches: true CFG (a doubled batch or a second
# pass), the distilled guidance embedding, or neither.
FAMILY_KWARGS = {
    "sd3": dict(guidance_scale=5.0, negative_prompt="blurry"),
    "flux": dict(guidance_scale=3.5),
    "qwen-image": dict(true_cfg_scale=4.0, negative_prompt=" "),
    "flux2": dict(guidance_scale=4.0),
    "z-image": dict(guidance_scale=0.0),  # Turbo
}
KIND_KWARGS = {
    "flux-kontext": dict(max_area=SIZE * SIZE, _auto_resize=False),  # else the image is resized to ~1 Mpx
    "flux2-klein": dict(guidance_scale=1.0),  # distilled: any other value is ignored with a warning
}
CASES = [pytest.param(kind, task, id=f"{kind}-{task}") for kind in DIT_KINDS for task in DIT_SPECS[kind].pipelines]


class QwenEditDimensions:
    """Stands in for Qwen-Image-Edit's `calculate_dimensions`, which sizes the work at ~1 Mpx whatever the
    request (6-20 s per run on a tiny model, mostly VAE passes at 1024x1024): records what the pipeline
    asked for and answers a tiny size (width, height)."""

    def __init__(self):
        self.calls: list[tuple[int, float]] = []
        self.answer = (SIZE, SIZE)

    def __call__(self, target_area, ratio):
        self.calls.append((target_area, ratio))
        return *self.answer, None


@pytest.fixture(autouse=True)
def qwen_edit_dimensions(monkeypatch) -> QwenEditDimensions:
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_inpaint

    dimensions = QwenEditDimensions()
    for module in (pipeline_qwenimage_edit, pipeline_qwenimage_edit_inpaint):
        monkeypatch.setattr(module, "calculate_dimensions", dimensions)
    return dimensions


@pytest.fixture(scope="module")
def image(photo: np.ndarray) -> Image.Image:
    return Image.fromarray(photo).resize((SIZE, SIZE), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def mask() -> Image.Image:
    box = np.zeros((SIZE, SIZE), np.uint8)
    box[16:40, 20:48] = 255
    return Image.fromarray(box)


def _inputs(kind: str, task: str, image: Image.Image, mask: Image.Image, seed: int) -> dict:
    spec = DIT_SPECS[kind]
    inputs = dict(
        prompt="a red cat on a blue chair",
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    inputs |= FAMILY_KWARGS[spec.family] | KIND_KWARGS.get(kind, {})
    if task in ("edit", "inpaint"):
        inputs["image"] = image
    if task == "inpaint":
        inputs["mask_image"] = mask
    return inputs


@pytest.mark.parametrize(("kind", "task"), CASES)
def test_pipeline_runs_deterministically(kind, task, tiny_dit_folders, image, mask):
    pipe = tiny_dit.load_dit_pipeline(kind, tiny_dit_folders[kind], task)
    assert type(pipe).__name__ == DIT_SPECS[kind].pipelines[task]

    first = pipe(**_inputs(kind, task, image, mask, seed=0)).images
    again = pipe(**_inputs(kind, task, image, mask, seed=0)).images
    other = pipe(**_inputs(kind, task, image, mask, seed=1)).images

    assert first.shape == (1, SIZE, SIZE, 3)
    assert not np.isnan(first).any()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4, "another seed should change the image"


@pytest.mark.parametrize("task", ["edit", "inpaint"])
def test_qwen_image_edit_sizes_its_work_by_one_megapixel(task, tiny_dit_folders, image, mask, qwen_edit_dimensions):
    """Both pipelines resize the input to `calculate_dimensions(1024 * 1024, aspect)`; edit still answers
    at the requested height/width, edit-inpaint ignores them and answers at the computed size."""
    kind = "qwen-image-edit"
    qwen_edit_dimensions.answer = (96, 80)  # width, height
    pipe = tiny_dit.load_dit_pipeline(kind, tiny_dit_folders[kind], task)
    images = pipe(**_inputs(kind, task, image, mask, seed=0)).images
    assert qwen_edit_dimensions.calls == [(1024 * 1024, 1.0)]
    assert images.shape == ((1, SIZE, SIZE, 3) if task == "edit" else (1, 80, 96, 3))


def _settings(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}  # not the class name, version, defaults list


def _modules(pipe) -> dict:
    return {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


@pytest.mark.parametrize("kind", DIT_KINDS)
def test_saved_folder_loads_the_same_weights(kind, tiny_dit_folders):
    """A fresh build (same seeds) equals what loads back from the saved folder, tokenizers included."""
    built = tiny_dit.build_components(kind)
    loaded = tiny_dit.load_dit_pipeline(kind, tiny_dit_folders[kind])

    modules = _modules(loaded)
    assert set(modules) == {name for name, c in built.items() if isinstance(c, torch.nn.Module)}
    for name, module in modules.items():
        want, got = built[name].state_dict(), module.state_dict()
        assert want.keys() == got.keys(), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}.{key}"
    assert _settings(loaded.scheduler.config) == _settings(built["scheduler"].config)

    for name, component in loaded.components.items():
        if name.startswith("tokenizer"):
            assert len(component) > 2, f"{name} lost its vocabulary"
            prompt = "a red cat"
            assert component(prompt).input_ids == built[name](prompt).input_ids


@pytest.mark.parametrize("kind", DIT_KINDS)
def test_every_kind_declares_its_pipelines(kind):
    import diffusers

    for class_name in DIT_SPECS[kind].pipelines.values():
        assert hasattr(diffusers, class_name)
    with pytest.raises(ValueError, match="supports"):
        tiny_dit.pipeline_class(kind, "understand")


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="flux-fill"):
        tiny_dit.check_kind("flux-dev")


def test_flux_fill_takes_the_real_384_input_channels():
    transformer = tiny_dit.build_transformer("flux-fill")
    assert (transformer.config.in_channels, transformer.config.out_channels) == (384, 64)


def test_qwen_image_edit_processor_needs_torchvision_to_load(tiny_dit_folders):
    """Without torchvision transformers 5.23 cannot load Qwen2VLProcessor (its video processor needs it)."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: the processor loads the ordinary way")
    from diffusers import QwenImageEditPipeline

    with pytest.raises(ImportError, match="Torchvision"):
        QwenImageEditPipeline.from_pretrained(tiny_dit_folders["qwen-image-edit"], local_files_only=True)


# -- transformer-only files ----------------------------------------------------------------------


def _transformer_class(kind: str):
    import diffusers

    return diffusers.Flux2Transformer2DModel if kind.startswith("flux2") else diffusers.FluxTransformer2DModel


def _folder_transformer(kind: str, folder):
    return _transformer_class(kind).from_pretrained(folder, subfolder="transformer", local_files_only=True)


def _from_single_file(kind: str, path, folder, **kwargs):
    # config= a local folder keeps the loader offline (it would otherwise guess a hub repo from the keys)
    return _transformer_class(kind).from_single_file(
        str(path), config=str(folder), subfolder="transformer", local_files_only=True, **kwargs
    )


def _assert_same_weights(model, reference) -> None:
    want, got = reference.state_dict(), model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


@pytest.mark.parametrize("kind", FLUX_TRANSFORMER_KINDS)
def test_transformer_file_in_diffusers_layout_round_trips(kind, tiny_dit_folders, tmp_path):
    folder = tiny_dit_folders[kind]
    path = tiny_dit.save_transformer_single_file(kind, tmp_path / f"{kind}.safetensors")
    _assert_same_weights(_from_single_file(kind, path, folder), _folder_transformer(kind, folder))


@pytest.mark.parametrize("kind", [k for k in FLUX_TRANSFORMER_KINDS if k.startswith("flux2")])
def test_flux2_transformer_file_in_bfl_layout_round_trips(kind, tiny_dit_folders, tmp_path):
    """diffusers' FLUX.2 converter reads every width from the tensors, so the original layout loads too."""
    folder = tiny_dit_folders[kind]
    path = tiny_dit.save_transformer_single_file(kind, tmp_path / f"{kind}-bfl.safetensors", layout="bfl")
    _assert_same_weights(_from_single_file(kind, path, folder), _folder_transformer(kind, folder))


def test_flux1_transformer_file_in_bfl_layout_needs_the_real_width(tiny_dit_folders, tmp_path):
    """diffusers 0.42.1 splits FLUX.1's fused single-block weights at a hard-coded 3072 (the real width).

    If this starts passing, diffusers reads the width from the file and tiny BFL files become testable.
    """
    kind = "flux-txt2img"
    path = tiny_dit.save_transformer_single_file(kind, tmp_path / "flux-bfl.safetensors", layout="bfl")
    with pytest.raises(RuntimeError, match=r"split_sizes=\[3072, 3072, 3072, 12288\]"):
        _from_single_file(kind, path, tiny_dit_folders[kind])


def _transformer_inputs(model) -> dict:
    """One denoiser call on a 4x4 token grid (64 px) and 8 text tokens, with the kind's position ids."""
    config = model.config
    generator = torch.Generator("cpu").manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, config.in_channels, generator=generator),
        encoder_hidden_states=torch.randn(1, 8, config.joint_attention_dim, generator=generator),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]) if config.guidance_embeds else None,
    )
    grid = torch.cartesian_prod(torch.arange(4), torch.arange(4))
    if "pooled_projection_dim" in config:  # FLUX.1: (t, h, w) ids and a pooled CLIP vector
        inputs["img_ids"] = torch.cat([torch.zeros(16, 1), grid], dim=1)
        inputs["txt_ids"] = torch.zeros(8, 3)
        inputs["pooled_projections"] = torch.randn(1, config.pooled_projection_dim, generator=generator)
    else:  # FLUX.2: (t, h, w, l) ids
        inputs["img_ids"] = torch.cat([torch.zeros(16, 1), grid, torch.zeros(16, 1)], dim=1)
        inputs["txt_ids"] = torch.cat([torch.zeros(8, 3), torch.arange(8)[:, None]], dim=1)
    return inputs


# Relative error of the denoiser's output against the unquantised model (measured: Q8_0 ~5e-3, Q4_0 ~9e-2).
GGUF_TOLERANCE = {"Q8_0": 2e-2, "Q4_0": 2e-1}


@pytest.mark.parametrize("quant", list(GGUF_TOLERANCE))
@pytest.mark.parametrize(
    ("kind", "layout"),
    [(kind, "diffusers") for kind in FLUX_TRANSFORMER_KINDS] + [("flux2-klein", "bfl")],
)
def test_gguf_transformer_loads_on_cpu_close_to_the_unquantised_one(kind, layout, quant, tiny_dit_folders, tmp_path):
    pytest.importorskip("gguf")
    from diffusers import GGUFQuantizationConfig
    from diffusers.quantizers.gguf.utils import GGUFParameter

    folder = tiny_dit_folders[kind]
    path = tiny_dit.save_transformer_gguf(kind, tmp_path / f"{kind}-{quant}.gguf", quant=quant, layout=layout)
    config = GGUFQuantizationConfig(compute_dtype=torch.float32)
    quantised = _from_single_file(kind, path, folder, quantization_config=config)
    reference = _folder_transformer(kind, folder)
    assert isinstance(quantised.x_embedder.weight, GGUFParameter)

    inputs = _transformer_inputs(reference)
    with torch.no_grad():
        want = reference(**inputs).sample
        got = quantised(**inputs).sample
    error = ((got - want).norm() / want.norm()).item()
    assert 0 < error < GGUF_TOLERANCE[quant]


def test_gguf_transformer_runs_in_the_pipeline(tiny_dit_folders, tmp_path):
    pytest.importorskip("gguf")
    from diffusers import FluxPipeline, GGUFQuantizationConfig

    kind, folder = "flux-txt2img", tiny_dit_folders["flux-txt2img"]
    path = tiny_dit.save_transformer_gguf(kind, tmp_path / "flux-Q8_0.gguf")
    config = GGUFQuantizationConfig(compute_dtype=torch.float32)
    transformer = _from_single_file(kind, path, folder, quantization_config=config)
    inputs = dict(prompt="a cat", height=SIZE, width=SIZE, num_inference_steps=2, output_type="np")

    quantised = FluxPipeline.from_pretrained(folder, transformer=transformer, local_files_only=True)
    got = quantised(**inputs, generator=torch.Generator("cpu").manual_seed(0)).images
    plain = FluxPipeline.from_pretrained(folder, local_files_only=True)
    want = plain(**inputs, generator=torch.Generator("cpu").manual_seed(0)).images
    assert got.shape == want.shape == (1, SIZE, SIZE, 3)
    np.testing.assert_allclose(got, want, atol=2e-2)
