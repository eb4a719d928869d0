"""PatchMatch's numba kernels: they let other threads run, `warm()` reaches them all, and compiling
says so (or says that nothing can be cached)."""

from __future__ import annotations

import logging
import threading
import time

import numba
import numpy as np
import pytest

from canvaslab.engines.classical import patchmatch_kernels, warm


def _distance_inputs(side: int, r: int = 3):
    """Inputs for `distance_rows` with every pixel a target whose source lies inside the image (no wrap-around)."""
    rng = np.random.default_rng(0)
    img = rng.random((side, side, 5), dtype=np.float32)
    ones = np.ones((side, side), np.float32)
    targets = np.ones((side, side), bool)
    yy, xx = np.mgrid[0:side, 0:side]
    nnf = np.ascontiguousarray(np.stack([np.clip(yy[::-1], r, side - r - 1), np.clip(xx[::-1], r, side - r - 1)],
                                        axis=2).astype(np.int32))
    dist = np.full((side, side), np.inf, np.float32)
    far = np.zeros((side, side, 2), np.float32)  # per target: locality cost, factor on the source's cost
    return img, ones, far, np.zeros_like(ones), targets, nnf, r, dist, False, False


def test_another_python_thread_runs_while_a_kernel_runs():
    args = _distance_inputs(1024)
    patchmatch_kernels.distance_rows(*args, 0, 1)  # compile or load before anything is timed
    span: list[float] = []

    def work() -> None:
        started = time.perf_counter()
        patchmatch_kernels.distance_rows(*args, 0, 1024)  # one call over a million targets
        span.extend([started, time.perf_counter()])

    worker = threading.Thread(target=work)
    ticks = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    started, ended = span
    inside = [t for t in ticks if started <= t <= ended]
    pauses = np.diff([started, *inside, ended])
    # Holding the GIL, the kernel would stop this thread for the whole call; without it, this
    # thread keeps ticking (its pauses are the OS scheduler's and the switch interval's).
    assert ended - started > 0.05, "the kernel call was too short to tell"
    assert pauses.max() < 0.5 * (ended - started), (pauses.max(), ended - started)
    assert np.isfinite(args[6]).all()


def test_every_kernel_releases_the_gil():
    assert set(warm.KERNELS) == {
        "downsample_known", "distance_rows", "random_nnf", "upsample_nnf", "sweep_bands", "vote_rows",
        "gradient_vote_rows", "poisson_system", "cg_steps",
    }
    for name, dispatcher in warm.KERNELS.items():
        assert dispatcher.targetoptions.get("nogil") is True, name


def test_warm_reaches_every_kernel_and_says_what_it_did():
    report = warm.warm()
    assert sorted(report["compiled"] + report["loaded"] + report["ready"]) == sorted(warm.KERNELS)
    for dispatcher in warm.KERNELS.values():
        assert dispatcher.signatures  # compiled or loaded for the argument types fills use
    assert report["cache_dir"] == warm.cache_dir()
    assert report["seconds"] >= 0
    assert "PatchMatch kernels" in report["summary"] and str(report["cache_dir"]) in report["summary"]
    again = warm.warm()
    assert again["ready"] == sorted(warm.KERNELS) and not again["compiled"]


@pytest.fixture
def own_kernels(monkeypatch):
    """Kernels defined by a test stay out of the engine's list, and the once-per-process notice is
    armed again."""
    monkeypatch.setattr(warm, "KERNELS", {})
    warm._CompileNotice.install()
    monkeypatch.setattr(warm._CompileNotice._installed, "told", False)


def _add_one(x):
    return x + 1


def test_compiling_a_kernel_tells_the_user_once_with_the_cache_folder(own_kernels, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))  # an empty cache: it must compile
    add_one = warm.kernel(_add_one)
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        assert add_one(1) == 2
        assert add_one(1.5) == 2.5  # a second compile in the same process says nothing more
    messages = [r.getMessage() for r in caplog.records if "compiling PatchMatch" in r.getMessage()]
    assert len(messages) == 1
    assert str(tmp_path) in messages[0] and "doctor --warm" in messages[0]


def test_loading_from_the_cache_says_nothing(own_kernels, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    warm.kernel(_add_one)(1)  # fills the cache
    monkeypatch.setattr(warm._CompileNotice._installed, "told", False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        assert warm.kernel(_add_one)(1) == 2  # a new dispatcher, as in a new process
    assert not [r for r in caplog.records if "compiling" in r.getMessage()]


def test_without_a_writable_cache_folder_kernels_still_run_and_the_notice_says_why(own_kernels, monkeypatch, caplog):
    # Only NUMBA_CACHE_DIR may be used, and it is unset: numba finds no place for a cache, as with
    # a read-only site-packages and a read-only home.
    monkeypatch.setattr(numba.config, "CACHE_LOCATOR_CLASSES", "UserProvidedCacheLocator")
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    add_one = warm.kernel(_add_one)
    assert add_one.stats.cache_path is None
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        assert add_one(1) == 2
    (message,) = [r.getMessage() for r in caplog.records if "compiling PatchMatch" in r.getMessage()]
    assert "NUMBA_CACHE_DIR" in message

