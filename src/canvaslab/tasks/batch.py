"""Folders in, folders out: pairing images with masks, a worker pool, resumable and loss-free.

- Images are found recursively (png/jpg/jpeg/webp) and paired with masks by relative path and stem
  (``imgs/a/b.jpg`` <-> ``masks/a/b.png``; ``b_mask.png`` / ``b-mask.png`` also match; a flat masks
  folder matches by stem when that is unambiguous). One mask *file* may serve the whole folder.
- An output that already exists is skipped, so an interrupted run resumes where it stopped; outputs
  are written atomically, so an existing file is always a finished one, and the temporary files a
  killed run leaves behind are removed when the folder is run again.
- A bad file does not stop the run: failures are collected and listed at the end. A missing model does
  (it would fail every image alike): the run ends with that one error.
- Worker processes die with the batch process, however it ends (kill -9 included): they never go on
  writing outputs nobody collects, nor hang afterwards holding memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canvaslab.core.image import remove_stale_temporaries
from canvaslab.core.notices import notice
from canvaslab.errors import CanvaslabError, InputError, ModelNotAvailableError
from canvaslab.tasks.render import OutputSpec, render
from canvaslab.tasks.requests import REQUESTS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MASK_MARKERS = ("_mask", "-mask", ".mask")


@dataclass(frozen=True)
class BatchItem:
    key: str  # relative path without suffix, "/"-separated
    image: Path
    mask: Path | None
    output: Path


@dataclass
class Pairing:
    items: list[BatchItem] = field(default_factory=list)
    images_without_mask: list[Path] = field(default_factory=list)
    masks_without_image: list[Path] = field(default_factory=list)
    clashes: list[tuple[str, list[Path]]] = field(default_factory=list)  # several images -> one output


@dataclass
class BatchReport:
    done: list[BatchItem] = field(default_factory=list)
    skipped: list[BatchItem] = field(default_factory=list)
    failed: list[tuple[BatchItem, str]] = field(default_factory=list)


def refuse_input_as_output(output: Any, *inputs: Any, flag: str = "the output") -> None:
    """InputError when `output` names one of `inputs` (the same file or folder, by any path): writing it
    would destroy that input. Inputs that are not paths (arrays, bytes, None) are ignored."""
    if not isinstance(output, (str, os.PathLike)):
        return
    target = Path(output)
    for source in inputs:
        if isinstance(source, (str, os.PathLike)) and _same_path(target, Path(source)):
            raise InputError(f"{flag} {target} is also an input: choose another output name, so the input is kept")


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_out_folder(images_dir: Path, out_dir: Path) -> None:
    """--out must be outside --images: the same folder makes every image look finished (its output name is
    the image's own), and a folder inside it is read back as images on the next run."""
    images, out = images_dir.resolve(), out_dir.resolve()
    if out == images:
        raise InputError(f"--out {out_dir} is --images {images_dir}: the results would replace the images; "
                         "choose another folder")
    if images in out.parents:
        raise InputError(f"--out {out_dir} is inside --images {images_dir}: the next run would read the results as "
                         "images; choose a folder outside it")


def make_out_folder(out_dir: Path) -> None:
    """Create --out before any work: a folder that cannot be made (a file in its path, no permission) is one
    error, not one failure per image."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --out {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"cannot create --out {out_dir}: the folder is not writable")


def find_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, in a stable order; hidden files and folders ignored."""
    if not root.is_dir():
        raise InputError(f"folder not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(dirpath) / name)
    return found


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _strip_marker(key: str) -> str:
    for marker in MASK_MARKERS:
        if key.endswith(marker):
            return key[: -len(marker)]
    return key


def pair_folder(
    images_dir: Path, masks: Path | None, out_dir: Path, *, suffix: str = ".png", need_masks: bool = True
) -> Pairing:
    """Match images to masks and decide each output path (``out_dir/<relative key><suffix>``)."""
    check_out_folder(images_dir, out_dir)
    images = find_images(images_dir)
    if not images:
        raise InputError(f"no images (png/jpg/jpeg/webp) found under {images_dir}")
    pairing = Pairing()
    if masks is not None and masks.is_file():
        mask_for: Callable[[str], Path | None] = lambda _key: masks  # noqa: E731 - one mask for every image
        mask_files: list[Path] = []
    elif masks is not None:
        mask_files = find_images(masks)
        by_key = {_strip_marker(_key(m, masks)): m for m in mask_files}
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for m in mask_files:
            by_stem[_strip_marker(m.stem)].append(m)

        def mask_for(key: str) -> Path | None:
            if key in by_key:
                return by_key[key]
            same_stem = by_stem.get(key.rsplit("/", 1)[-1], [])
            return same_stem[0] if len(same_stem) == 1 else None
    else:
        mask_files = []
        mask_for = lambda _key: None  # noqa: E731 - e.g. --mask-mode alpha: the images carry their masks

    by_output: dict[str, list[Path]] = defaultdict(list)
    for image in images:
        by_output[_key(image, images_dir)].append(image)
    used_masks: set[Path] = set()
    for key, paths in by_output.items():
        if len(paths) > 1:
            pairing.clashes.append((key, paths))
            continue
        mask = mask_for(key)
        if mask is None and need_masks:
            pairing.images_without_mask.append(paths[0])
            continue
        if mask is not None:
            used_masks.add(mask)
        pairing.items.append(BatchItem(key, paths[0], mask, out_dir / f"{key}{suffix}"))
    pairing.masks_without_image = [m for m in mask_files if m not in used_masks]
    return pairing


def launcher_shard() -> tuple[int, int]:
    """(index, count) of this process under `accelerate launch` or torchrun; (0, 1) when run alone."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise InputError("RANK and WORLD_SIZE must be integers (they are set by accelerate launch / torchrun)") from None


def parse_shard(text: str) -> tuple[int, int]:
    """"2/4" -> (2, 4): part 2 (0-based) of 4."""
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return int(index), int(count)
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None


def shard(items: list[BatchItem], index: int, count: int) -> list[BatchItem]:
    """The items process `index` of `count` handles (round robin, so shards stay balanced)."""
    if not 0 <= index < count:
        raise InputError(f"shard index {index} is outside 0..{count - 1}")
    return items[index::count]


def process_item(item: BatchItem, task: str, request: dict[str, Any], spec: OutputSpec) -> None:
    """Worker entry point (top level so that a process pool can pickle it)."""
    model = REQUESTS[task].model_validate(request)
    row_spec = dataclasses.replace(spec, grid=_grid_path(item, spec))
    render(task, item.image, item.mask, model, item.output, row_spec, tidy=False)


def _grid_path(item: BatchItem, spec: OutputSpec) -> Path | None:
    return None if spec.grid is None else spec.grid / f"{item.key}{item.output.suffix}"


def remove_leftovers(items: list[BatchItem], spec: OutputSpec) -> int:
    """Remove the temporary files a killed run left beside these items' outputs and grids (one scan per folder).

    Other processes may be writing to the same folders (shards): their files are locked and stay.
    """
    folders = {item.output.parent for item in items}
    folders |= {grid.parent for item in items if (grid := _grid_path(item, spec)) is not None}
    removed = sum(len(remove_stale_temporaries(folder)) for folder in sorted(folders))
    if removed:
        notice(f"removed {removed} unfinished temporary file{'s' if removed != 1 else ''} left by an interrupted run")
    return removed


def run_batch(
    items: Iterable[BatchItem],
    task: str,
    request: dict[str, Any],
    spec: OutputSpec,
    *,
    workers: int = 1,
    on_progress: Callable[[BatchItem, str], None] | None = None,
) -> BatchReport:
    """Process every item whose output does not exist yet; never stop on a single failure (a missing
    model is no single failure: it stops the batch with its one error).

    `spec.grid`, when set, is a folder: each item's grid goes to ``grid/<key><suffix>``.
    `on_progress(item, status)` is called with status "done", "skipped" or "failed".
    """
    report = BatchReport()
    notify = on_progress or (lambda _item, _status: None)
    items = list(items)
    remove_leftovers(items, spec)
    todo = []
    for item in items:
        if item.output.exists():
            report.skipped.append(item)
            notify(item, "skipped")
        else:
            todo.append(item)
    job = functools.partial(process_item, task=task, request=request, spec=spec)
    if workers <= 1:
        for item in todo:
            _record(report, item, _call(job, item), notify)
        return report
    if todo and request.get("engine", "patchmatch") == "patchmatch":
        # Compile (or load) PatchMatch's kernels once here: on a first run every worker would otherwise
        # compile the same machine code at once, on the same cores, and cache it N times over.
        from canvaslab.engines.classical.warm import warm

        warm()
    # spawn, not fork: forking a process whose numba/OpenMP threads are running can deadlock.
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker, initargs=(os.getpid(),),
    )
    try:
        pending: dict[Future, BatchItem] = {pool.submit(_call, job, item): item for item in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    failure = future.result()
                except ModelNotAvailableError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a dead worker fails its items, not the batch
                    failure = f"worker process failed: {type(exc).__name__}: {exc}"
                _record(report, pending.pop(future), failure, notify)
    except BaseException:
        # Ctrl-C or an error here: start nothing more and stop the items in progress, rather than
        # wait for them (shutdown(wait=True) would run every queued item first).
        _stop_workers(pool)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return report


def _start_worker(parent_pid: int) -> None:
    """Pool initializer: make this worker die with the batch process that started it.

    Linux delivers SIGKILL to the worker the moment its parent dies (PR_SET_PDEATHSIG), even while
    numba or torch holds the GIL. Everywhere, a watcher thread waits on the parent's sentinel (a pipe
    that closes when the parent dies) and ends the process. Without them a killed batch leaves workers
    that finish their queued items, then block forever on the dead parent's queue, keeping the
    resource tracker alive too. Ctrl-C is the parent's to handle: it stops the workers itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="canvaslab-parent-watch", daemon=True).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)  # no clean-up: the parent is gone, nothing this process still does is wanted


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers (shutdown(wait=False) would leave them to finish the queued items).

    Called before shutdown, which forgets the processes.
    """
    processes = getattr(pool, "_processes", None) or {}  # CPython's pid -> Process map; no public accessor
    for process in list(processes.values()):
        with contextlib.suppress(Exception):
            process.terminate()


def _call(job: Callable[[BatchItem], None], item: BatchItem) -> str | None:
    """Run one item; return None on success or the one-line reason it failed."""
    try:
        job(item)
    except ModelNotAvailableError:
        raise  # the same for every item: the batch stops with one error instead of failing each image
    except CanvaslabError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken file must not end the batch
        return f"{type(exc).__name__}: {exc}"
    return None


def _record(report: BatchReport, item: BatchItem, failure: str | None, notify: Callable[[BatchItem, str], None]) -> None:
    if failure is None:
        report.done.append(item)
        notify(item, "done")
    else:
        report.failed.append((item, failure))
        notify(item, "failed")
