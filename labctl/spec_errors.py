"""Errors of YAML files read into pydantic models, as lines a person can act on.

Every mistake in a lab.yaml or an exercise.yaml comes back as
`lab.yaml:12: nodes.server.limits.memory: expected a size like 256m or 1g, found '12q'`:
file, line, field path, what was expected, what was found; all mistakes at once, never a
traceback. pydantic does the validation; this module turns its errors into such lines using
the positions recorded by `labctl.yamlsource`. It knows no model of its own: `load_model` reads
any model based on `SpecModel` (labctl.spec's lab.yaml, labctl.exercise's exercise.yaml), and
their validators say what they expected with `expected` and `broken_rule`.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from labctl.errors import SpecError
from labctl.yamlsource import YamlSource, line_of, path_text, read_yaml

__all__ = ["PATTERN_WORDS", "SpecModel", "broken_rule", "did_you_mean", "expected", "explain_patterns",
           "field_of", "load_model", "one_of", "option_problems", "with_rules"]


class SpecModel(BaseModel):
    """The base of every model a YAML file is read into."""

    # Unknown keys are mistakes (a typo must not be ignored silently); strict: YAML already gives
    # typed values, so "30" for a number or 1 for a boolean is an error, not a guess.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


#: What a pattern means, in words (pydantic would only show the regex); filled by the modules whose
#: models have patterns (`explain_patterns`).
PATTERN_WORDS: dict[str, str] = {}


def explain_patterns(words: Mapping[str, str]) -> None:
    """Say in words what these patterns mean: a value that does not match one is `expected <words>`."""
    PATTERN_WORDS.update(words)


# -- errors raised by validators -----------------------------------------------------------------
# Two custom kinds: "expected" is printed as `expected <what>, found <input><hint>`;
# "rule" (a rule across fields) is printed as its message.

def expected(what: str, hint: str = "") -> PydanticCustomError:
    """The error a validator raises for a value that is not what it expected."""
    return PydanticCustomError("expected", "expected {what}{hint}", {"what": what, "hint": hint})


def broken_rule(loc: tuple[Any, ...], value: Any, message: str) -> InitErrorDetails:
    """A rule across fields that the data at `loc` breaks, said as `message` (for `with_rules`)."""
    return {"type": PydanticCustomError("rule", "{message}", {"message": message}), "loc": loc, "input": value}


def with_rules(validate: Callable[[Any], Any], data: Any, broken: list[InitErrorDetails], title: str) -> Any:
    """`validate(data)` (a wrap validator's handler), with the rules across fields that `broken` lists
    reported together with every other mistake: rules are checked on the raw data, so they show up
    even when a field has other mistakes (pydantic would skip an after-validator then)."""
    try:
        valid = validate(data)
    except ValidationError as error:
        if not broken:
            raise
        raise _merge(error, broken, title) from None
    if broken:
        raise ValidationError.from_exception_data(title, broken)
    return valid


def _merge(error: ValidationError, extra: list[InitErrorDetails], title: str) -> ValidationError:
    """One ValidationError with the errors of `error` and `extra` (kind and ctx kept for _describe)."""
    details: list[InitErrorDetails] = [
        {"type": PydanticCustomError(e["type"], "{_msg}", {**e.get("ctx", {}), "_msg": e["msg"]}),
         "loc": e["loc"], "input": e["input"]}
        for e in error.errors(include_url=False)]
    return ValidationError.from_exception_data(title, details + extra)


def field_of(item: Any, field: str) -> Any:
    """A field of raw data (a mapping) or of a model already built (from Python)."""
    return item.get(field) if isinstance(item, dict) else getattr(item, field, None)


def _closest(word: Any, choices: Any) -> str | None:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: Any, choices: Any) -> str:
    """` (did you mean 'x'?)` with the choice closest to `word`, or nothing when none is close."""
    close = _closest(word, choices)
    return f" (did you mean {close!r}?)" if close else ""


def one_of(options: list[str]) -> str:
    """`'a'`, `'a' or 'b'`, `'a', 'b' or 'c'`."""
    quoted = [repr(option) for option in options]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


# -- loading -------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def load_model(path: str | Path, model: type[M], what: str = "lab", context: dict[str, Any] | None = None) -> M:
    """Read YAML from `path` into `model`, or raise SpecError with one `file:line: ...` per problem.

    `context` goes to the validators (pydantic's validation context), e.g. the folder the file is in.
    """
    source = read_yaml(path, what)
    if not isinstance(source.data, dict):
        found = "an empty file" if source.data is None else _found(source.data)
        raise SpecError([f"{source.display}:{source.lines.get((), 1)}: top level: expected a mapping of "
                         f"{what} fields ({', '.join(_field_names(model))}), found {found}"])
    problems = list(source.problems)
    try:
        result = model.model_validate(source.data, context=context)
    except ValidationError as error:
        problems += _describe_all(model, source, error.errors(include_url=False))
    if problems:
        problems.sort(key=lambda problem: problem[0])
        problems = list(dict.fromkeys(problems))  # the same line twice says nothing more
        raise SpecError([f"{source.display}:{line}: {text}" for line, text in problems])
    return result


def option_problems(model: type[BaseModel], error: ValidationError, prefix: str = "--") -> list[str]:
    """pydantic's errors for values given on a command line rather than in a file: `--delay: expected a
    time like 100ms, 1.5s or 500us, found '100'` (each field is an option of that name)."""
    return [f"{prefix + str(item['loc'][0]) if item['loc'] else 'the options'}: {_problem(model, item)}"
            for item in error.errors(include_url=False)]


# -- describing pydantic's errors ------------------------------------------------------------------

#: The errors of one plain union, by the member that reported them: member -> [(loc, error)].
Members = dict[str, list[tuple[tuple[Any, ...], Any]]]


def _describe_all(model: type[BaseModel], source: YamlSource, errors: list[Any]) -> list[tuple[int, str]]:
    """Describe pydantic's errors, one line per mistake.

    pydantic puts union members in `loc`: a discriminated union's tag (`checks.2.http.params.x`), a
    plain union's member type (`status.int`, `status.list[int]`). The shown path leaves them out, and
    the errors of a plain union's members become one line (`_describe_union`).
    """
    described: list[tuple[int, str]] = []
    unions: dict[tuple[Any, ...], Members] = {}
    for error in errors:
        loc, branch = _split_loc(model, error["loc"])
        if branch is None:
            described.append(_describe(model, source, error, loc))
        else:
            at, member = branch
            unions.setdefault(loc[:at], {}).setdefault(member, []).append((loc, error))
    for where, members in unions.items():
        described += _describe_union(model, source, where, members)
    return described


def _describe_union(model: type[BaseModel], source: YamlSource, where: tuple[Any, ...],
                    members: Members) -> list[tuple[int, str]]:
    """The errors of a plain union's members at `where`: when some member got inside the value (the
    value was a list, a mapping), its errors; else one line, `expected A or B, found X`."""
    inside = [items for items in members.values() if all(len(loc) > len(where) for loc, _ in items)]
    if inside:
        return [_describe(model, source, error, loc) for loc, error in min(inside, key=len)]
    return _describe_choice(model, source, where, [error for items in members.values() for _, error in items])


def _describe_choice(model: type[BaseModel], source: YamlSource, where: tuple[Any, ...],
                     errors: list[Any]) -> list[tuple[int, str]]:
    """No member of a plain union took the value: `expected A or B, found X` when every member says
    what it expected, else each member's error."""
    words = [_expected_words(error) for error in errors]
    if None in words:
        return [_describe(model, source, error, where) for error in errors]
    either = " or ".join(dict.fromkeys(word for word in words if word))
    text = f"{path_text(where, source.data) or 'top level'}: expected {either}, found {_found(errors[0]['input'])}"
    return [(line_of(source.lines, where), text)]


# pydantic error kind -> what was expected, in words
_EXPECTED = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping (key: value lines)", "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "finite_number": "a finite number", "list_type": "a list",
    "ip_v4_network": "an IPv4 network like 10.213.0.0/16",
    "greater_than": "a number greater than {gt:g}", "greater_than_equal": "a number of at least {ge:g}",
    "less_than": "a number less than {lt:g}", "less_than_equal": "a number of at most {le:g}",
}


def _expected_words(error: Any) -> str | None:
    """What a type-like error expected, in words (None for other kinds of error)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "expected":
        return ctx["what"]
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return PATTERN_WORDS.get(ctx["pattern"], f"text matching {ctx['pattern']}")
    if kind in _EXPECTED:
        return _EXPECTED[kind].format(**ctx)
    return None


def _describe(model: type[BaseModel], source: YamlSource, error: Any,
              shown: tuple[Any, ...] | None = None) -> tuple[int, str]:
    """(line, `path: expected X, found Y`) for one pydantic error; `shown`: its loc without union members."""
    shown = error["loc"] if shown is None else shown
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the tag's key is the field to show
        shown, text = _union_tag_problem(model, error, shown)
        return line_of(source.lines, shown), f"{path_text(shown, source.data)}: {text}"
    return line_of(source.lines, shown), f"{path_text(shown, source.data) or 'top level'}: {_problem(model, error)}"


def _union_tag_problem(model: type[BaseModel], error: Any, shown: tuple[Any, ...]) -> tuple[tuple[Any, ...], str]:
    """(the tag's path, what is wrong with it) for a discriminated union whose tag is unknown or missing."""
    ctx = error.get("ctx") or {}
    key = ctx.get("discriminator", "").strip("'")
    tags = _union_tags(_annotation_at(model, error["loc"]), key)
    if error["type"] == "union_tag_not_found":
        return (*shown, key), "required, but missing" + (f": expected one of {one_of(tags)}" if tags else "")
    tag = error["input"].get(key, ctx.get("tag")) if isinstance(error["input"], dict) else ctx.get("tag")
    tags = tags or re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
    return (*shown, key), f"expected one of {one_of(tags)}, found {_found(tag)}{did_you_mean(tag, tags)}"


def _problem(model: type[BaseModel], error: Any) -> str:
    """What is wrong, in words: `expected X, found Y`, or a rule's message, or what pydantic said."""
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
    found = _found(error["input"])
    if kind == "rule":
        return ctx["message"]
    if kind == "missing":
        return f"required, but missing{_describe_field(model, loc)}"
    if kind == "extra_forbidden":
        return _unknown_field(model, loc)
    if kind == "string_type" and loc and loc[-1] == "[key]":
        return f"expected a key that is text, found {found}"
    words = _expected_words(error)
    if words is not None:
        return f"expected {words}, found {found}{_hint(error)}"
    message = ctx.get("_msg", error["msg"])
    return f"{message[:1].lower()}{message[1:]}, found {found}"


def _hint(error: Any) -> str:
    """What follows `found X`: a validator's hint, or the closest of a literal's options."""
    ctx = error.get("ctx") or {}
    if error["type"] == "expected":
        return ctx.get("hint", "")
    if error["type"] == "literal_error":
        return did_you_mean(error["input"], re.findall(r"'([^']*)'", ctx.get("expected", "")))
    return ""


def _unknown_field(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    allowed = _field_names(_model_at(model, loc[:-1]))
    close = _closest(loc[-1], allowed)
    return f"unknown field, did you mean {close!r}?" if close else f"unknown field, expected one of {', '.join(allowed)}"


def _found(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(str(value)) if isinstance(value, IPv4Network) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unwrap(annotation: Any) -> Any:
    """`Annotated[X, ...]` and `X | None` -> X."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class found at `loc` inside `model` (through fields, dict values, list items, unions)."""
    current = _annotation_at(model, loc)
    return current if _is_model(current) else None


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The type found at pydantic's `loc` inside `model` (None when it cannot be followed)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        current = _union_member(current, part) if _is_union(current) else _step(current, part)
        if current is None:
            return None
    return _unwrap(current)


def _step(current: Any, part: Any) -> Any:
    """The type one level down: a model's field, a dict's value, a list's item."""
    if _is_model(current):
        field = current.model_fields.get(part) if isinstance(part, str) else None
        return None if field is None else field.annotation
    if get_origin(current) is dict:
        return get_args(current)[1]
    if get_origin(current) is list:
        return get_args(current)[0]
    return None


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _union_member(union: Any, part: Any) -> Any:
    """The member of `union` that pydantic names `part` in a loc: by tag or by class name."""
    members = [_unwrap(member) for member in get_args(union)]
    models = [member for member in members if _is_model(member)]
    for member in models:
        if part in _literal_values(member):
            return member
    return next((member for member in models if member.__name__ == part), None)


def _literal_values(model: type[BaseModel]) -> list[Any]:
    """The values of the Literal fields of `model` (a discriminated union's tags are among them)."""
    return [value for field in model.model_fields.values()
            if get_origin(_unwrap(field.annotation)) is Literal for value in get_args(_unwrap(field.annotation))]


def _union_field(union: Any, part: Any) -> Any:
    """The type of the field `part` in the first model member of `union` that has it (else None)."""
    for member in get_args(union):
        member = _unwrap(member)
        if _is_model(member) and part in member.model_fields:
            return member.model_fields[part].annotation
    return None


def _union_tags(annotation: Any, key: str) -> list[Any]:
    """The tags of a union of models discriminated by the field `key`."""
    tags: list[Any] = []
    for member in get_args(annotation) if _is_union(annotation) else ():
        member = _unwrap(member)
        field = member.model_fields.get(key) if _is_model(member) else None
        if field is not None and get_origin(_unwrap(field.annotation)) is Literal:
            tags += get_args(_unwrap(field.annotation))
    return tags


def _split_loc(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[int, str] | None]:
    """`loc` without the union members pydantic puts in it, and where a plain (not discriminated)
    union's member was named: (its index in the returned loc, the member's name), else None."""
    shown: list[Any] = []
    branch: tuple[int, str] | None = None
    current: Any = model
    for part in loc:
        current = _unwrap(current) if current is not None else None
        if part != "[key]" and current is not None and _is_union(current) and isinstance(part, str):
            member = _union_member(current, part)
            if member is not None or not _union_field(current, part):  # a member's name, not a field's
                if member is None or part not in _literal_values(member):
                    branch = (len(shown), part)
                current = member
                continue
            current = _union_field(current, part)  # a loc made by a validator, without the member
        shown.append(part)
        current = _step(current, part) if current is not None else None
    return tuple(shown), branch


def _is_model(annotation: Any) -> bool:
    # get_origin first: on Python 3.10, isinstance(dict[str, int], type) is True
    return get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _describe_field(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """What a missing field holds: its choices, else its description."""
    parent = _model_at(model, loc[:-1])
    field = parent.model_fields.get(loc[-1]) if parent and loc and isinstance(loc[-1], str) else None
    if field is None:
        return ""
    annotation = _unwrap(field.annotation)
    if get_origin(annotation) is Literal:
        return f": expected one of {one_of(list(get_args(annotation)))}"
    if not field.description:
        return ""
    description = field.description.rstrip(".")
    return f" ({description[:1].lower()}{description[1:]})"


#: The class of a SkipJsonSchema[...] field's marker (a generic class: isinstance wants it bare).
_SKIPPED: type = SkipJsonSchema


def _field_names(model: type[BaseModel] | None) -> list[str]:
    """The keys a person may write for `model` (hidden fields such as NodeSpec.name left out)."""
    if model is None:
        return []
    return [name for name, field in model.model_fields.items()
            if not any(isinstance(meta, _SKIPPED) for meta in field.metadata)]
