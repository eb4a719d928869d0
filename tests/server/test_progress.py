"""core.progress and the engines' step hooks: steps reach the listener of their own thread, cancel stops work."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import canvaslab
from canvaslab.core.progress import Cancelled, check_cancelled, progress_listener, report_progress


def test_no_listener_means_no_effect():
    report_progress(1, 2)
    check_cancelled()


def test_listener_is_scoped_to_its_block_and_thread():
    seen: list[tuple[int, int]] = []
    other: list[tuple[int, int]] = []
    with progress_listener(lambda s, t: seen.append((s, t))):
        report_progress(1, 3)
        thread = threading.Thread(target=lambda: report_progress(9, 9))  # another thread: not this listener
        thread.start()
        thread.join()
        with progress_listener(lambda s, t: other.append((s, t))):
            report_progress(2, 3)
        report_progress(3, 3)
    report_progress(4, 4)
    assert seen == [(1, 3), (3, 3)] and other == [(2, 3)]


def test_cancel_flag_raises_at_the_next_step():
    flag = threading.Event()
    steps: list[int] = []
    with progress_listener(lambda s, t: steps.append(s), flag):
        report_progress(1, 5)
        flag.set()
        with pytest.raises(Cancelled):
            report_progress(2, 5)
        with pytest.raises(Cancelled):
            check_cancelled()
    assert steps == [1]


@pytest.mark.parametrize("engine", ["patchmatch", "telea", "ns"])
def test_classical_engines_report_steps_and_stop_when_cancelled(photo, box_mask, engine):
    steps: list[tuple[int, int]] = []
    with progress_listener(lambda s, t: steps.append((s, t))):
        canvaslab.inpaint(photo, box_mask, engine=engine, seed=1)
    # OpenCV's engines are one call (one step); PatchMatch may report its iterations.
    assert steps[-1][0] == steps[-1][1] and [s for s, _ in steps] == list(range(1, len(steps) + 1))
    if engine != "patchmatch":
        assert steps == [(1, 1)]
    flag = threading.Event()
    flag.set()
    with progress_listener(None, flag), pytest.raises(Cancelled):
        canvaslab.inpaint(photo, box_mask, engine=engine, seed=1)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):  # type: ignore[no-untyped-def]
    pytest.importorskip("diffusers")
    import torch

    from diffusion import tiny

    torch.set_num_threads(1)
    return tiny.save_pipeline_folder("sd-txt2img", tmp_path_factory.mktemp("tiny") / "tiny-sd")


def test_diffusion_steps_are_reported_and_leave_results_unchanged(tiny_folder, photo, box_mask):
    image = np.ascontiguousarray(photo[:64, :64])
    mask = box_mask[:64, :64]
    params = {"engine": "diffusion", "model": str(tiny_folder), "steps": 4, "seed": 5}
    plain = canvaslab.inpaint(image, mask, **params)
    steps: list[tuple[int, int]] = []
    with progress_listener(lambda s, t: steps.append((s, t))):
        watched = canvaslab.inpaint(image, mask, **params)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert np.array_equal(plain.image, watched.image)  # listening changes nothing
    # Below strength 1 the pipeline runs fewer timesteps; the total says so.
    steps.clear()
    with progress_listener(lambda s, t: steps.append((s, t))):
        canvaslab.inpaint(image, mask, **params, strength=0.5)
    assert steps[-1] == (2, 2)
    steps.clear()
    with progress_listener(lambda s, t: steps.append((s, t))):
        canvaslab.generate(prompt="a cup", model=str(tiny_folder), steps=3, size=64, seed=1)
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_diffusion_cancel_stops_inside_the_sampling_loop(tiny_folder):
    flag = threading.Event()
    steps: list[int] = []

    def on_step(step: int, total: int) -> None:
        steps.append(step)
        if step == 2:
            flag.set()

    with progress_listener(on_step, flag), pytest.raises(Cancelled):
        canvaslab.generate(prompt="a cup", model=str(tiny_folder), steps=10, size=64, seed=1)
    assert steps == [1, 2]


def test_unified_maskgit_steps_are_reported(tmp_path_factory, photo, box_mask):
    pytest.importorskip("transformers")
    from unified import tiny as unified_tiny

    folder = unified_tiny.shared_bundle_folder(tmp_path_factory)
    image = np.ascontiguousarray(photo[:64, :64])
    steps: list[tuple[int, int]] = []
    with progress_listener(lambda s, t: steps.append((s, t))):
        canvaslab.inpaint(image, box_mask[:64, :64], engine="unified", model=str(folder), steps=3, seed=1)
    assert steps and steps[:3] == [(1, 3), (2, 3), (3, 3)]
    flag = threading.Event()
    flag.set()
    with progress_listener(None, flag), pytest.raises(Cancelled):
        canvaslab.inpaint(image, box_mask[:64, :64], engine="unified", model=str(folder), steps=3, seed=1)
