"""Loading model + MAGVIT + text tokenizer together, offline, with one-sentence errors."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from canvaslab.engines.unified.bundle import load_bundle, save_bundle  # noqa: E402
from canvaslab.errors import ModelNotAvailableError  # noqa: E402


def test_a_saved_bundle_loads_and_round_trips(bundle_folder, tmp_path):
    bundle = load_bundle(bundle_folder)
    ids = bundle.text_ids(["A red square?"])[0]
    assert bundle.decode_text(ids) == "a red square?"
    assert max(ids) < bundle.config.llm_vocab_size
    codes = bundle.image_codes(torch.zeros(1, 3, 64, 32))
    assert codes.shape == (1, 4, 2) and bundle.decode_codes(codes).shape == (1, 3, 64, 32)
    copy = load_bundle(save_bundle(bundle, tmp_path / "copy"))
    batch = torch.randint(0, 50, (1, 9))
    assert torch.equal(copy.model(batch), bundle.model(batch))


def test_missing_parts_are_one_sentence(bundle_folder, tmp_path):
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(bundle_folder, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    with pytest.raises(ModelNotAvailableError, match="no text tokenizer .*canvaslab/tiny-phi.*--opt tokenizer"):
        load_bundle(no_tokenizer)
    assert load_bundle(no_tokenizer, tokenizer=bundle_folder).tokenizer is not None
    no_magvit = tmp_path / "no-magvit"
    shutil.copytree(bundle_folder, no_magvit, ignore=shutil.ignore_patterns("magvit"))
    with pytest.raises(ModelNotAvailableError, match="showlab/magvitv2 was not found"):
        load_bundle(no_magvit)
    config = json.loads((no_magvit / "config.json").read_text())
    (no_magvit / "config.json").write_text(json.dumps({**config, "vq_model_path": str(bundle_folder / "magvit")}))
    assert load_bundle(no_magvit).magvit is not None
    with pytest.raises(ModelNotAvailableError, match="was not found"):
        load_bundle(tmp_path / "nothing-here")
