"""The job queue: FIFO, bounded, one worker thread per device, cancellable, with progress and history.

A job is a piece of work (a generator of task results) plus its state. Workers take jobs in the
order they came; each result is written under `<output>/<job id>/` atomically (`Result.save`) as
soon as it exists, so a finished job's files are always complete. Cancelling a queued job removes
it at once; a running one stops at its next reported step (`core.progress.Cancelled`), and so does
one that runs past the queue's time budget. Skipping ends only the running result of a job made
of several (`each_result`). A finished job lets go of its work (and the inputs it holds), so the
history keeps only states, file names and recipes.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from canvaslab.core.progress import Cancelled, progress_listener
from canvaslab.errors import CanvaslabError, EngineError, InputError, ModelNotAvailableError
from canvaslab.tasks.result import recipe_to_write

log = logging.getLogger("canvaslab.server")

# A job's work: yields task results (canvaslab Result, or UnderstandResult for `understand`).
Work = Callable[[], Iterator[Any]]


class Status(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = frozenset({Status.done, Status.failed, Status.cancelled})


class QueueFull(Exception):
    """The queue holds its maximum number of waiting jobs."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def http_status_of(exc: BaseException) -> int:
    """The HTTP status a failed job's error maps to (synchronous A1111 calls answer with it)."""
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, ModelNotAvailableError):
        return 404
    if isinstance(exc, (EngineError, CanvaslabError)):
        return 422
    return 500


@dataclass
class SavedImage:
    name: str
    path: Path
    seed: int


@dataclass
class Job:
    """One submitted task: its state, progress and outputs. Mutated only under the queue's lock."""

    id: str
    task: str
    work: Work | None  # dropped once the job ends: it holds the inputs
    expected: int = 1  # results the work yields (A1111 batches: batch_size x n_iter)
    created: datetime = field(default_factory=_now)
    started: datetime | None = None
    status: Status = Status.queued
    progress: tuple[int, int] | None = None
    error: str | None = None
    error_status: int | None = None
    finished: datetime | None = None
    images: list[SavedImage] = field(default_factory=list)
    recipe: dict[str, Any] | None = None
    parameters: str | None = None
    answers: list[dict[str, Any]] | None = None
    notices: list[str] = field(default_factory=list)
    version: int = 0  # bumped on every change; event streams poll it
    statuses: list[Status] = field(default_factory=lambda: [Status.queued])  # every status it had, in order
    cancel_flag: threading.Event = field(default_factory=threading.Event)  # what engines watch
    done_flag: threading.Event = field(default_factory=threading.Event)
    cancelling: bool = False  # cancel_flag was set to cancel the job, not to skip a result
    skipping: bool = False  # cancel_flag was set to skip the running result only
    over_budget: bool = False

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self, position: int | None) -> dict[str, Any]:
        """The job as the API shows it (see docs/server.md)."""
        result = None
        if self.status == Status.done or self.images or self.answers is not None:
            result = {
                "images": [{"url": f"/api/v1/results/{self.id}/{img.name}", "seed": img.seed} for img in self.images],
                "grid": None,
                "recipe": self.recipe,
                "parameters": self.parameters,
            }
            if self.answers is not None:
                result["answers"] = self.answers
        return {
            "id": self.id,
            "task": self.task,
            "status": self.status.value,
            "position": position,
            "progress": None if self.progress is None else {"step": self.progress[0], "total": self.progress[1]},
            "error": self.error,
            "created": self.created.isoformat(),
            "finished": None if self.finished is None else self.finished.isoformat(),
            "result": result,
        }


class JobQueue:
    """FIFO of jobs served by `workers` threads; at most `size` jobs wait at a time."""

    def __init__(
        self, output: Path, *, size: int = 64, workers: int = 1, history: int = 200, max_seconds: float = 0.0,
        metadata: str = "private",
    ) -> None:
        self.output = Path(output)
        self.metadata = metadata  # full | private | none: what saved results and job answers reveal
        self.size = size
        self.history = history
        self.max_seconds = max_seconds  # 0: no limit
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: set[str] = set()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"canvaslab-worker-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- clients -----------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        return len(self._threads)

    def submit(self, task: str, work: Work, expected: int = 1) -> Job:
        """Queue `work`; raises QueueFull when `size` jobs are already waiting."""
        with self._lock:
            if len(self._waiting) >= self.size:
                raise QueueFull(f"the queue is full ({self.size} jobs waiting): try again in a moment")
            job = Job(id=uuid.uuid4().hex, task=task, work=work, expected=expected)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._lock.notify()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def snapshot(self, job: Job) -> dict[str, Any]:
        """A consistent JSON view of `job` (with its queue position)."""
        with self._lock:
            return job.to_json(self._position(job))

    def state(self, job: Job) -> tuple[int, list[str], int | None]:
        """(version, every status so far, position): what event streams compare between polls."""
        with self._lock:
            return job.version, [status.value for status in job.statuses], self._position(job)

    def recent(self, limit: int) -> list[Job]:
        """The newest `limit` jobs, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))[:limit]

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def running(self) -> list[Job]:
        with self._lock:
            return [self._jobs[i] for i in self._running if i in self._jobs]

    def cancel(self, job: Job) -> None:
        """A queued job ends now; a running one at its next step; a finished one stays as it is."""
        with self._lock:
            if job.status == Status.queued:
                self._waiting.remove(job)
                self._finish(job, Status.cancelled, "the job was cancelled before it started")
            elif job.status == Status.running:
                job.cancelling = True
                job.cancel_flag.set()

    def skip(self, job: Job) -> None:
        """A running job drops the result it is making at its next step and goes on with the next one."""
        with self._lock:
            if job.status == Status.running and not job.cancelling:
                job.skipping = True
                job.cancel_flag.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel waiting jobs and the running ones, then let the workers end."""
        with self._lock:
            self._stopping = True
            while self._waiting:
                self._finish(self._waiting.popleft(), Status.cancelled, "the server stopped")
            for job_id in self._running:
                self._jobs[job_id].cancelling = True
                self._jobs[job_id].cancel_flag.set()
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # -- workers -----------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.status, job.started = Status.running, _now()
                job.statuses.append(Status.running)
                job.version += 1
                self._running.add(job.id)
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running.discard(job.id)

    def _run(self, job: Job) -> None:
        timer = None
        if self.max_seconds:
            timer = threading.Timer(self.max_seconds, self._expire, (job,))
            timer.daemon = True
            timer.start()
        skip_check = _skip_check.set(lambda: self._take_skip(job))
        try:
            with progress_listener(lambda step, total: self._progress(job, step, total), job.cancel_flag):
                for index, result in enumerate(job.work()):  # type: ignore[misc]
                    self._keep(job, index, result)
        except Cancelled:
            if job.over_budget:
                # 422: the request was valid, but asks for more work than one job may do here.
                self._fail(job, f"the job ran longer than the server's limit of {self.max_seconds:g} seconds per job "
                                "and was stopped: ask for less work (a smaller size, fewer steps or images)", 422)
            else:
                with self._lock:
                    self._finish(job, Status.cancelled, "the job was cancelled while it ran")
            return
        except CanvaslabError as exc:
            self._fail(job, str(exc), http_status_of(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a worker must survive anything a task throws
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self._fail(job, f"internal error: {type(exc).__name__}: {exc}", 500)
            return
        finally:
            _skip_check.reset(skip_check)
            if timer is not None:
                timer.cancel()
        with self._lock:
            self._finish(job, Status.done, None)

    def _take_skip(self, job: Job) -> bool:
        """Whether the Cancelled just raised in `job` was a skip (then the job goes on, flag cleared)."""
        with self._lock:
            if not job.skipping or job.cancelling:
                return False
            job.skipping = False
            job.cancel_flag.clear()
            return True

    def _expire(self, job: Job) -> None:
        """The time budget is spent: stop the job at its next step."""
        with self._lock:
            if job.status == Status.running:
                job.over_budget = job.cancelling = True
                job.cancel_flag.set()

    def _progress(self, job: Job, step: int, total: int) -> None:
        with self._lock:
            job.progress = (step, total)
            job.version += 1

    def _keep(self, job: Job, index: int, result: Any) -> None:
        """Write an image result atomically under the output folder, or record answers."""
        notices = list(getattr(result, "notices", []))
        if hasattr(result, "answers"):
            answers = [{"image": a.image, "question": a.question, "answer": a.answer} for a in result.answers]
            with self._lock:
                job.answers, job.notices = answers, job.notices + notices
                job.recipe = recipe_to_write(result.recipe, self.metadata)
                job.version += 1
            return
        suffix = getattr(result, "suffix", ".png")  # a video job's: its container
        name = f"{job.task}-{index}-{result.seed}{suffix}"
        path = result.save(self.output / job.id / name, format="png", metadata=self.metadata)
        with self._lock:
            job.images.append(SavedImage(name, path, result.seed))
            if job.recipe is None:
                saved = {"output": {"quality": 95}} if suffix == ".png" else {}  # a video keeps its encoding's
                job.recipe = recipe_to_write({**result.recipe, **saved}, self.metadata)
                job.parameters = result.parameters if self.metadata != "none" else None
            job.notices += notices
            job.version += 1

    def _fail(self, job: Job, message: str, status: int) -> None:
        from canvaslab.server.inputs import hide_paths  # inputs builds on this module

        message = hide_paths(message)  # a library's sentence may name the server's folders
        with self._lock:
            job.error_status = status
            self._finish(job, Status.failed, message)

    def _finish(self, job: Job, status: Status, error: str | None) -> None:
        """Caller holds the lock."""
        job.status, job.error, job.finished = status, error, _now()
        job.work = None  # the inputs it holds (image bytes, request) are not kept in the history
        job.statuses.append(status)
        job.version += 1
        job.done_flag.set()

    def _position(self, job: Job) -> int | None:
        """Jobs waiting ahead of `job` (0: it starts next); None once it left the queue."""
        if job.status != Status.queued:
            return None
        try:
            return self._waiting.index(job)
        except ValueError:
            return None

    def _forget_old(self) -> None:
        """Keep the in-memory history bounded (files stay on disk); unfinished jobs are never dropped."""
        excess = len(self._jobs) - self.history
        for job_id in list(self._jobs):
            if excess <= 0:
                break
            if self._jobs[job_id].is_finished:
                del self._jobs[job_id]
                excess -= 1


# How the work of the job a worker thread runs asks whether a Cancelled was a skip (see each_result).
_skip_check: ContextVar[Callable[[], bool] | None] = ContextVar("canvaslab_skip_check", default=None)


def each_result(count: int, make: Callable[[int], Any]) -> Iterator[Any]:
    """A job's work that makes `count` results, `make(0)`, `make(1)`, ...; a skipped one is left out."""
    for index in range(count):
        try:
            yield make(index)
        except Cancelled:
            skipped = _skip_check.get()
            if skipped is None or not skipped():
                raise
