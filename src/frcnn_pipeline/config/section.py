"""The base of every parameter section, and errors that name the full key, the value and the fix.

pydantic validates; this module only turns its errors into one short line per problem, e.g.
``runtime.nproc_per_nod: unknown parameter; did you mean runtime.nproc_per_node?`` or
``train.solver.max_iter: 'abc' is not an integer``.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from frcnn_pipeline.errors import UserFacingError

SectionT = TypeVar("SectionT", bound="Section")

# pydantic error types -> what the value is not.
_NOT_A = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a section of key: value pairs",
    "model_attributes_type": "a section of key: value pairs",
    "dict_type": "a section of key: value pairs",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


class ParameterError(UserFacingError, ValueError):
    """Parameters that do not fit the schema; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], heading: str = "", footer: str = ""):
        self.problems = problems
        lines = [f"  {line}" for line in problems] if heading else problems
        super().__init__("\n".join(line for line in (heading, *lines, footer) if line))


class Section(BaseModel):
    """A parameter section: unknown keys and wrong types are errors; values are read-only once validated."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def parse(cls: type[SectionT], value: Mapping[str, Any] | None, key: str) -> SectionT:
        """``value`` (the section as Kedro resolved it; None counts as empty) validated, defaults filled.

        Raises:
            ParameterError: one line per problem, each naming the full key (``key`` is the section's own).
        """
        try:
            return cls.model_validate({} if value is None else value)
        except ValidationError as error:
            raise ParameterError(describe_errors(cls, error, key)) from None

    def flat(self, prefix: str = "") -> dict[str, Any]:
        """Every value by its dotted key, ``{"roi_heads.nms_thresh_test": 0.5, ...}`` (lists are values);
        ``prefix`` goes before every key, with a dot."""
        values: dict[str, Any] = {}
        for name in type(self).model_fields:
            key, value = f"{prefix}.{name}" if prefix else name, getattr(self, name)
            values.update(value.flat(key) if isinstance(value, Section) else {key: value})
        return values


def describe_errors(model: type[BaseModel], error: ValidationError, prefix: str) -> list[str]:
    """One line per key in error (a union's members fail together: they make one line)."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for item in error.errors():
        by_key.setdefault(_full_key(model, item["loc"], prefix), []).append(item)
    return [_describe(model, key, items) for key, items in by_key.items()]


def describe_type(annotation: Any) -> str:  # noqa: PLR0911 (one return per kind of type)
    """A type as a user reads it: 'an integer or null', "'cpu' or 'cuda'", 'a list'."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return _either([describe_type(member) for member in typing.get_args(annotation)])
    if origin is Literal:
        return _either([repr(choice) for choice in typing.get_args(annotation)])
    if origin is typing.Annotated:
        return describe_type(typing.get_args(annotation)[0])
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        plural = {int: "integers", float: "numbers", str: "strings"}.get(item)
        return f"a list of {plural}" if plural else "a list"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a section of key: value pairs"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _either(choices: list[str]) -> str:
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The section class a field holds (unwrapping Optional), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for member in typing.get_args(annotation):
        found = submodel(member)
        if found is not None:
            return found
    return None


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], type[BaseModel] | None, FieldInfo | None]:
    """The key parts of ``loc``, the section ``loc`` leads to (None at a plain value), and its last field.

    A union's member tags (e.g. 'list[str]') in ``loc`` are not keys and are skipped.
    """
    parts: list[str] = []
    current: type[BaseModel] | None = model
    field = None
    dict_values: type[BaseModel] | None = None  # after a dict field: the section its values are
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] += f"[{item}]"
            continue
        if dict_values is not None:  # a name of the dict's own choosing (e.g. a split), then its section
            parts.append(str(item))
            current, dict_values = dict_values, None
            continue
        if current is not None:  # inside a section, a name is a key (known or not)
            parts.append(str(item))
            field = current.model_fields.get(item)
            annotation = field.annotation if field is not None else None
            if typing.get_origin(annotation) is dict:
                current, dict_values = None, submodel(typing.get_args(annotation)[1])
            else:
                current = submodel(annotation) if annotation is not None else None
    return parts, current, field


def _full_key(model: type[BaseModel], loc: tuple, prefix: str) -> str:
    return ".".join([prefix, *_walk(model, loc)[0]]) if prefix else ".".join(_walk(model, loc)[0])


def _describe(  # noqa: PLR0911 (one return per kind of problem)
    model: type[BaseModel], key: str, items: list[dict[str, Any]]
) -> str:
    first = items[0]
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        _, section, _ = _walk(model, first["loc"][:-1])
        name = str(first["loc"][-1])
        valid = list(section.model_fields) if section is not None else []
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        stem = key.rsplit(".", 1)[0] if "." in key else ""
        if close:
            return f"{key}: unknown parameter; did you mean {stem + '.' if stem else ''}{close[0]}?"
        return f"{key}: unknown parameter; valid keys here: {', '.join(valid)}"
    if len(items) > 1:  # every member of a union failed
        _, _, field = _walk(model, first["loc"])
        return f"{key}: {value!r} is not {describe_type(field.annotation if field else None)}"
    kind, context = first["type"], first.get("ctx") or {}
    if kind in _NOT_A:
        return f"{key}: {value!r} is not {_NOT_A[kind]}"
    if kind == "literal_error":
        return f"{key}: {value!r} is not one of {context.get('expected', '')}"
    if kind in _BOUNDS:
        bound = next(iter(context.values()), "")
        return f"{key}: {value!r} must be {_BOUNDS[kind]} {bound}"
    if kind in ("too_short", "too_long"):
        count = context.get("min_length") if kind == "too_short" else context.get("max_length")
        _, _, field = _walk(model, first["loc"])
        meaning = f" ({field.description})" if field is not None and field.description else ""
        return f"{key}: {value!r} has {context.get('actual_length')} item(s), needs {count}{meaning}"
    if kind == "string_pattern_mismatch":
        return f"{key}: {value!r} does not match {context.get('pattern')}"
    if kind == "missing":
        return f"{key}: required, not set"
    message = first["msg"].removeprefix("Value error, ")
    return f"{key}: {message}" if kind == "value_error" else f"{key}: {value!r}: {message}"
