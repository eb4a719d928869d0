"""Learned metrics against independent computations of their formulas, on tiny networks saved in the
real files' layouts and loaded through the same functions as the real weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg

from canvaslab.errors import ModelNotAvailableError
from canvaslab.eval.metrics import Sample, Weights, load_metrics

from .conftest import ALEX_CHANNELS, INCEPTION_DIVISOR, rgb

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")
pytest.importorskip("sklearn")

from canvaslab.eval.metrics import inception, lpips  # noqa: E402


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance as pytorch-fid writes it: scipy's matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # a few features of many dimensions: singular
        root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


# --- FID, KID, IS, IDS on given features -------------------------------------------------------------


def test_frechet_distance_matches_scipy_and_is_zero_for_a_set_with_itself():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 12))
    b = rng.normal(0.3, 1.4, size=(250, 12)) @ rng.normal(size=(12, 12)) * 0.4
    assert inception.frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-6)
    assert inception.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def unbiased_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Bińkowski et al.'s unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, written out with loops."""
    d = x.shape[1]
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_on_known_features():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(20, 5)), rng.normal(0.5, 1.0, size=(20, 5))
    # subsets as big as the sets: every subset is the whole set, so the mean is the estimator itself
    mean, std = inception.kernel_inception_distance(real, fake, subsets=3, subset_size=20)
    assert mean == pytest.approx(unbiased_mmd(real, fake), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)
    # same distribution: the unbiased estimate scatters around 0 (it can be negative)
    same, _ = inception.kernel_inception_distance(real, rng.normal(size=(20, 5)), subsets=3, subset_size=20)
    assert abs(same) < mean


def test_kid_subsets_are_seeded_and_leave_torch_random_state_alone():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = inception.kernel_inception_distance(real, fake, subsets=5, subset_size=10, seed=7)
    assert torch.rand(1) == before
    assert inception.kernel_inception_distance(real, fake, subsets=5, subset_size=10, seed=7) == first


def test_inception_score_matches_its_definition():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(30, 7)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    marginal = p.mean(0)
    expected = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1)))
    mean, _ = inception.inception_score(logits, splits=1)
    assert mean == pytest.approx(expected, rel=1e-9)
    uniform, _ = inception.inception_score(np.zeros((10, 7)), splits=1)
    assert uniform == pytest.approx(1.0)


def test_inception_discriminative_scores():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(200, 6))
    p_ids, u_ids = inception.inception_discriminative_scores(real, real + 50.0)  # trivially separable
    assert (p_ids, u_ids) == (0.0, 0.0)
    p_ids, u_ids = inception.inception_discriminative_scores(real, real.copy())  # indistinguishable
    assert p_ids == 0.0  # a completion never scores strictly more real than an identical original
    p_ids, u_ids = inception.inception_discriminative_scores(real, rng.normal(size=(200, 6)))
    assert 0.25 < p_ids < 0.75 and 0.3 < u_ids <= 0.5


# --- the FID Inception network -----------------------------------------------------------------------


def test_inception_has_the_reference_layout():
    """Parameter count = torchvision's documented Inception-v3 (27,161,264) without the auxiliary head
    (3,326,696) and with 1008 classes (+8 x 2049): what pytorch-fid's weight file fills."""
    model = inception.FIDInceptionV3()
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    keys = model.state_dict()
    assert keys["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert keys["Mixed_6e.branch7x7dbl_1.conv.weight"].shape == (192, 768, 1, 1)
    assert keys["fc.weight"].shape == (1008, 2048)
    assert not any("AuxLogits" in k for k in keys)


def test_tiny_inception_loads_through_the_real_path(weights_dir):
    model = inception.load_fid_inception(weights_dir / inception.WEIGHTS_FILE)
    assert model.width_divisor == INCEPTION_DIVISOR
    with torch.no_grad():
        pool, logits = model(torch.rand(2, 3, 40, 56))
    assert pool.shape == (2, 2048 // INCEPTION_DIVISOR) and logits.shape == (2, 1008)
    # the FID patches: padding left out of Mixed_5b's average pool, max pool in Mixed_7c
    x = torch.ones(1, 1, 3, 3)
    assert torch.equal(inception._avg_pool(x), x)


def test_fid_metric_of_a_set_with_itself_is_zero(weights_dir):
    (metric,) = load_metrics(["fid", "kid"], Weights(weights_dir))
    samples = [Sample(str(i), rgb(i), rgb(i)) for i in range(6)]
    rows = metric.score(samples)
    features = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    np.testing.assert_allclose(features["inception_output"], features["inception_reference"])
    result = metric.finish(features)
    assert result["fid"] == pytest.approx(0.0, abs=1e-6)
    other = metric.finish({**features, "inception_output": features["inception_output"][::-1] * 1.5})
    assert other["fid"] == pytest.approx(scipy_frechet(features["inception_reference"], features["inception_output"][::-1] * 1.5), rel=1e-5)


def test_missing_weights_are_one_sentence(tmp_path):
    with pytest.raises(ModelNotAvailableError) as error:
        load_metrics(["fid"], Weights(tmp_path))
    message = str(error.value)
    assert "\n" not in message and inception.WEIGHTS_FILE in message and "--weights" in message
    (tmp_path / inception.WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotAvailableError, match="cannot read the FID Inception-v3 weights"):
        load_metrics(["fid"], Weights(tmp_path))


# --- LPIPS --------------------------------------------------------------------------------------------


def test_lpips_backbones_have_torchvisions_layout():
    """Feature parameters = torchvision's documented totals minus their classifiers."""
    alex = lpips.LPIPS("alex", [64, 192, 384, 256, 256])
    vgg = lpips.LPIPS("vgg", [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512])
    assert sum(p.numel() for p in alex.net.parameters()) == 61_100_840 - (9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)
    assert sum(p.numel() for p in vgg.net.parameters()) == 138_357_544 - (25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)
    assert sorted(k for k in alex.net.state_dict() if k.endswith("weight")) == [f"features.{i}.weight" for i in (0, 10, 3, 6, 8)]
    assert [tuple(lin.weight.shape) for lin in vgg.lins] == [(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]


def hand_lpips_alex(state: dict, heads: dict, x: np.ndarray, y: np.ndarray) -> float:
    """LPIPS written out from the raw files: AlexNet's convs by index, ReLUs, 3/2 max pools, unit
    normalisation over channels, squared difference, the heads' weights, spatial mean, sum."""
    import torch.nn.functional as F

    def features(image: np.ndarray) -> list[np.ndarray]:
        t = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 127.5 - 1
        t = (t - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        outs = []
        for index, stride, pad, pool_after in ((0, 4, 2, True), (3, 1, 2, True), (6, 1, 1, False), (8, 1, 1, False), (10, 1, 1, False)):
            t = F.relu(F.conv2d(t, state[f"features.{index}.weight"].double(), state[f"features.{index}.bias"].double(), stride, pad))
            outs.append(t[0].numpy())
            if pool_after:
                t = F.max_pool2d(t, 3, 2)
        return outs

    total = 0.0
    for k, (fx, fy) in enumerate(zip(features(x), features(y))):
        nx = fx / (np.sqrt((fx**2).sum(0, keepdims=True)) + 1e-10)
        ny = fy / (np.sqrt((fy**2).sum(0, keepdims=True)) + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].double().numpy().reshape(-1, 1, 1)
        total += float((w * (nx - ny) ** 2).sum(0).mean())
    return total


def test_lpips_equals_a_hand_computation(weights_dir):
    (metric,) = load_metrics(["lpips"], Weights(weights_dir))
    state = torch.load(weights_dir / "alexnet-owt-7be5be79.pth", weights_only=True)
    heads = torch.load(weights_dir / "alex.pth", weights_only=True)
    x, y = rgb(10, (70, 90)), rgb(11, (70, 90))
    (row,) = metric.score([Sample("a", x, y)])
    assert row["lpips"] == pytest.approx(hand_lpips_alex(state, heads, x, y), rel=1e-5)
    (same,) = metric.score([Sample("b", x, x)])
    assert same["lpips"] == 0.0


def test_lpips_vgg_loads_and_orders_images(weights_dir, photo):
    (metric,) = load_metrics(["lpips", "lpips-vgg"], Weights(weights_dir))
    noisy = np.clip(photo.astype(int) + np.random.default_rng(0).integers(-8, 9, photo.shape), 0, 255).astype(np.uint8)
    rows = metric.score([Sample("same", photo, photo), Sample("noisy", noisy, photo)])
    assert rows[0] == {"lpips": 0.0, "lpips_vgg": 0.0}
    assert rows[1]["lpips"] > 0 and rows[1]["lpips_vgg"] > 0


def test_lpips_files_that_do_not_fit_are_one_line(weights_dir, tmp_path):
    import shutil

    shutil.copy(weights_dir / "alexnet-owt-7be5be79.pth", tmp_path)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c + 1, 1, 1) for k, c in enumerate(ALEX_CHANNELS)}
    torch.save(heads, tmp_path / "alex.pth")
    with pytest.raises(ModelNotAvailableError, match="do not fit together as LPIPS alex") as error:
        load_metrics(["lpips"], Weights(tmp_path))
    assert "\n" not in str(error.value)


# --- CLIP ---------------------------------------------------------------------------------------------


class _TensorFeatures:
    """torchmetrics' clip_score expects get_*_features to return tensors; transformers 5 returns model
    outputs whose pooler_output holds the projected embedding (checked below against the forward)."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def to(self, device):
        return self

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output


def test_clip_score_matches_torchmetrics(clip_dir):
    from torchmetrics.functional.multimodal import clip_score
    from transformers import CLIPProcessor

    (metric,) = load_metrics(["clip"], Weights(clip=str(clip_dir)))
    images = [rgb(20, (40, 52)), rgb(21, (36, 36))]
    texts = ["the cat", "a canal"]
    rows = metric.score([Sample(str(i), image, text=text) for i, (image, text) in enumerate(zip(images, texts))])
    processor = CLIPProcessor(image_processor=metric.processor, tokenizer=metric.tokenizer)
    inputs = processor(images=images[:1], text=texts[:1], return_tensors="pt", padding=True)
    with torch.no_grad():
        forward = metric.model(**inputs)
    embeds = forward.image_embeds / forward.image_embeds.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(metric.image_embeddings(images[:1]), embeds)
    for row, image, text in zip(rows, images, texts):
        model = _TensorFeatures(metric.model)
        reference = clip_score(torch.from_numpy(image).permute(2, 0, 1), text, model_name_or_path=lambda: (model, processor))
        assert row["clip_score"] == pytest.approx(float(reference), rel=1e-4, abs=1e-4)
        assert row["clip_score"] == pytest.approx(max(100 * row["clip_t"], 0.0))


def test_clip_image_and_directional_similarity(clip_dir):
    (metric,) = load_metrics(["clip"], Weights(clip=str(clip_dir)))
    before, after = rgb(30), rgb(31)
    sample = Sample("e", after, reference=after, input=before, text="make it blue",
                    input_caption="a photo of the cat", output_caption="a photo of the canal")
    (row,) = metric.score([sample])
    assert row["clip_i"] == pytest.approx(1.0, abs=1e-5)  # output = reference
    e_out, e_in = metric.image_embeddings([after, before])
    t_in, t_out = metric.text_embeddings(["a photo of the cat", "a photo of the canal"])
    d_image, d_text = (e_out - e_in).numpy(), (t_out - t_in).numpy()
    expected = d_image @ d_text / (np.linalg.norm(d_image) * np.linalg.norm(d_text))
    assert row["clip_dir"] == pytest.approx(float(expected), abs=1e-5)
    assert row["clip_img"] == pytest.approx(float(e_out @ e_in), abs=1e-5)
    assert row["clip_t"] == pytest.approx(float(e_out @ t_out), abs=1e-5)  # the output caption wins over the instruction


def test_clip_not_on_this_machine_is_one_line(tmp_path):
    with pytest.raises(ModelNotAvailableError) as error:
        load_metrics(["clip"], Weights(clip=str(tmp_path / "nowhere")))
    assert "\n" not in str(error.value) and "--clip" in str(error.value)
