"""Command-line options generated from a manifest section: one definition, documented once.

``@config_options(TrainConfig)`` gives a command one ``--option`` per field of the
section (its description is the ``--help`` text, a Literal becomes a choice, a bool a
``--x/--no-x`` switch) and hands the command the options the user set as an
``overrides`` dict, which the library validates with the same pydantic model the
manifest uses. :func:`as_flags` turns such a dict back into command-line flags (to
relaunch a command in several processes).
"""

from __future__ import annotations

import enum
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel

__all__ = ["as_flags", "config_options", "with_overrides"]

Section = typing.TypeVar("Section", bound=BaseModel)


def _literal_choices(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is Literal:
        return [str(x) for x in typing.get_args(annotation)]
    return None


def _option(name: str, field: Any) -> tuple[Any, Any]:
    """(annotation, typer.Option) of one config field; None = not given."""
    flag = "--" + name.replace("_", "-")
    help_text = (field.description or "").split(". ")[0].rstrip(".") + "."
    annotation = field.annotation
    if annotation is bool:
        return bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
    choices = _literal_choices(annotation)
    if choices is not None:  # typer shows an Enum as a choice
        kind = enum.Enum(name, {c: c for c in choices}, type=str)  # type: ignore[misc]
        return kind | None, typer.Option(flag, help=help_text, show_default=False)
    base = {int | None: int, float | None: float, str | None: str}.get(annotation, annotation)
    if base in (int, float, str):
        return base | None, typer.Option(flag, help=help_text, show_default=False)
    # unions, lists, nested sections: text, parsed by _parse (comma lists, YAML scalars)
    return str | None, typer.Option(flag, help=help_text + " (comma-separated for a list)", show_default=False)


def _parse(field: Any, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if not isinstance(value, str) or field.annotation in (str, str | None) or _literal_choices(field.annotation):
        return value
    import yaml

    if "," in value:
        return [v.strip() for v in value.split(",") if v.strip()]
    parsed = yaml.safe_load(value)
    args = typing.get_args(field.annotation)
    takes_list = any(typing.get_origin(a) is list for a in args) or typing.get_origin(field.annotation) is list
    choices = {str(c) for a in args for c in (typing.get_args(a) if typing.get_origin(a) is Literal else ())}
    if takes_list and isinstance(parsed, str) and parsed not in choices:
        return [parsed]
    return parsed


def config_options(
    section: type[BaseModel], *, skip: tuple[str, ...] = (), dest: str = "overrides"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one option per field of ``section`` to a typer command; the command receives ``dest``."""
    fields = {n: f for n, f in section.model_fields.items() if n not in skip}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
            if p.name != dest
        ]
        generated = []
        for name, field in fields.items():
            annotation, option = _option(name, field)
            generated.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[annotation, option]
                )
            )

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            overrides = {}
            for name, field in fields.items():
                value = kwargs.pop(name, None)
                if value is not None:
                    overrides[name] = _parse(field, value)
            return fn(**kwargs, **{dest: overrides})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        wrapper.__signature__ = inspect.Signature(params, return_annotation=hints.get("return", Any))  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def as_flags(overrides: dict[str, Any]) -> list[str]:
    """``{"lora_r": 8, "gradient_checkpointing": True}`` → ``["--lora-r=8", "--gradient-checkpointing"]``."""
    flags = []
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            flags.append(f"{flag}={','.join(str(v) for v in value)}")
        elif value is not None:
            flags.append(f"{flag}={value}")
    return flags


def with_overrides(section: type[Section], base: dict[str, Any], overrides: dict[str, Any]) -> Section:
    """``section`` validated from ``base`` with the command-line ``overrides``; bad values are a ConfigError."""
    from pydantic import ValidationError

    from slmloop.errors import ConfigError

    try:
        return section.model_validate({**base, **overrides})
    except ValidationError as exc:
        problems = [("--" + "-".join(str(x) for x in e["loc"]).replace("_", "-"), e["msg"]) for e in exc.errors()]
        lines = "; ".join(f"{k}: {m}" for k, m in problems)
        raise ConfigError(f"bad option: {lines}", hint="See the command's --help.", problems=problems) from None
