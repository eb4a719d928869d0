"""Notices: things the user should know that are not errors (mask resized, empty mask, ...).

Core functions call `notice(...)`; it goes to the ``canvaslab`` logger at WARNING level, and tasks
collect the notices raised in their own thread into the result with `collect_notices()`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

logger = logging.getLogger("canvaslab")


def notice(message: str) -> None:
    """Tell the user something worth knowing that does not stop the work."""
    logger.warning(message)


class _Collector(logging.Handler):
    def __init__(self, thread_id: int) -> None:
        super().__init__(level=logging.WARNING)
        self.thread_id = thread_id
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Batch jobs run several tasks at once: keep only what this task's thread said.
        if record.thread == self.thread_id:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def collect_notices() -> Iterator[list[str]]:
    """Collect the notices emitted by the current thread while the block runs."""
    handler = _Collector(threading.get_ident())
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
