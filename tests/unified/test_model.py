"""The backbone against an independent forward written from Show-o's equations, the mask contract,
the key/value cache, and the released parameter layout."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from canvaslab.engines.unified.attention import (  # noqa: E402
    decode_attention_mask,
    left_padding,
    mmu_attention_mask,
    position_ids,
    t2i_attention_mask,
)
from canvaslab.engines.unified.config import UnifiedConfig, tiny_unified_config  # noqa: E402
from canvaslab.engines.unified.model import UnifiedModel  # noqa: E402
from canvaslab.engines.unified.prompts import mmu_sequences, t2i_sequences  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402

from .tiny import tiny_model  # noqa: E402


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def equations_forward(state: dict[str, torch.Tensor], config: UnifiedConfig, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Show-o's Phi forward written from its equations (released key names), independent of our modules.

    x = embed(ids); per layer: h = LN(x); q, k, v = linear(h); per head q = LN_q(q), k = LN_k(k);
    rotary (rotate-half, cos/sin of pos * theta^(-2i/r)) on the first r = d * partial_rotary_factor
    dims; a = softmax(q k^T / sqrt(d) + mask) v; x = x + dense(a) + fc2(gelu_new(fc1(h)));
    logits = LN_final(x) W^T + b.
    """
    llm = config.llm
    heads, width = llm.num_attention_heads, llm.hidden_size
    d = width // heads
    rot = int(d * llm.partial_rotary_factor)
    batch, length = input_ids.shape

    def w(name):
        return state[f"showo.{name}"]

    def layer_norm(x, name, size):
        return F.layer_norm(x, (size,), w(f"{name}.weight"), w(f"{name}.bias"), llm.layer_norm_eps)

    def linear(x, name):
        return x @ w(f"{name}.weight").T + w(f"{name}.bias")

    inv_freq = 1.0 / llm.rope_theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).float()
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).float()

    def rotary(t):  # t: (B, heads, L, d)
        part, rest = t[..., :rot], t[..., rot:]
        half = torch.cat([-part[..., rot // 2 :], part[..., : rot // 2]], dim=-1)
        return torch.cat([part * cos + half * sin, rest], dim=-1)

    x = w("model.embed_tokens.weight")[input_ids]
    for i in range(llm.num_hidden_layers):
        p = f"model.layers.{i}"
        h = layer_norm(x, f"{p}.input_layernorm", width)
        q, k, v = (linear(h, f"{p}.self_attn.{n}_proj").view(batch, length, heads, d).transpose(1, 2) for n in "qkv")
        q = rotary(layer_norm(q, f"{p}.self_attn.q_layernorm", d))
        k = rotary(layer_norm(k, f"{p}.self_attn.k_layernorm", d))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + mask
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, width)
        x = x + linear(attended, f"{p}.self_attn.dense") + linear(gelu_new(linear(h, f"{p}.mlp.fc1")), f"{p}.mlp.fc2")
    return linear(layer_norm(x, "model.final_layernorm", width), "lm_head")


def t2i_batch(model: UnifiedModel) -> torch.Tensor:
    layout = model.layout
    codes = torch.tensor([[5, -1, 7, -1], [-1, -1, 3, 8191]])
    return t2i_sequences(layout, [[10, 11, 12], []], layout.codes_to_ids(codes), max_text_len=6)


def mmu_batch(model: UnifiedModel) -> torch.Tensor:
    layout = model.layout
    image = layout.codes_to_ids(torch.tensor([[1, 2, 3, 4], [4000, 5, 6, 8000]]))
    return mmu_sequences(layout, image, [[20, 21, 22, 23], [24]])


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["t2i", "mmu"])
def test_logits_match_the_equations_of_the_reference(attn_implementation, kind):
    model = tiny_model(attn_implementation=attn_implementation)
    if kind == "t2i":
        ids = t2i_batch(model)
        mask = t2i_attention_mask(ids, model.layout)
    else:
        ids = mmu_batch(model)
        mask = mmu_attention_mask(ids, model.layout)  # plain positions here: the reference's own numbering
    with torch.no_grad():
        ours = model(ids, mask)
        expected = equations_forward(model.state_dict(), model.config, ids, mask)
    assert ours.dtype == torch.float32 and ours.shape == (*ids.shape, model.config.vocab_size)
    assert expected.abs().max() > 1.0  # weights are random enough for a real comparison
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_the_mask_is_used_as_is_image_tokens_see_later_tokens_text_does_not(model):
    ids = t2i_batch(model)[:1]
    mask = t2i_attention_mask(ids, model.layout)
    changed = ids.clone()
    changed[0, -2] = model.layout.image_offset + 1234  # the last image token
    with torch.no_grad():
        before, after = model(ids, mask), model(changed, mask)
    first_image = ids.shape[1] - 1 - 4
    assert not torch.allclose(before[0, first_image], after[0, first_image])  # bidirectional inside the image
    assert torch.equal(before[0, : first_image - 1], after[0, : first_image - 1])  # causal text before <|soi|>


def test_none_mask_means_causal(model):
    ids = mmu_batch(model)[:1]
    with torch.no_grad():
        ours = model(ids)
    causal = torch.zeros(1, 1, ids.shape[1], ids.shape[1]).masked_fill(
        ~torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril(), torch.finfo(torch.float32).min
    )
    torch.testing.assert_close(ours, equations_forward(model.state_dict(), model.config, ids, causal), atol=1e-5, rtol=1e-5)


def test_kv_cache_gives_the_full_pass_logits(model):
    ids = mmu_batch(model)[:1]
    prefix = ids.shape[1] - 3
    with torch.no_grad():
        full = model(ids, mmu_attention_mask(ids, model.layout))
        cache = model.new_cache()
        steps = [model(ids[:, :prefix], mmu_attention_mask(ids[:, :prefix], model.layout), cache=cache)[:, -1]]
        for position in range(prefix, ids.shape[1]):
            no_padding = torch.zeros(1, position + 1, dtype=torch.bool)
            steps.append(model(ids[:, position : position + 1], decode_attention_mask(no_padding), cache=cache)[:, -1])
    cached = torch.stack(steps[:-1], dim=1)
    torch.testing.assert_close(cached, full[:, prefix - 1 : -1], atol=2e-6, rtol=1e-6)


def test_forward_with_and_without_cache_uses_no_deprecated_argument(model):
    """transformers 5.24 renamed the backbone's `past_key_values` to `cache` (the old name goes in 5.40):
    our forward passes whichever the installed version takes, and nothing when there is no cache."""
    import warnings

    ids = mmu_batch(model)[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        with torch.no_grad():
            full = model(ids, mmu_attention_mask(ids, model.layout))
            cache = model.new_cache()
            model(ids[:, :-1], mmu_attention_mask(ids[:, :-1], model.layout), cache=cache)
            last = model(ids[:, -1:], decode_attention_mask(torch.zeros(1, ids.shape[1], dtype=torch.bool)), cache=cache)
    assert cache.get_seq_length() == ids.shape[1]  # the cache really was used and grew
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=2e-6, rtol=1e-6)


def test_a_left_padded_row_computes_what_it_computes_alone(model):
    ids = mmu_batch(model)
    pad = left_padding(ids, model.layout.pad_id)
    alone = ids[1:, int(pad[1].sum()) :]
    with torch.no_grad():
        batched = model(ids, mmu_attention_mask(ids, model.layout), position_ids=position_ids(pad))
        single = model(alone, mmu_attention_mask(alone, model.layout))
    torch.testing.assert_close(batched[1, -alone.shape[1] :], single[0], atol=1e-5, rtol=1e-5)


def test_boolean_masks_are_converted_and_embeddings_work_like_ids(model):
    ids = t2i_batch(model)
    additive = t2i_attention_mask(ids, model.layout)
    with torch.no_grad():
        expected = model(ids, additive)
        torch.testing.assert_close(model(ids, additive == 0), expected, atol=0, rtol=0)
        torch.testing.assert_close(model(inputs_embeds=model.embed(ids), attention_mask=additive), expected, atol=0, rtol=0)


def test_a_mask_of_the_wrong_shape_is_refused(model):
    ids = t2i_batch(model)
    with pytest.raises(InputError, match=r"attention_mask has shape \(2, 1, 3, 3\)"):
        model(ids, torch.zeros(2, 1, 3, 3))


def test_released_config_builds_the_released_parameter_layout():
    with torch.device("meta"):
        released = UnifiedModel(UnifiedConfig())
        clip = UnifiedModel(UnifiedConfig(w_clip_vit=True))
    shapes = {key: tuple(t.shape) for key, t in released.state_dict().items()}
    assert all(key.startswith("showo.model.") or key.startswith("showo.lm_head.") for key in shapes)
    assert shapes["showo.model.embed_tokens.weight"] == (58498, 2048)
    assert shapes["showo.lm_head.weight"] == (58498, 2048)
    assert shapes["showo.lm_head.bias"] == (58498,)
    assert shapes["showo.model.layers.23.self_attn.q_layernorm.weight"] == (64,)
    assert shapes["showo.model.layers.0.self_attn.dense.bias"] == (2048,)
    assert shapes["showo.model.layers.0.mlp.fc1.weight"] == (8192, 2048)
    assert shapes["showo.model.final_layernorm.bias"] == (2048,)
    assert len(shapes) == 1 + 24 * 18 + 2 + 2  # embed, 18 tensors per layer, final norm, lm_head weight and bias
    extra = {key: tuple(t.shape) for key, t in clip.state_dict().items() if key.startswith("mm_projector.")}
    assert extra == {"mm_projector.0.weight": (2048, 1024), "mm_projector.0.bias": (2048,),
                     "mm_projector.2.weight": (2048, 2048), "mm_projector.2.bias": (2048,)}


def test_lm_head_is_not_tied_to_the_embeddings():
    model = UnifiedModel(tiny_unified_config())
    assert model.showo.lm_head.weight.data_ptr() != model.showo.model.embed_tokens.weight.data_ptr()
