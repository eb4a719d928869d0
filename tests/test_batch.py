"""Folder jobs: pairing, failures listed, resumable after a kill, no finished work redone."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from canvaslab.tasks.batch import pair_folder, shard
from canvaslab.errors import InputError
from conftest import write_png


def make_folder(root, photo, box_mask, names):
    for name in names:
        write_png(root / "imgs" / f"{name}.png", photo)
        write_png(root / "masks" / f"{name}.png", box_mask)


def test_pairing_by_relative_path_and_stem(tmp_path, photo, box_mask):
    write_png(tmp_path / "imgs" / "a.png", photo)
    write_png(tmp_path / "imgs" / "sub" / "b.jpg", photo)
    write_png(tmp_path / "imgs" / "c.webp", photo)
    write_png(tmp_path / "imgs" / "d.png", photo)
    write_png(tmp_path / "masks" / "a.png", box_mask)
    write_png(tmp_path / "masks" / "sub" / "b_mask.png", box_mask)
    write_png(tmp_path / "masks" / "c.png", box_mask)  # flat: matched by stem
    write_png(tmp_path / "masks" / "orphan.png", box_mask)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    pairing = pair_folder(tmp_path / "imgs", tmp_path / "masks", tmp_path / "out")
    assert {item.key for item in pairing.items} == {"a", "sub/b", "c"}
    assert [p.name for p in pairing.images_without_mask] == ["d.png"]
    assert [p.name for p in pairing.masks_without_image] == ["orphan.png"]
    assert next(i for i in pairing.items if i.key == "sub/b").output == tmp_path / "out" / "sub" / "b.png"


def test_two_images_with_one_output_name_are_reported(tmp_path, photo, box_mask):
    write_png(tmp_path / "imgs" / "a.png", photo)
    write_png(tmp_path / "imgs" / "a.jpg", photo)
    pairing = pair_folder(tmp_path / "imgs", None, tmp_path / "out", need_masks=False)
    assert pairing.items == [] and pairing.clashes[0][0] == "a"


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(InputError, match="no images"):
        pair_folder(tmp_path / "imgs", None, tmp_path / "out")


def test_shards_cover_everything_once(tmp_path, photo):
    for i in range(7):
        write_png(tmp_path / "imgs" / f"{i}.png", photo[:8, :8])
    items = pair_folder(tmp_path / "imgs", None, tmp_path / "out", need_masks=False).items
    seen = [item.key for k in range(3) for item in shard(items, k, 3)]
    assert sorted(seen) == sorted(item.key for item in items)


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "canvaslab", *map(str, args)], capture_output=True, text=True, **kwargs)


def test_failures_are_listed_and_the_rest_finishes(tmp_path, photo, box_mask):
    make_folder(tmp_path, photo, box_mask, ["a", "b"])
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    write_png(tmp_path / "masks" / "broken.png", box_mask)
    run = run_cli("--json", "inpaint", "--images", tmp_path / "imgs", "--masks", tmp_path / "masks",
                  "--out", tmp_path / "out", "--engine", "telea", "--seed", 0)
    assert run.returncode == 1
    summary = json.loads(run.stdout)
    assert summary["done"] == 2 and len(summary["failed"]) == 1
    assert "broken.png" in summary["failed"][0]["image"] and "cannot read image" in summary["failed"][0]["error"]
    assert (tmp_path / "out" / "a.png").exists() and not (tmp_path / "out" / "broken.png").exists()


def test_one_mask_for_a_whole_folder_with_two_workers(tmp_path, photo, box_mask):
    for name in ["x", "y", "z"]:
        write_png(tmp_path / "imgs" / f"{name}.png", photo)
    mask = write_png(tmp_path / "watermark.png", box_mask)
    run = run_cli("--json", "inpaint", "--images", tmp_path / "imgs", "--masks", mask, "--out", tmp_path / "out",
                  "--engine", "telea", "--workers", 2, "--seed", 0)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["done"] == 3
    for name in ["x", "y", "z"]:
        out = np.asarray(Image.open(tmp_path / "out" / f"{name}.png").convert("RGB"))
        np.testing.assert_array_equal(out[~box_mask], photo[~box_mask])


def snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in folder.rglob("*.png")}


def test_killed_run_resumes_without_redoing_or_corrupting(tmp_path, photo, box_mask):
    names = [f"img{i:02d}" for i in range(14)]
    big = np.asarray(Image.fromarray(photo).resize((300, 200)))
    mask = np.asarray(Image.fromarray(box_mask).resize((300, 200)))
    make_folder(tmp_path, big, mask, names)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "canvaslab", "--quiet", "inpaint", "--images", tmp_path / "imgs",
            "--masks", tmp_path / "masks", "--out", out, "--seed", 3, "--rows", 2, "--grid", tmp_path / "grids"]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len([p for p in out.glob("img*.png") if "-seed" not in p.name]) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: v for p, v in snapshot(out).items() if "-seed" not in p.name}
    assert 3 <= len(finished) < len(names), "the kill should land half-way"
    for path in finished:  # every main output that exists is complete and readable
        Image.open(path).verify()
    rerun = subprocess.run([str(a) for a in args[:3] + ["--json"] + args[3:]], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["skipped_existing"] == len(finished)
    assert summary["done"] == len(names) - len(finished)
    after = snapshot(out)
    for path, before in finished.items():
        assert after[path] == before, f"{path.name} was rewritten"
    for name in names:
        assert (out / f"{name}.png").exists() and (tmp_path / "grids" / f"{name}.png").exists()
    leftovers = [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".png")]
    assert all(p.name.startswith(".") for p in leftovers), leftovers


def test_two_launcher_processes_split_the_folder_without_overlap(tmp_path, photo, box_mask):
    """As under `accelerate launch --num_processes 2`: RANK/WORLD_SIZE shard the items, each written once."""
    import os

    names = [f"n{i}" for i in range(5)]
    make_folder(tmp_path, photo[:40, :40], box_mask[:40, :40], names)
    args = [sys.executable, "-m", "canvaslab", "--json", "inpaint", "--images", tmp_path / "imgs", "--masks",
            tmp_path / "masks", "--out", tmp_path / "out", "--engine", "telea", "--seed", 0]
    procs = [subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}) for rank in (0, 1)]
    done = [json.loads(p.communicate(timeout=120)[0])["done"] for p in procs]
    assert sorted(done) == [2, 3] and all(p.returncode == 0 for p in procs)
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == names
    again = run_cli("--json", "inpaint", "--images", tmp_path / "imgs", "--masks", tmp_path / "masks", "--out",
                    tmp_path / "out", "--engine", "telea", "--shard", "1/2")
    assert json.loads(again.stdout)["skipped_existing"] == 2  # resumable per shard


def test_out_pointing_at_a_file_is_one_error_up_front(tmp_path, photo, box_mask):
    make_folder(tmp_path, photo, box_mask, ["a", "b"])
    (tmp_path / "taken").write_text("not a folder")
    run = run_cli("inpaint", "--images", tmp_path / "imgs", "--masks", tmp_path / "masks", "--out", tmp_path / "taken")
    assert run.returncode == 2 and "is a file" in run.stderr and "failures" not in run.stderr


def test_bad_shard_is_a_clear_error(tmp_path, photo, box_mask):
    make_folder(tmp_path, photo, box_mask, ["a"])
    run = run_cli("inpaint", "--images", tmp_path / "imgs", "--masks", tmp_path / "masks", "--out", tmp_path / "o",
                  "--shard", "3/2")
    assert run.returncode == 2 and "outside 0..1" in run.stderr


def test_accelerate_launch_splits_a_batch_between_processes(tmp_path, photo, box_mask):
    pytest.importorskip("accelerate")
    names = [f"k{i}" for i in range(5)]
    make_folder(tmp_path, photo[:40, :40], box_mask[:40, :40], names)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "canvaslab"]
    args = ["--json", "inpaint", "--images", tmp_path / "imgs", "--masks", tmp_path / "masks", "--out",
            tmp_path / "out", "--engine", "telea"]
    run = subprocess.run([str(a) for a in launcher + args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    done = sorted(int(line.split(":")[1].strip(" ,")) for line in run.stdout.splitlines() if '"done"' in line)
    assert done == [2, 3]
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == names


def _descendants(pid):
    """Pids of every live process below `pid` (Linux /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its reaping is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_kill_9_of_a_two_worker_batch_takes_its_workers_with_it(tmp_path, photo, box_mask):
    """Issue 10: after kill -9 of `--workers 2`, workers and the resource tracker lived on, writing, then hung."""
    names = [f"img{i:02d}" for i in range(12)]
    make_folder(tmp_path, np.asarray(Image.fromarray(photo).resize((300, 200))),
                np.asarray(Image.fromarray(box_mask).resize((300, 200))), names)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "canvaslab", "--quiet", "inpaint", "--images", tmp_path / "imgs", "--masks",
            tmp_path / "masks", "--out", out, "--workers", 2, "--seed", 1]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    family = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("*.png")):
            time.sleep(0.02)
        family = _descendants(proc.pid)
        assert len(family) >= 3, "two workers and a resource tracker should be running"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in family):
            time.sleep(0.05)
        assert not [pid for pid in family if _alive(pid)], "processes of the killed batch are still running"
        written = sorted(out.glob("*.png"))
        time.sleep(1.0)
        assert sorted(out.glob("*.png")) == written
        assert len(written) < len(names)
    finally:
        for pid in family:  # leave nothing behind, even when the test fails
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_of_a_two_worker_batch_stops_at_once(tmp_path, photo, box_mask):
    """Ctrl-C reaches the whole process group: the batch stops its workers instead of running the queue out."""
    names = [f"img{i:02d}" for i in range(12)]
    make_folder(tmp_path, np.asarray(Image.fromarray(photo).resize((300, 200))),
                np.asarray(Image.fromarray(box_mask).resize((300, 200))), names)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "canvaslab", "inpaint", "--images", tmp_path / "imgs", "--masks",
            tmp_path / "masks", "--out", out, "--workers", 2, "--seed", 1]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*.png")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, stderr = proc.communicate(timeout=30)
    written = sorted(out.glob("*.png"))
    time.sleep(1.0)
    assert sorted(out.glob("*.png")) == written and len(written) < len(names) // 2
    assert proc.returncode == 130 and "run the same command again to resume" in stderr


# Writes argv[1] through core.image.atomic_write_bytes and, once the bytes are in the temporary file,
# dies there (kill -9) or stays alive in the middle of the write ("hang").
WRITER = """
import os, signal, sys, time
from canvaslab.core import image

def stop(descriptor):
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    print("writing", flush=True)
    time.sleep(120)

image.os.fsync = stop
image.atomic_write_bytes(sys.argv[1], b"half an image")
"""


def start_writer(target, how):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), how], stdout=subprocess.PIPE, text=True)


def age(path, seconds=60):
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_rerun_removes_temporary_files_of_killed_writes_but_not_of_live_ones(tmp_path, photo, box_mask):
    """Issue 10: `.name.<hex>.tmp` files left by a kill mid-write were never removed by a successful rerun."""
    make_folder(tmp_path, photo, box_mask, ["a", "b"])
    out = tmp_path / "out"
    killed = start_writer(out / "a.png", "die")
    assert killed.wait(timeout=60) == -signal.SIGKILL
    [stale] = out.glob(".a.png.*.tmp")
    age(stale)  # the kill happened a minute ago
    live = start_writer(out / "b.png", "hang")  # e.g. another shard still writing
    try:
        assert live.stdout.readline().strip() == "writing"
        [busy] = out.glob(".b.png.*.tmp")
        age(busy)
        run = run_cli("--json", "inpaint", "--images", tmp_path / "imgs", "--masks", tmp_path / "masks", "--out", out,
                      "--engine", "telea", "--seed", 0)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["done"] == 2 and "removed 1 unfinished temporary file" in run.stderr
        assert not stale.exists() and busy.exists()
        assert Image.open(out / "a.png").size == Image.open(out / "b.png").size == (photo.shape[1], photo.shape[0])
    finally:
        live.kill()
        live.wait()


def test_single_image_rerun_removes_its_output_s_leftover(tmp_path, photo, box_mask):
    image, mask = write_png(tmp_path / "in.png", photo), write_png(tmp_path / "m.png", box_mask)
    out = tmp_path / "res" / "out.png"
    assert start_writer(out, "die").wait(timeout=60) == -signal.SIGKILL
    [stale] = out.parent.glob(".out.png.*.tmp")
    age(stale)
    other = out.parent / ".other.png.0123abcd.tmp"  # some other output's: not this run's to judge
    other.write_bytes(b"x")
    age(other)
    run = run_cli("inpaint", image, "--mask", mask, "--engine", "telea", "-o", out)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == [".other.png.0123abcd.tmp", "out.png"]
