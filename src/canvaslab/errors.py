"""The one family of errors users see.

Every error a user can cause (bad file, bad value, missing model) is a `CanvaslabError` whose message
is one line saying what is wrong and how to fix it. The CLI prints it without a traceback and exits
with `exit_code`; the server maps it to a 4xx/5xx answer.
"""

from __future__ import annotations


class CanvaslabError(Exception):
    """Base class: a one-line, user-facing message."""

    exit_code = 1


class InputError(CanvaslabError):
    """A file, parameter or combination of parameters the user gave is not usable."""

    exit_code = 2


class ModelNotAvailableError(CanvaslabError):
    """A model (weights, config, tokenizer) is not on this machine."""

    exit_code = 3


class EngineError(CanvaslabError):
    """An engine could not do what was asked of it (e.g. no context to fill from)."""

    exit_code = 1
