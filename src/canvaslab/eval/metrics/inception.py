"""The FID Inception-v3 and the metrics built on its features: FID, KID, IS, P-IDS / U-IDS.

The network is the Inception-v3 that pytorch-fid ported from TensorFlow's 2015-12-05 graph (the one
every published FID uses), written here so that no torchvision is needed: the same module names and
parameter shapes, so its weight file `pt_inception-2015-12-05-6726825d.pth` loads strictly, and the
same four differences from torchvision's Inception-v3 that make it the TF graph: the average pools in
Mixed_5b-5d, 6b-6e and 7b leave padding out of the average, Mixed_7c pools by max, there is no
auxiliary head, and the classifier has 1008 classes. Inputs are resized bilinearly to 299x299 from
0..1 RGB and scaled to -1..1, as pytorch-fid does.

`width_divisor` shrinks every layer's channels (tests build tiny networks that way and save them);
`load_fid_inception` reads it back from the file's first convolution, so a tiny file and the real one
take the same path.

Set metrics (from the features of every case, outputs against references):
- FID, KID (polynomial-kernel MMD, unbiased, mean and std over subsets) and IS (over splits): the
  implementations of torchmetrics, given our network's features;
- P-IDS / U-IDS as Co-Mod-GAN and MAT define them: a linear SVM (scikit-learn's LinearSVC, dual=False)
  separates real from completed features; U-IDS is its error rate on them, P-IDS the fraction of pairs
  whose completed image scores more "real" than its own original.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from canvaslab.errors import ModelNotAvailableError
from canvaslab.eval.metrics.base import Metric, Sample, load_state_dict
from canvaslab.eval.metrics.weights import Weights

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
POOL_FEATURES = 2048


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the average
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int, d: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64 // d, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48 // d, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48 // d, 64 // d, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64 // d, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64 // d, 96 // d, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96 // d, 96 // d, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):  # grid reduction 35 -> 17
    def __init__(self, cin: int, d: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384 // d, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64 // d, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64 // d, 96 // d, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96 // d, 96 // d, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):  # factorised 7x7
    def __init__(self, cin: int, c7: int, d: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192 // d, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192 // d, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192 // d, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192 // d, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):  # grid reduction 17 -> 8
    def __init__(self, cin: int, d: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192 // d, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192 // d, 320 // d, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192 // d, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192 // d, 192 // d, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192 // d, 192 // d, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192 // d, 192 // d, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):  # expanded filter bank; `max_pool`: Mixed_7c of the TF graph
    def __init__(self, cin: int, d: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320 // d, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384 // d, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384 // d, 384 // d, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384 // d, 384 // d, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448 // d, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448 // d, 384 // d, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384 // d, 384 // d, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384 // d, 384 // d, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192 // d, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Images (N, 3, H, W) in 0..1 -> (pool features (N, 2048 / d), logits (N, classes))."""

    def __init__(self, width_divisor: int = 1, num_classes: int = 1008) -> None:
        super().__init__()
        d = width_divisor
        self.width_divisor = d
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32 // d, kernel_size=3, stride=2)  # 299 -> 149
        self.Conv2d_2a_3x3 = BasicConv2d(32 // d, 32 // d, kernel_size=3)  # 147
        self.Conv2d_2b_3x3 = BasicConv2d(32 // d, 64 // d, kernel_size=3, padding=1)  # 147, then max pool -> 73
        self.Conv2d_3b_1x1 = BasicConv2d(64 // d, 80 // d, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80 // d, 192 // d, kernel_size=3)  # 71, then max pool -> 35
        self.Mixed_5b = InceptionA(192 // d, 32 // d, d)  # -> 256 / d channels
        self.Mixed_5c = InceptionA(256 // d, 64 // d, d)  # -> 288 / d
        self.Mixed_5d = InceptionA(288 // d, 64 // d, d)
        self.Mixed_6a = InceptionB(288 // d, d)  # -> 768 / d at 17x17
        self.Mixed_6b = InceptionC(768 // d, 128 // d, d)
        self.Mixed_6c = InceptionC(768 // d, 160 // d, d)
        self.Mixed_6d = InceptionC(768 // d, 160 // d, d)
        self.Mixed_6e = InceptionC(768 // d, 192 // d, d)
        self.Mixed_7a = InceptionD(768 // d, d)  # -> 1280 / d at 8x8
        self.Mixed_7b = InceptionE(1280 // d, d, max_pool=False)  # -> 2048 / d
        self.Mixed_7c = InceptionE(2048 // d, d, max_pool=True)
        self.fc = nn.Linear(POOL_FEATURES // d, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return pool, self.fc(pool)


def load_fid_inception(path: str | Path) -> FIDInceptionV3:
    """The network from a state dict in pytorch-fid's layout (its real file, or a smaller one of ours)."""
    state = load_state_dict(path, "the FID Inception-v3 weights")
    first = state.get("Conv2d_1a_3x3.conv.weight")
    if first is None or "fc.weight" not in state or first.shape[0] == 0 or 32 % first.shape[0]:
        raise ModelNotAvailableError(f"{path} is not an FID Inception-v3 state dict (pytorch-fid's {WEIGHTS_FILE} layout)")
    model = FIDInceptionV3(32 // first.shape[0], num_classes=state["fc.weight"].shape[0])
    missing, unexpected = model.load_state_dict(state, strict=False)
    # files saved before torch 0.4.1 have no BatchNorm step counters; evaluation never reads them
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        wrong = (missing or unexpected)[0]
        raise ModelNotAvailableError(f"{path} does not fit the FID Inception-v3 layout ({'missing' if missing else 'unexpected'} {wrong})")
    return model.eval().requires_grad_(False)


# --- the set metrics ---------------------------------------------------------------------------------


class _Features(nn.Module):
    """torchmetrics' custom feature extractor slot, given features already computed per case."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@contextlib.contextmanager
def _seeded(seed: int):
    """KID's subsets and IS's splits come from torch's global generator: fix it, and leave it as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (N, D): ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Features(real.shape[1]))
    metric.update(torch.from_numpy(np.asarray(real, np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake, np.float64)), real=False)
    return float(metric.compute())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: mean and std over `subsets` random subsets of the unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features": they are few here
        metric = KernelInceptionDistance(feature=_Features(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(torch.from_numpy(np.asarray(real, np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake, np.float64)), real=False)
    with _seeded(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: np.ndarray, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` parts of the set."""
    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the buffer notice, and torch's std of a single split
        metric = InceptionScore(feature=_Features(logits.shape[1]), splits=min(splits, len(logits)))
        metric.update(torch.from_numpy(np.asarray(logits, np.float64)))
        with _seeded(seed):
            mean, std = metric.compute()
    return float(mean), float(std) if torch.isfinite(std) else 0.0  # one split has no spread


def inception_discriminative_scores(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """(P-IDS, U-IDS) of paired feature sets, as Co-Mod-GAN / MAT compute them."""
    from sklearn.svm import LinearSVC

    svm = LinearSVC(dual=False)
    inputs = np.concatenate([real, fake])
    targets = np.array([1] * len(real) + [0] * len(fake))
    svm.fit(inputs, targets)
    u_ids = 1.0 - svm.score(inputs, targets)
    p_ids = float(np.mean(svm.decision_function(fake) > svm.decision_function(real)))
    return p_ids, float(u_ids)


class InceptionMetrics(Metric):
    """fid, kid, is, ids: one pass of the network per image, the features kept per case."""

    names: ClassVar[tuple[str, ...]] = ("fid", "kid", "is", "ids")
    columns: ClassVar[dict[str, bool | None]] = {
        "fid": False, "kid": False, "kid_std": None, "is": True, "is_std": None, "p_ids": True, "u_ids": True,
    }

    def __init__(self, wanted: list[str], weights: Weights) -> None:
        super().__init__(wanted, weights)
        import torchmetrics  # noqa: F401 - FID/KID/IS; imported now so a missing package fails before any work

        if "ids" in wanted:
            import sklearn  # noqa: F401 - the P-IDS/U-IDS linear SVM
        path = weights.find(WEIGHTS_FILE, what="FID/KID/IS/IDS need the FID Inception-v3 weights",
                            source="pytorch-fid's release page (github.com/mseitzer/pytorch-fid/releases, fid_weights)")
        self.network = load_fid_inception(path).to(weights.device)

    def score(self, samples: list[Sample]) -> list[dict[str, Any]]:
        outputs = self._run([s.output for s in samples])
        need_real = {"fid", "kid", "ids"} & set(self.wanted)
        references = self._run([s.reference for s in samples]) if need_real and all(s.reference is not None for s in samples) else None
        rows = []
        for i in range(len(samples)):
            row: dict[str, Any] = {"inception_output": outputs[0][i]}
            if "is" in self.wanted:
                row["inception_logits"] = outputs[1][i]
            if references is not None:
                row["inception_reference"] = references[0][i]
            rows.append(row)
        return rows

    def _run(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        pools, logits = [], []
        with torch.inference_mode():
            for image in images:  # sizes may differ between cases
                x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255)
                pool, logit = self.network(x.to(self.weights.device))
                pools.append(pool[0].float().cpu().numpy())
                logits.append(logit[0].float().cpu().numpy())
        return np.stack(pools), np.stack(logits)

    def finish(self, features: dict[str, np.ndarray]) -> dict[str, float]:
        out: dict[str, float] = {}
        fake = features.get("inception_output")
        real = features.get("inception_reference")
        if fake is None or len(fake) < 2:
            return out
        if real is not None and len(real) >= 2:
            if "fid" in self.wanted:
                out["fid"] = frechet_distance(real, fake)
            if "kid" in self.wanted:
                out["kid"], out["kid_std"] = kernel_inception_distance(real, fake, seed=self.weights.seed)
            if "ids" in self.wanted:
                out["p_ids"], out["u_ids"] = inception_discriminative_scores(real, fake)
        if "is" in self.wanted and "inception_logits" in features:
            out["is"], out["is_std"] = inception_score(features["inception_logits"], seed=self.weights.seed)
        return out
