"""Readers of A1111's `parameters` text that are not ours, for checking every output against them.

`a1111_parse` follows AUTOMATIC1111's documented infotext format (A1111 itself cannot be installed
here): the prompt (any number of lines), an optional line starting ``Negative prompt: `` (it and the
lines after it, up to the last, are the negative prompt), then a last line of ``Key: value`` pairs
separated by ", ", where a value is either text without commas or a double-quoted JSON string.
Stricter than A1111's own reader: the whole last line must be such pairs. `sd_parsers_read` runs the
real sd-parsers package on the image file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_KEY = r"\w[\w \-/]*"
_VALUE = r'"(?:\\.|[^\\"])*"|[^,"]*'
_PAIR = re.compile(rf"({_KEY}): ({_VALUE})")
_SETTINGS_LINE = re.compile(rf"(?:{_KEY}): (?:{_VALUE})(?:, (?:{_KEY}): (?:{_VALUE}))*")


def a1111_parse(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, settings) of an infotext; AssertionError when it breaks the format."""
    *lines, last = text.split("\n")
    assert _SETTINGS_LINE.fullmatch(last), f"last line is not 'Key: value' pairs separated by ', ': {last!r}"
    settings: dict[str, str] = {}
    for key, value in _PAIR.findall(last):
        assert key not in settings, f"setting {key!r} appears twice"
        settings[key] = json.loads(value) if value.startswith('"') else value
    assert len(settings) >= 3, "A1111 ignores a settings line with fewer than three pairs"
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        if negative is None and line.startswith("Negative prompt: "):
            negative = [line[len("Negative prompt: "):]]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    return "\n".join(prompt), "\n".join(negative or []), settings


def sd_parsers_read(path: Path):
    """What sd-parsers makes of an image: its PromptInfo, asserting it recognised A1111's format."""
    from sd_parsers import ParserManager
    from sd_parsers.data import Generators

    info = ParserManager().parse(str(path))
    assert info is not None, f"sd-parsers does not recognise the metadata of {path.name}"
    assert info.generator == Generators.AUTOMATIC1111, info.generator
    return info


def check_output(path: Path, *, prompt: str = "", negative: str = "", seed: int | None = None) -> dict[str, str]:
    """Both readers recover the prompts and seed of a saved output; returns A1111's settings."""
    from canvaslab.core.metadata import read_metadata

    text = read_metadata(path).parameters
    assert text is not None, f"{path.name} carries no parameters"
    got_prompt, got_negative, settings = a1111_parse(text)
    assert (got_prompt, got_negative) == (prompt, negative)
    assert "Steps" in settings and "Sampler" in settings
    if seed is not None:
        assert settings["Seed"] == str(seed)
    info = sd_parsers_read(path)
    [sampler] = info.samplers
    assert sampler.name == settings["Sampler"] and sampler.parameters["steps"] == settings["Steps"]
    assert sampler.parameters["seed"] == settings["Seed"]
    assert [p.value for p in info.prompts] == ([prompt.strip()] if prompt.strip() else [])
    assert [p.value for p in info.negative_prompts] == ([negative.strip()] if negative.strip() else [])
    return settings
