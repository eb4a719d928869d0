"""Numerical parity of our LaMa and MI-GAN with the reference implementations, on random weights.

The references' forward passes are re-derived here from their equations, independently of our modules:
float64 numpy/torch functional code reading the weights by their released names, with its own FFT
(numpy), explicit BatchNorm, explicit StyleGAN2 FIR resampling (zero insertion, [1, 3, 3, 1] filters
built here, not read from the weights) and the references' own pre/post-processing (LaMa's
pad_img_to_modulo / predict.py truncation, IOPaint's MI-GAN normalisation, polarity, square padding,
rounding). Our fp32 raw outputs must be within 1e-4 of them; the uint8 results may differ only where
float rounding crosses a level boundary.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import learned_tiny  # noqa: E402
learned_files = learned_tiny.learned_files  # the session fixture, visible to this module's tests
from canvaslab.engines.learned.engine import LamaEngine, lama_forward, migan_forward  # noqa: E402
from canvaslab.engines.learned.lama import FFCSpec, LamaConfig, inpaint_tensor  # noqa: E402
from canvaslab.engines.learned.loading import LamaNetwork, MiganNetwork  # noqa: E402


# -- LaMa, from the FFC equations -----------------------------------------------------------------

def _sd64(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double() for k, v in module.state_dict().items()}


def _bn(w, name, x):
    mean, var = w[f"{name}.running_mean"], w[f"{name}.running_var"]
    scale = w[f"{name}.weight"] / torch.sqrt(var + 1e-5)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + w[f"{name}.bias"][None, :, None, None]


def _conv_reflect(x, weight, stride=1, pad=0):
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(x, weight, stride=stride)


def _fourier_unit(w, name, x):
    """Y = irfft2(ReLU(BN(W [Re X; Im X]))), X = rfft2(x) ("ortho"), channels interleaved c.re, c.im."""
    b, c, h, width = x.shape
    spectrum = np.fft.rfft2(x.numpy(), norm="ortho")
    stacked = np.empty((b, 2 * c, h, spectrum.shape[-1]))
    stacked[:, 0::2], stacked[:, 1::2] = spectrum.real, spectrum.imag
    y = torch.relu(_bn(w, f"{name}.bn", F.conv2d(torch.from_numpy(stacked), w[f"{name}.conv_layer.weight"]))).numpy()
    return torch.from_numpy(np.fft.irfft2(y[:, 0::2] + 1j * y[:, 1::2], s=(h, width), norm="ortho"))


def _spectral(w, name, x, lfu):
    x = torch.relu(_bn(w, f"{name}.conv1.1", F.conv2d(x, w[f"{name}.conv1.0.weight"])))
    out = x + _fourier_unit(w, f"{name}.fu", x)
    if lfu:
        c, h, width = x.shape[1:]
        q = x[:, : c // 4]
        tiles = torch.cat([q[..., : h // 2, : width // 2], q[..., h // 2:, : width // 2],
                           q[..., : h // 2, width // 2:], q[..., h // 2:, width // 2:]], dim=1)
        out = out + _fourier_unit(w, f"{name}.lfu", tiles).repeat(1, 1, 2, 2)
    return F.conv2d(out, w[f"{name}.conv2.weight"])


def _ffc_bn_act(w, name, local, glob, *, stride=1, pad=0, lfu=False):
    has = lambda key: f"{name}.ffc.{key}.weight" in w  # noqa: E731
    out_l = out_g = None
    if has("convl2l") or has("convg2l"):
        out_l = 0
        if has("convl2l"):
            out_l = out_l + _conv_reflect(local, w[f"{name}.ffc.convl2l.weight"], stride, pad)
        if has("convg2l"):
            out_l = out_l + _conv_reflect(glob, w[f"{name}.ffc.convg2l.weight"], stride, pad)
        out_l = torch.relu(_bn(w, f"{name}.bn_l", out_l))
    if has("convl2g") or f"{name}.ffc.convg2g.conv2.weight" in w:
        out_g = 0
        if has("convl2g"):
            out_g = out_g + _conv_reflect(local, w[f"{name}.ffc.convl2g.weight"], stride, pad)
        if f"{name}.ffc.convg2g.conv2.weight" in w:
            out_g = out_g + _spectral(w, f"{name}.ffc.convg2g", glob, lfu)
        out_g = torch.relu(_bn(w, f"{name}.bn_g", out_g))
    return out_l, out_g


def reference_lama(w, config: LamaConfig, x: torch.Tensor) -> torch.Tensor:
    """FFCResNetGenerator's forward for a big-LaMa-style config, from its equations."""
    i = 0
    x = F.pad(x, (3, 3, 3, 3), mode="reflect")
    local, glob = _ffc_bn_act(w, f"model.{i + 1}", x, None)
    i = 2
    for _ in range(config.n_downsampling):
        local, glob = _ffc_bn_act(w, f"model.{i}", local, glob, stride=2, pad=1)
        i += 1
    for _ in range(config.n_blocks):
        a_l, a_g = _ffc_bn_act(w, f"model.{i}.conv1", local, glob, pad=1, lfu=config.resnet.enable_lfu)
        b_l, b_g = _ffc_bn_act(w, f"model.{i}.conv2", a_l, a_g, pad=1, lfu=config.resnet.enable_lfu)
        local, glob = local + b_l, glob + b_g
        i += 1
    x = torch.cat([local, glob], dim=1)
    i += 1  # the concatenation layer
    for _ in range(config.n_downsampling):
        x = F.conv_transpose2d(x, w[f"model.{i}.weight"], w[f"model.{i}.bias"], stride=2, padding=1, output_padding=1)
        x = torch.relu(_bn(w, f"model.{i + 1}", x))
        i += 3
    x = F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), w[f"model.{i + 1}.weight"], w[f"model.{i + 1}.bias"])
    return torch.sigmoid(x)


@pytest.mark.parametrize("lfu, size", [(False, (40, 72)), (True, (48, 48))])
def test_lama_generator_matches_the_reference_equations(lfu, size):
    config = LamaConfig(ngf=4, n_blocks=2, resnet=FFCSpec(0.75, 0.75, lfu))
    generator = learned_tiny.lama_generator(3, config)
    x = torch.rand(1, 4, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = generator(x)
    reference = reference_lama(_sd64(generator), config, x.double())
    assert ours.shape == (1, 3, *size)
    assert float((ours.double() - reference).abs().max()) <= 1e-4
    assert float(reference.std()) > 1e-2  # a real signal, not a constant


def reference_lama_predict(generator, rgb: np.ndarray, mask_u8: np.ndarray) -> np.ndarray:
    """LaMa's predict.py on one image: load_image (/255, CHW), pad_img_to_modulo(8) (np.pad symmetric) of image
    and mask, mask > 0, the training module's `inpainted`, unpad, np.clip(x * 255).astype(uint8)."""
    image = rgb.transpose(2, 0, 1).astype(np.float32) / 255
    mask = (mask_u8.astype(np.float32) / 255)[None]
    h, w = mask.shape[1:]
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    image = np.pad(image, ((0, 0), (0, ph - h), (0, pw - w)), mode="symmetric")
    mask = (np.pad(mask, ((0, 0), (0, ph - h), (0, pw - w)), mode="symmetric") > 0).astype(np.float64)
    img = torch.from_numpy(image).double()[None]
    hole = torch.from_numpy(mask)[None]
    predicted = reference_lama(_sd64(generator), generator.config, torch.cat([img * (1 - hole), hole], dim=1))
    inpainted = (hole * predicted + (1 - hole) * img)[0].permute(1, 2, 0).numpy()[:h, :w]
    return np.clip(inpainted * 255, 0, 255).astype(np.uint8), inpainted


def _assert_uint8_parity(ours: np.ndarray, reference: np.ndarray) -> None:
    diff = np.abs(ours.astype(int) - reference.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_lama_pre_and_post_processing_match_predict_py(photo):
    generator = learned_tiny.lama_generator(4)
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[20:70, 30:95] = 255  # 150x100: padded to 152x104
    mask[0:6, 140:150] = 255  # a hole at the border, mirrored into the padding
    network = LamaNetwork(lambda image, hole: inpaint_tensor(generator, image, hole), 8, torch.device("cpu"), "checkpoint")
    ours = lama_forward(network, photo, mask > 0)
    expected, floats = reference_lama_predict(generator, photo, mask)
    _assert_uint8_parity(ours, expected)
    np.testing.assert_array_equal(ours[mask == 0], photo[mask == 0])  # the known pixels come back as they were
    assert np.abs(floats[mask > 0] - photo[mask > 0] / 255).mean() > 0.01  # and the hole is the network's


def test_lama_engine_from_the_released_layout_matches_predict_py(photo, learned_files):
    """The whole engine path (checkpoint folder -> config.yaml -> our generator) against the reference."""
    generator = learned_tiny.lama_generator(0)  # the seed build_torch saved
    mask = np.zeros(photo.shape[:2], bool)
    mask[30:60, 50:90] = True
    engine = LamaEngine()
    ours = engine.fill(photo, mask, learned_files["lama-folder"], engine.parse_options({}), "cpu")
    expected, _ = reference_lama_predict(generator, photo, mask.astype(np.uint8) * 255)
    _assert_uint8_parity(ours, expected)


# -- MI-GAN, from the StyleGAN2-style equations -------------------------------------------------------

def _fir(gain: float) -> torch.Tensor:
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    return torch.outer(taps, taps) / 64 * gain


def _act(x):
    return (F.leaky_relu(x, 0.2) * np.sqrt(2)).clamp(-256, 256)


def _down(x):
    c = x.shape[1]
    return F.conv2d(x, _fir(1.0).expand(c, 1, 4, 4), stride=2, padding=1, groups=c)


def _up(x):
    b, c, h, width = x.shape
    y = torch.zeros(b, c, 2 * h, 2 * width, dtype=x.dtype)
    y[..., ::2, ::2] = x
    return F.conv2d(F.pad(y, (2, 1, 2, 1)), _fir(4.0).expand(c, 1, 4, 4), groups=c)


def _sep(w, name, x, *, down=False, up=False, noise=False):
    c = x.shape[1]
    x = _act(F.conv2d(x, w[f"{name}.conv1.weight"], w[f"{name}.conv1.bias"], padding=1, groups=c))
    if down:
        x = _down(x)
    x = F.conv2d(x, w[f"{name}.conv2.weight"])
    if up:
        x = _up(x)
    if noise:
        x = x + w[f"{name}.noise_const"] * w[f"{name}.noise_strength"]
    return _act(x)


def reference_migan(w, resolution: int, x: torch.Tensor) -> torch.Tensor:
    scales = [2**i for i in range(int(np.log2(resolution)), 1, -1)]  # R ... 4
    feats, h = {}, None
    for res in scales:
        block = f"encoder.b{res}"
        if res == resolution:
            h = _act(F.conv2d(x, w[f"{block}.fromrgb.weight"], w[f"{block}.fromrgb.bias"]))
        feats[res] = _sep(w, f"{block}.conv1", h)
        h = _sep(w, f"{block}.conv2", feats[res], down=res != 4)
    h = _sep(w, "synthesis.b4.conv2", _sep(w, "synthesis.b4.conv1", h) + feats[4])
    rgb = F.conv2d(h, w["synthesis.b4.torgb.weight"], w["synthesis.b4.torgb.bias"])
    for res in scales[::-1][1:]:
        block = f"synthesis.b{res}"
        h = _sep(w, f"{block}.conv1", h, up=True, noise=True) + feats[res]
        h = _sep(w, f"{block}.conv2", h, noise=True)
        rgb = _up(rgb) + F.conv2d(h, w[f"{block}.torgb.weight"], w[f"{block}.torgb.bias"])
    return rgb


def test_migan_generator_matches_the_reference_equations():
    generator = learned_tiny.migan_generator(2)
    size = generator.config.resolution
    x = torch.rand(1, 4, size, size, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        ours = generator(x)
    reference = reference_migan(_sd64(generator), size, x.double())
    assert float((ours.double() - reference).abs().max()) <= 1e-4
    assert float(reference.std()) > 1e-2


def reference_migan_iopaint(generator, rgb: np.ndarray, mask_u8: np.ndarray) -> np.ndarray:
    """IOPaint's MI-GAN forward on a picture that fits the model: pad_img_to_modulo(mod=R, square, min_size=R)
    (np.pad symmetric) of image and mask, [0, 1] -> [-1, 1], mask > 120, input cat([0.5 - mask, image * (1 -
    mask)]), output * 127.5 + 127.5 rounded and clamped, cut back to the picture."""
    size = generator.config.resolution
    h, w = mask_u8.shape
    image = np.pad(rgb, ((0, size - h), (0, size - w), (0, 0)), mode="symmetric").transpose(2, 0, 1) / 255.0 * 2 - 1
    mask = (np.pad(mask_u8, ((0, size - h), (0, size - w)), mode="symmetric") > 120).astype(np.float64)[None]
    x = torch.from_numpy(np.concatenate([0.5 - mask, image * (1 - mask)])[None])
    out = reference_migan(_sd64(generator), size, x)[0].permute(1, 2, 0)
    return (out * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).numpy()[:h, :w]


def test_migan_pre_and_post_processing_match_iopaint(photo):
    generator = learned_tiny.migan_generator(2)
    rgb = photo[:50, :61].copy()  # fits the 64 px model; padded to the square
    mask = np.zeros(rgb.shape[:2], np.uint8)
    mask[10:30, 20:45] = 255
    network = MiganNetwork(generator.config.resolution, torch.device("cpu"), "state-dict", predict=generator)
    ours = migan_forward(network, rgb, mask > 0)
    _assert_uint8_parity(ours, reference_migan_iopaint(generator, rgb, mask))
