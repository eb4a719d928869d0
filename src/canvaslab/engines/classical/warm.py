"""PatchMatch's compiled kernels: how they are cached, a notice when they compile, and `warm()`.

numba turns each kernel into machine code for this CPU the first time a process calls it
(PatchMatch: 10-30 s on two cores, once) and stores the result on disk, so later processes only load
it (well under a second). Where numba keeps that cache, first match wins:

1. `NUMBA_CACHE_DIR`, when set;
2. `__pycache__` beside the module, when writable (a checkout, a user's own virtualenv);
3. the user-wide cache, `~/.cache/numba` (`$XDG_CACHE_HOME/numba`; `%LOCALAPPDATA%\\numba` on
   Windows): a read-only site-packages (system or container installs) lands here;
4. nowhere, when none of those is writable: every process then compiles again, and the notice
   says so (set `NUMBA_CACHE_DIR` to a writable folder).

An entry is keyed by the source file's content, the Python and numba versions and the CPU model, so
the cache never serves stale code: an upgrade, or a cache copied to another machine, just compiles
again. In CI, keep `NUMBA_CACHE_DIR` in the job cache (keyed on the numba version and
patchmatch_kernels.py), or let `warm()` run once per job.

Nothing here compiles ahead of use by itself (a wheel cannot run code at install): the first run
says what it is doing, and `warm()` (`canvaslab doctor --warm`) does it at a time of the user's
choosing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit
from numba.core import event

from canvaslab.core.notices import notice

# Every kernel Python calls, by name. Helpers called only from other kernels are compiled into them
# and never loaded on their own, so they are neither listed nor cached.
KERNELS: dict[str, Any] = {}


def kernel(function: Callable) -> Any:
    """`njit` for a kernel called from Python: cached on disk where numba can write, and releasing the
    GIL while it runs, so other Python threads (a server answering /health, the other workers of a
    fill) go on meanwhile."""
    try:
        dispatcher = njit(cache=True, nogil=True)(function)
    except RuntimeError as exc:
        if "cannot cache" not in str(exc):
            raise
        dispatcher = njit(nogil=True)(function)  # no writable cache location (see the module docstring)
    KERNELS[function.__name__] = dispatcher
    _CompileNotice.install()
    return dispatcher


def cache_dir() -> str | None:
    """Where numba keeps the kernels' machine code, or None when it found nowhere writable."""
    import canvaslab.engines.classical.patchmatch_kernels  # noqa: F401 - defines the kernels

    return next(iter(KERNELS.values())).stats.cache_path


class _CompileNotice(event.Listener):
    """Tells the user, once per process, that the kernels are being compiled: otherwise a first run
    looks hung."""

    _installed: _CompileNotice | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.told = False

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if cls._installed is None:
                cls._installed = cls()
                event.register("numba:compile", cls._installed)

    def on_start(self, ev: event.Event) -> None:
        # numba fires this only when it compiles, never when it loads from the cache.
        if self.told or ev.data["dispatcher"] not in KERNELS.values():
            return
        self.told = True
        where = ev.data["dispatcher"].stats.cache_path
        if where is None:
            notice("compiling PatchMatch for this CPU (10-30 s): numba found no writable cache "
                   "folder, so every process compiles again; set NUMBA_CACHE_DIR to a writable folder")
        else:
            notice(f"compiling PatchMatch for this CPU, once (10-30 s); later runs load it from "
                   f"{where} ('canvaslab doctor --warm' does this ahead of time)")

    def on_end(self, ev: event.Event) -> None:
        pass


def warm() -> dict[str, Any]:
    """Compile (or load from numba's cache) every PatchMatch kernel, so the next fill starts at once.

    Runs one small fill that reaches every kernel with the argument types real fills use; safe to
    call again (a warm cache makes it a fraction of a second). Returns plain JSON-ready data:
    `compiled` (kernel names compiled now, and cached if `cache_dir` is not None), `loaded` (read
    from the cache), `ready` (already loaded in this process), `seconds`, `cache_dir` (None: no
    writable folder, so every process compiles again) and `summary`, one line saying all that.
    """
    from canvaslab.engines.classical.patchmatch import patchmatch_inpaint  # defines the kernels

    before = {name: _counts(dispatcher) for name, dispatcher in KERNELS.items()}
    started = time.perf_counter()
    patchmatch_inpaint(*_warm_up_case(), seed=0, threads=1)
    seconds = time.perf_counter() - started
    found: dict[str, list[str]] = {"compiled": [], "loaded": [], "ready": []}
    for name, dispatcher in sorted(KERNELS.items()):
        hits, misses = _counts(dispatcher)
        state = "compiled" if misses > before[name][1] else "loaded" if hits > before[name][0] else "ready"
        found[state].append(name)
    where = cache_dir()
    done = ", ".join(f"{len(names)} {label}" for names, label in
                     ((found["compiled"], "compiled"), (found["loaded"], "loaded from the cache"),
                      (found["ready"], "already loaded")) if names)
    place = where or "none (no writable folder: set NUMBA_CACHE_DIR)"
    summary = f"PatchMatch kernels: {done} in {seconds:.1f} s; cache: {place}"
    return {**found, "seconds": round(seconds, 3), "cache_dir": where, "summary": summary}


def _counts(dispatcher: Any) -> tuple[int, int]:
    stats = dispatcher.stats
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


def _warm_up_case() -> tuple[np.ndarray, np.ndarray]:
    """A 96x96 textured image with a 48x48 hole: deep enough for two pyramid scales, so the
    down/upsampling kernels run too, and the final Poisson fill runs as in any default fill."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    hole = np.zeros((96, 96), dtype=bool)
    hole[24:72, 24:72] = True
    return image, hole
