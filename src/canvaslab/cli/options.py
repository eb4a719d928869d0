"""Build typer commands whose options come from the request models.

A command is written as a plain function taking ``(request_values: dict, **cli_only)``; `command()`
gives it a signature made of its own CLI-only parameters plus one option per request field (help,
default, choices and panel taken from the model), so CLI flags and API keywords never drift apart.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.markup import escape
from pydantic.fields import FieldInfo

from canvaslab.tasks.requests import TaskRequest, field_extra, flag_name


def _extra(field: FieldInfo, key: str, default: Any = None) -> Any:
    return field_extra(field).get(key, default)


def _cli_type(annotation: Any) -> Any:
    """Map a model annotation to what typer can parse (dicts become repeatable KEY=VALUE strings)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return typing.Optional[_cli_type(args[0])]
    if origin in (dict,) or annotation is dict:
        return typing.Optional[list[str]]
    if origin in (list, tuple):
        return typing.Optional[list[str]]
    return annotation


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return None  # list/dict fields: "not given" on the CLI, the model supplies the empty default
    if "cli_default" in field_extra(field):
        return _extra(field, "cli_default")  # e.g. --engine: not given, so the model decides
    return field.default


def _bounds(field: FieldInfo) -> str:
    """The field's numeric bounds as help text, " (0 to 512)", so help says what validation will refuse."""
    found = {kind: getattr(item, kind) for item in field.metadata for kind in ("ge", "gt", "le", "lt")
             if getattr(item, kind, None) is not None}
    if not found or found.get("le") == 2**32 - 1:  # a seed: any 32-bit number, nothing worth saying
        return ""
    low = f"{found['ge']:g}" if "ge" in found else None
    high = f"{found['le']:g}" if "le" in found else None
    if low is not None and high is not None:
        return f" ({low} to {high})"
    parts = [f"at least {low}" if low is not None else f"above {found['gt']:g}" if "gt" in found else "",
             f"at most {high}" if high is not None else f"below {found['lt']:g}" if "lt" in found else ""]
    return f" ({', '.join(p for p in parts if p)})"


def request_parameters(model: type[BaseModel], exclude: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    params = []
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        default = _default(field)
        option = typer.Option(
            flag_name(name, field),
            help=escape(field.description or "") + _bounds(field),  # "[default: ...]" in a description is text, not markup
            rich_help_panel=_extra(field, "panel", "Options"),
            metavar=_extra(field, "metavar"),
            show_default=default is not None and default != "",
        )
        annotation = Annotated[_cli_type(field.annotation), option]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return params


def request_values(model: type[TaskRequest], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Split the request fields out of a command's keyword arguments, dropping CLI "not given" lists."""
    values = {}
    for name, field in model.model_fields.items():
        if name not in kwargs:
            continue
        value = kwargs.pop(name)
        if value is None and (field.default_factory is not None or "cli_default" in field_extra(field)):
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        values[name] = value
    return values


def command(
    model: type[TaskRequest], own: list[Callable[..., Any]], run: Callable[..., Any], exclude: tuple[str, ...] = ()
) -> Callable[..., Any]:
    """A typer-ready function: the parameters of the `own` functions (CLI-only), then the model's fields.

    The `own` functions only carry signatures (and, for the first, the help text); `run(request_values,
    **own_values)` is called with the request fields split out.
    """
    own_params = [p for fn in own for p in inspect.signature(fn, eval_str=True).parameters.values()]
    taken = {p.name for p in own_params}
    model_params = [p for p in request_parameters(model, exclude) if p.name not in taken]

    def wrapper(**kwargs: Any) -> Any:
        values = request_values(model, kwargs)
        return run(values, **kwargs)

    wrapper.__signature__ = inspect.Signature(own_params + model_params)  # type: ignore[attr-defined]
    wrapper.__doc__ = own[0].__doc__
    wrapper.__name__ = own[0].__name__
    return wrapper
