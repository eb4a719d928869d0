"""MAGVIT-v2 tokenizer: shapes (square and not), lookup-free codes, and the released parameter layout."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from canvaslab.engines.unified.config import MagvitConfig, tiny_magvit_config  # noqa: E402
from canvaslab.engines.unified.magvit import LookupFreeQuantizer, Magvit  # noqa: E402
from canvaslab.errors import InputError  # noqa: E402

from .tiny import tiny_magvit  # noqa: E402


def pixels(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 96), (96, 48)])
def test_encode_downsamples_by_16_into_codes_of_the_8192_codebook(magvit, height, width):
    with torch.no_grad():
        codes = magvit.encode(pixels(2, height, width))
    assert codes.shape == (2, height // 16, width // 16)
    assert codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 8192
    assert codes.unique().numel() > 1


@pytest.mark.parametrize(("rows", "columns"), [(4, 4), (3, 5), (6, 2)])
def test_decode_any_grid_upsamples_by_16(magvit, rows, columns):
    codes = torch.randint(0, 8192, (2, rows, columns), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = magvit.decode(codes)
    assert images.shape == (2, 3, rows * 16, columns * 16)
    assert torch.isfinite(images).all()


def test_encode_is_the_sign_pattern_of_the_encoder_output(magvit):
    x = pixels(1, 64, 32)
    with torch.no_grad():
        latents = magvit.encoder(x)
        codes = magvit.encode(x)
    bits = (latents > 0).long()
    expected = sum(bits[:, c] << (12 - c) for c in range(13))  # channel 0 is the most significant bit
    assert torch.equal(codes, expected)


def test_lookup_free_codes_round_trip_through_their_latents():
    quantizer = LookupFreeQuantizer(13)
    codes = torch.arange(8192).reshape(1, 64, 128)
    latents = quantizer.latents(codes)
    assert latents.shape == (1, 13, 64, 128)
    assert set(latents.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(quantizer.codes(latents), codes)
    assert quantizer.latents(torch.tensor([[[1]]]))[0, :, 0, 0].tolist() == [-1.0] * 12 + [1.0]
    assert quantizer.latents(torch.tensor([[[4096]]]))[0, :, 0, 0].tolist() == [1.0] + [-1.0] * 12


def test_decode_refuses_codes_outside_the_codebook(magvit):
    with pytest.raises(InputError, match=r"image codes must be in \[0, 8192\)"):
        magvit.decode(torch.tensor([[[8192]]]))


def test_encode_refuses_sizes_that_are_not_multiples_of_16(magvit):
    with pytest.raises(InputError, match="must be a multiple of 16"):
        magvit.encode(pixels(1, 64, 40))


def test_smaller_codebooks_follow_the_bit_count():
    small = tiny_magvit(tiny_magvit_config(codebook_bits=6))
    with torch.no_grad():
        codes = small.encode(pixels(1, 32, 32))
    assert int(codes.max()) < 64 and small.quantize.embedding.shape == (64, 6)


def test_released_config_builds_the_released_parameter_layout():
    with torch.device("meta"):
        released = Magvit(MagvitConfig())
    shapes = {key: tuple(t.shape) for key, t in released.state_dict().items()}
    assert {key.split(".")[0] for key in shapes} == {"encoder", "decoder", "quantize"}
    assert shapes["quantize.embedding"] == (8192, 13)
    assert shapes["quantize.power_vals"] == (13,)
    assert shapes["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert shapes["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert shapes["encoder.down.3.downsample.conv.weight"] == (512, 512, 3, 3)
    assert "encoder.down.4.downsample.conv.weight" not in shapes
    assert shapes["encoder.mid.attn_1.proj_out.weight"] == (512, 512, 1, 1)
    assert shapes["encoder.conv_out.weight"] == (13, 512, 3, 3)
    assert shapes["encoder.quant_conv.weight"] == (13, 13, 1, 1)
    assert shapes["decoder.post_quant_conv.weight"] == (13, 13, 1, 1)
    assert shapes["decoder.conv_in.weight"] == (512, 13, 3, 3)
    assert shapes["decoder.up.4.upsample.conv.weight"] == (512, 512, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in shapes
    assert shapes["decoder.up.0.block.3.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["decoder.conv_out.weight"] == (3, 128, 3, 3)
    def blocks(prefix: str) -> list[int]:
        return [len({k.split(".")[4] for k in shapes if k.startswith(f"{prefix}.{level}.block.")}) for level in range(5)]

    assert blocks("encoder.down") == [4, 3, 4, 3, 4]
    assert blocks("decoder.up") == [4, 4, 3, 4, 3]
    assert not any(".attn." in key for key in shapes)  # attention only in the middle blocks at 256 px
    assert not any("temb_proj" in key for key in shapes)
