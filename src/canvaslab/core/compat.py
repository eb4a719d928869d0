"""Known-incompatible dependency pairs, checked at run time so the fix is one line, not a deep traceback.

pyproject.toml keeps a fresh `pip install canvaslab[...]` out of these pairs with upper bounds, and
`constraints.txt` pins the set the tests passed with. An environment that was upgraded by hand, or by
another package, can still end up in one; the library then fails far from the cause (transformers 5.24
with peft 0.21: "The version of PEFT you are using is not compatible, please use a version >= 0.22.0",
raised from inside a LoRA load). `check_compatible` names the pair and the pip command that fixes it,
before any of that code runs; `canvaslab doctor` lists every pair it finds.

Only the standard library is used: versions come from installed package metadata, nothing is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata

from canvaslab.errors import CanvaslabError


class DependencyError(CanvaslabError):
    """Installed packages are known not to work together."""

    exit_code = 1


@dataclass(frozen=True)
class KnownBreak:
    """`package` in `when` does not work with `other` in `other_when`; `fix` is the command that mends it."""

    package: str
    when: str  # a simple specifier set: ">=5.24", ">=1.0,<1.2"
    other: str
    other_when: str
    why: str  # what breaks, in a few words
    fix: str

    def message(self, versions: Mapping[str, str | None]) -> str:
        return (f"{self.package} {versions[self.package]} does not work with {self.other} {versions[self.other]} "
                f"({self.why}): {self.fix}")


KNOWN_BREAKS: tuple[KnownBreak, ...] = (
    KnownBreak(
        "transformers", ">=5.24", "peft", "<0.22",
        why="transformers 5.24 refuses every peft before 0.22, so no LoRA loads or trains",
        fix="pip install 'transformers<5.24' (or a peft >= 0.22 once it is released)",
    ),
)


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '5.24.0.dev0' -> (5, 24, 0); pre/post tags are ignored."""
    found = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not found:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in found.group(1).split("."))


_COMPARE = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}


def satisfies(version: str, specifier: str) -> bool:
    """Whether `version` meets every clause of a comma-separated specifier (release numbers compared)."""
    have = release(version)
    for clause in filter(None, (part.strip() for part in specifier.split(","))):
        op = next(op for op in ("==", "!=", ">=", "<=", ">", "<") if clause.startswith(op))
        want = release(clause[len(op):])
        width = max(len(have), len(want))
        if not _COMPARE[op](have + (0,) * (width - len(have)), want + (0,) * (width - len(want))):
            return False
    return True


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def find_breaks(versions: Mapping[str, str | None], breaks: Iterable[KnownBreak] = KNOWN_BREAKS) -> list[KnownBreak]:
    """The known breaks that `versions` (package -> version, None = not installed) falls into."""
    found = []
    for rule in breaks:
        mine, theirs = versions.get(rule.package), versions.get(rule.other)
        if mine and theirs and satisfies(mine, rule.when) and satisfies(theirs, rule.other_when):
            found.append(rule)
    return found


def installed_breaks(*packages: str) -> list[tuple[KnownBreak, dict[str, str | None]]]:
    """Known breaks among the installed packages; only rules touching `packages` when any are given."""
    rules = [rule for rule in KNOWN_BREAKS if not packages or {rule.package, rule.other} & set(packages)]
    versions = {name: installed_version(name) for rule in rules for name in (rule.package, rule.other)}
    return [(rule, versions) for rule in find_breaks(versions, rules)]


def check_compatible(*packages: str) -> None:
    """Raise `DependencyError` (one line naming the fix) when an installed pair touching `packages` is broken."""
    found = installed_breaks(*packages)
    if found:
        rule, versions = found[0]
        raise DependencyError(rule.message(versions))
