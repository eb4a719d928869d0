"""Loading and saving in the released layouts, offline, with one clear error per missing piece."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from canvaslab.engines.unified.attention import t2i_attention_mask  # noqa: E402
from canvaslab.engines.unified.config import KNOWN_LLMS, LLMConfig, tiny_unified_config  # noqa: E402
from canvaslab.engines.unified.loading import (  # noqa: E402
    load_magvit,
    load_unified_model,
    read_unified_config,
    save_magvit,
    save_unified_model,
)
from canvaslab.engines.unified.prompts import t2i_sequences  # noqa: E402
from canvaslab.errors import ModelNotAvailableError  # noqa: E402

from .tiny import tiny_model  # noqa: E402

# The released showlab/show-o config.json (diffusers ConfigMixin style): no backbone fields at all.
RELEASED_CONFIG = {
    "_class_name": "Showo",
    "_diffusers_version": "0.30.1",
    "codebook_size": 8192,
    "llm_model_path": "microsoft/phi-1_5",
    "llm_vocab_size": 50295,
    "load_from_showo": False,
    "mask_token_id": 58497,
    "num_new_special_tokens": 10,
    "num_vq_tokens": 256,
    "vocab_size": 58498,
    "w_clip_vit": False,
}


def sample_inputs(model):
    layout = model.layout
    ids = t2i_sequences(layout, [[10, 11], [12]], layout.codes_to_ids(torch.tensor([[1, -1, 3, 4] * 4, [-1] * 16])), max_text_len=5)
    return ids, t2i_attention_mask(ids, layout)


def copy_folder(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


@pytest.mark.parametrize("safe", [False, True])
def test_saved_model_loads_back_with_identical_logits(model, tmp_path, safe):
    folder = save_unified_model(model, tmp_path / "m", safe_serialization=safe)
    assert (folder / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    loaded = load_unified_model(folder)
    ids, mask = sample_inputs(model)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))
    assert loaded.config == model.config
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert not loaded.training


def test_saved_files_are_in_the_released_layout(model_folder, model):
    config = json.loads((model_folder / "config.json").read_text())
    assert {k: config[k] for k in ("_class_name", "vocab_size", "llm_vocab_size", "codebook_size", "num_vq_tokens",
                                   "num_new_special_tokens", "w_clip_vit", "mask_token_id")} == {
        "_class_name": "Showo", "vocab_size": model.config.vocab_size, "llm_vocab_size": 96, "codebook_size": 8192,
        "num_vq_tokens": 16, "num_new_special_tokens": 10, "w_clip_vit": False, "mask_token_id": model.config.vocab_size - 1}
    state = torch.load(model_folder / "pytorch_model.bin", weights_only=True)
    assert {key.split(".")[1] for key in state} == {"model", "lm_head"} and all(k.startswith("showo.") for k in state)


def test_clip_variant_round_trips_its_projector(tmp_path):
    clip = tiny_model(tiny_unified_config(w_clip_vit=True))
    loaded = load_unified_model(save_unified_model(clip, tmp_path / "clip"))
    features = torch.randn(1, 3, 32)
    assert torch.equal(loaded.mm_projector(features), clip.mm_projector(features))


def test_released_config_gets_the_phi_backbone_offline(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RELEASED_CONFIG))
    config = read_unified_config(tmp_path)
    assert config.llm == KNOWN_LLMS["microsoft/phi-1_5"] == LLMConfig()
    assert (config.llm.hidden_size, config.llm.num_hidden_layers, config.llm.partial_rotary_factor) == (2048, 24, 0.5)
    assert config.mask_token_id == 58497


def test_a_local_llm_folder_provides_the_backbone(tmp_path):
    (tmp_path / "phi").mkdir()
    (tmp_path / "phi" / "config.json").write_text(json.dumps(
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.25}, "bos_token_id": None}))
    data = {**tiny_unified_config().to_json_dict(), "llm_model_path": "phi"}
    del data["llm_config"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    llm = read_unified_config(tmp_path).llm
    assert (llm.hidden_size, llm.rope_theta, llm.partial_rotary_factor) == (64, 500.0, 0.25)


def test_unknown_backbone_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**RELEASED_CONFIG, "llm_model_path": "someone/other-llm"}))
    with pytest.raises(ModelNotAvailableError, match="unknown backbone llm_model_path 'someone/other-llm'"):
        read_unified_config(tmp_path)


def test_inconsistent_mask_token_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**RELEASED_CONFIG, "mask_token_id": 5}))
    with pytest.raises(ModelNotAvailableError, match="mask_token_id 5 is not vocab_size - 1"):
        read_unified_config(tmp_path)


def test_missing_folder_or_unknown_hub_id(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="was not found: pass a local folder"):
        load_unified_model(tmp_path / "nowhere")
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download canvaslab-tests/not-a-model"):
        load_unified_model("canvaslab-tests/not-a-model")


def test_a_file_instead_of_a_folder(model_folder):
    with pytest.raises(ModelNotAvailableError, match="is a file; pass the folder"):
        load_unified_model(model_folder / "config.json")


def test_missing_config(model_folder, tmp_path):
    folder = copy_folder(model_folder, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ModelNotAvailableError, match="has no config.json"):
        load_unified_model(folder)


def test_missing_weights(model_folder, tmp_path):
    folder = copy_folder(model_folder, tmp_path)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(ModelNotAvailableError, match="has no weights: it needs pytorch_model.bin"):
        load_unified_model(folder)


def test_truncated_weights(model_folder, tmp_path):
    folder = copy_folder(model_folder, tmp_path)
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotAvailableError, match="could not be read .*damaged or incomplete"):
        load_unified_model(folder)


def test_weights_lacking_tensors(model_folder, tmp_path):
    folder = copy_folder(model_folder, tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["showo.lm_head.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match=r"lack 1 of the \d+ tensors the config needs \(first: showo.lm_head.bias\)"):
        load_unified_model(folder)


def test_weights_that_do_not_fit_the_config(model_folder, tmp_path):
    folder = copy_folder(model_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["llm_config"]["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotAvailableError, match=r"fc1.weight .* has shape \(128, 64\) but config.json implies \(96, 64\)"):
        load_unified_model(folder)


def test_sharded_weights_load_and_a_missing_shard_is_named(model, tmp_path):
    from safetensors.torch import save_file

    folder = save_unified_model(model, tmp_path / "sharded", safe_serialization=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    (folder / "model.safetensors").unlink()
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(folder / name))
    weight_map = {k: name for name, names in shards.items() for k in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids, mask = sample_inputs(model)
    with torch.no_grad():
        assert torch.equal(load_unified_model(folder)(ids, mask), model(ids, mask))
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelNotAvailableError, match=r"lacks 1 weight shard\(s\) listed in model.safetensors.index.json"):
        load_unified_model(folder)


def test_magvit_round_trip_and_released_folder_without_quantizer_tables(magvit, magvit_folder, tmp_path):
    codes = torch.randint(0, 8192, (1, 2, 3), generator=torch.Generator().manual_seed(0))
    loaded = load_magvit(magvit_folder)
    with torch.no_grad():
        assert torch.equal(loaded.decode(codes), magvit.decode(codes))
    folder = copy_folder(magvit_folder, tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["quantize.embedding"], state["quantize.power_vals"]
    torch.save(state, folder / "pytorch_model.bin")
    with torch.no_grad():
        assert torch.equal(load_magvit(folder).decode(codes), magvit.decode(codes))


def test_magvit_with_missing_tensors_or_config(magvit_folder, tmp_path):
    folder = copy_folder(magvit_folder, tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["decoder.conv_out.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match="MAGVIT tokenizer weights .* lack 1 of the"):
        load_magvit(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelNotAvailableError, match="MAGVIT tokenizer folder .* has no config.json"):
        load_magvit(folder)


def test_magvit_saved_config_lists_the_architecture(magvit, tmp_path):
    config = json.loads((save_magvit(magvit, tmp_path / "v", safe_serialization=True) / "config.json").read_text())
    assert config["_class_name"] == "MAGVITv2" and config["codebook_bits"] == 13 and config["ch"] == 32
