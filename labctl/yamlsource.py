"""Read a YAML file and remember where every value came from.

`yaml.safe_load` gives data without positions and silently keeps the last of two equal keys.
A person fixing lab.yaml needs `file:line` for every mistake, so this module composes the
YAML node tree itself, records the line of each mapping key and sequence item by its path
(`("nodes", "server", "limits", "memory") -> 12`), reports duplicate keys, and only then
builds the plain Python data. Nothing here knows about labs: spec_errors.py maps validation errors
to lines with `line_of`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from labctl.errors import SpecError

YamlPath = tuple[Any, ...]  # mapping keys (usually str) and sequence indexes, from the top

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: The most values (scalars, lists, mappings, aliases counted where used) one file may hold.
MAX_VALUES = 20_000
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers, so `user: 1000:59` stays the text it looks like
    instead of silently becoming 60059. Otherwise PyYAML's own int and float patterns."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT_TAG, re.compile(r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""", re.X), list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT_TAG, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


@dataclass
class YamlSource:
    """The data of one YAML file, the line of each path in it, and problems found while reading."""

    display: str  # the path as the user gave it, used at the start of every message
    data: Any  # None for an empty file (or one with only comments)
    lines: dict[YamlPath, int] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, text) such as duplicate keys


def read_yaml(path: str | Path, what: str = "lab") -> YamlSource:
    """Parse `path`; raise SpecError when there is nothing usable (missing file, YAML syntax error).

    Problems that still leave usable data (duplicate keys) are returned in `problems` so the caller
    can report them together with the validation errors.
    """
    display = str(path)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{display}: no such file: the {what} file was looked for at {path.resolve()}"]) from None
    except UnicodeDecodeError as error:
        raise SpecError([f"{display}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start}); save the {what} file as UTF-8"]) from None
    except OSError as error:
        raise SpecError([f"{display}: cannot read the {what} file: {error.strerror or error}"]) from None

    loader = None
    try:
        loader = _Loader(text)  # reads the whole text first: a character YAML forbids is refused here
        root = loader.get_single_node()
        source = YamlSource(display, None)
        if root is not None:
            source.lines[()] = root.start_mark.line + 1
            _walk(loader, root, (), source, set(), [MAX_VALUES])
            source.data = loader.construct_document(root)
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        raise SpecError([f"{display}:{line}: character {_character(error.character)} is not allowed in a YAML file "
                         f"(column {column}); remove it"]) from None
    except yaml.MarkedYAMLError as error:
        raise SpecError([f"{display}:{_syntax_error(error)}"]) from None
    except yaml.YAMLError as error:  # no position known (rare)
        raise SpecError([f"{display}:1: YAML error: {error}"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return source


def _character(code: int | str) -> str:
    code = ord(code) if isinstance(code, str) else code
    return f"U+{code:04X}" + (" (NUL)" if code == 0 else "")


def line_of(lines: dict[YamlPath, int], loc: tuple[Any, ...]) -> int:
    """The line of the deepest element of `loc` that exists in the file (1 when nothing matches)."""
    loc = tuple(part for part in loc if part != "[key]")
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def path_text(loc: tuple[Any, ...], data: Any = None) -> str:
    """`nodes.client.capabilities[1]`: mapping keys joined by dots, sequence indexes in brackets.

    With the file's `data`, an int is an index only where the data holds a list there.
    """
    text = ""
    for part in loc:
        if part == "[key]":
            continue
        is_index = isinstance(data, list) if data is not None else isinstance(part, int)
        text += f"[{part}]" if is_index else f".{part}"
        try:
            data = data[part] if data is not None else None
        except (LookupError, TypeError):
            data = None
    return text.lstrip(".")


def _walk(loader: yaml.SafeLoader, node: Node, path: YamlPath, source: YamlSource, active: set[int],
          budget: list[int]) -> None:
    """Record lines below `node` and report duplicate keys (merge keys `<<` are left to PyYAML).

    Aliases are walked where they are used, as validation will see them: `budget` (one counter for
    the whole file) stops a file whose aliases expand to more than MAX_VALUES values (a "billion
    laughs" file) at once, instead of after minutes of expansion.
    """
    if id(node) in active:  # a recursive alias (&a [*a]): the constructor reports it
        return
    budget[0] -= 1
    if budget[0] < 0:
        # An alias's node keeps the line where it was defined: name the top-level key being expanded.
        line = source.lines.get(path[:1], node.start_mark.line + 1)
        where = f"{path_text(path[:1])}: " if path else ""
        raise SpecError([f"{source.display}:{line}: {where}the file expands to more than {MAX_VALUES} "
                         "values (each use of an alias *name repeats its whole value); a labctl file needs far "
                         "fewer: write the values out, or use fewer nested aliases"])
    active.add(id(node))
    if isinstance(node, MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue  # merged mappings keep the parent's line; complex keys fail in the constructor
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                source.problems.append((line, f"{path_text((*path, key))}: duplicate key {key!r} "
                                              f"(first on line {first_line[key]}); keep only one"))
            else:
                first_line[key] = line
            source.lines[path + (key,)] = line
            _walk(loader, value_node, path + (key,), source, active, budget)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            source.lines[path + (index,)] = item.start_mark.line + 1
            _walk(loader, item, path + (index,), source, active, budget)
    active.discard(id(node))


def _syntax_error(error: yaml.MarkedYAMLError) -> str:
    """`7: YAML syntax error: <problem> (column 3)`, with where the construct began when that helps."""
    mark = error.problem_mark or error.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    context, problem = error.context or "", error.problem or ""
    if problem.startswith("but "):  # PyYAML splits "expected X" (context) / "but found Y" (problem)
        problem, context = f"{context}, {problem}", ""
    text = f"{line}: YAML syntax error: {problem or context} (column {column})"
    if problem and context.startswith("while ") and error.context_mark and error.context_mark.line + 1 != line:
        text += f", {context} that starts on line {error.context_mark.line + 1}"
    if "<block end>" in problem:
        text += "; check the indentation"
    if "\\t" in problem:
        text += "; indent with spaces, not tabs"
    return text
