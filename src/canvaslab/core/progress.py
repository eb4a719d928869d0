"""Step progress and cancellation, scoped to the code that asked for them (numpy-free).

Engines call `report_progress(step, total)` once per denoising/MaskGIT step (or once per item for
the weight-free engines); nothing happens unless a caller installed a listener with
`progress_listener`. The listener lives in a context variable, so a server worker thread sees only
its own job's progress. A listener may also carry a cancel flag: `report_progress` and
`check_cancelled` raise `Cancelled` once it is set, which stops the job at its next step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from canvaslab.errors import CanvaslabError

ProgressCallback = Callable[[int, int], None]


class Cancelled(CanvaslabError):
    """The job was cancelled while it ran (raised from inside an engine's step loop)."""

    exit_code = 1


@dataclass(frozen=True)
class _Listener:
    callback: ProgressCallback | None
    cancel: threading.Event | None


_current: ContextVar[_Listener | None] = ContextVar("canvaslab_progress", default=None)


@contextmanager
def progress_listener(
    callback: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> Iterator[None]:
    """Send the steps reported inside this block to `callback(step, total)`; stop once `cancel` is set."""
    token = _current.set(_Listener(callback, cancel))
    try:
        yield
    finally:
        _current.reset(token)


@contextmanager
def quiet_steps() -> Iterator[None]:
    """Inside this block, reported steps only check for cancellation and reach no callback: for work
    that runs whole tasks as parts of a bigger one (a video's frames) and reports its own steps."""
    listener = _current.get()
    token = _current.set(None if listener is None else _Listener(None, listener.cancel))
    try:
        yield
    finally:
        _current.reset(token)


def listening() -> bool:
    """Whether a listener is installed here (engines skip building step callbacks otherwise)."""
    return _current.get() is not None


def check_cancelled() -> None:
    """Raise `Cancelled` if the current listener's cancel flag is set."""
    listener = _current.get()
    if listener is not None and listener.cancel is not None and listener.cancel.is_set():
        raise Cancelled("the job was cancelled")


def report_progress(step: int, total: int) -> None:
    """Step `step` of `total` is done (1-based); raises `Cancelled` when the job was cancelled."""
    listener = _current.get()
    if listener is None:
        return
    check_cancelled()
    if listener.callback is not None:
        listener.callback(int(step), int(total))
