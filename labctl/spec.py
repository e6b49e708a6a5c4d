"""Typed models of lab.yaml, loaded with errors a person can act on.

A lab is described in YAML by students and instructors, so every mistake must come back as
`lab.yaml:12: nodes.server.limits.memory: expected a size like 256m or 1g, found '12q'`:
file, line, field path, what was expected, what was found; all mistakes at once, never a
traceback. pydantic does the validation; this module turns its errors into such lines using
the positions recorded by `labctl.yamlsource`. `load_model` is generic so exercise.yaml can
reuse it with its own model.
"""

from __future__ import annotations

import difflib
import re
import types
from ipaddress import IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from labctl.errors import SpecError
from labctl.yamlsource import YamlSource, line_of, path_text, read_yaml

__all__ = ["CAPABILITIES", "LabSpec", "Limits", "NetworkSpec", "NodeSpec", "Sysctls", "Timeouts",
           "lab_json_schema", "load_lab", "load_model", "sysctl_values"]

Role = Literal["server", "client", "injector", "observer"]
#: An image built from images/<name>/ (Project checks that the folder exists).
IMAGE = r"^[a-z0-9][a-z0-9-]{0,40}$"
ROLES: tuple[str, ...] = get_args(Role)

# The capabilities of linux/capability.h (0..40), the names Docker's cap_add takes.
CAPABILITIES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

# These patterns are also the JSON Schema's (ECMAScript: `$` is the very end). Python's `$` also matches
# before a final newline, so Python code matches them with fullmatch(), never match().
LAB_NAME = r"^[a-z0-9][a-z0-9-]{0,30}$"
NODE_NAME = r"^[a-z][a-z0-9-]{0,15}$"
USER = r"^[0-9]+(:[0-9]+)?$"  # numeric: the images have no user names to resolve
# The sysctls Docker sets per container: those of the container's own network namespace.
SYSCTL = r"^net\.(ipv4|ipv6|core|unix)\.[a-z0-9_.]+$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
_SYSCTL = re.compile(SYSCTL)
_SIZE = re.compile(r"^([0-9]+)([bkmg]?)$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
MIN_MEMORY = 6 * 2**20  # Docker refuses a memory limit under 6 MB

# What a pattern means, in words (pydantic would only show the regex).
_PATTERN_WORDS = {
    LAB_NAME: "a lab name: a lowercase letter or digit, then up to 30 lowercase letters, digits or '-'",
    NODE_NAME: "a node name: a lowercase letter, then up to 15 lowercase letters, digits or '-'",
    USER: "a numeric user like 1000:1000 (uid:gid) or 1000",
    SYSCTL: "a network sysctl like net.ipv4.tcp_syncookies (only those are per container)",
    ENV_NAME: "an environment variable name like WORKERS (upper case, digits, '_')",
    IMAGE: "an image name: a folder of images/, like server or tools",
}


# -- errors raised by validators -----------------------------------------------------------------
# Two custom kinds: "expected" is printed as `expected <what>, found <input><hint>`;
# "rule" (a rule across fields) is printed as its message.

def _expected(what: str, hint: str = "") -> PydanticCustomError:
    return PydanticCustomError("expected", "expected {what}{hint}", {"what": what, "hint": hint})


def _rule(message: str) -> PydanticCustomError:
    return PydanticCustomError("rule", "{message}", {"message": message})


def _closest(word: Any, choices: Any) -> str | None:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(word: Any, choices: Any) -> str:
    close = _closest(word, choices)
    return f" (did you mean {close!r}?)" if close else ""


# -- field types ---------------------------------------------------------------------------------

def _capability(name: str) -> str:
    if name in CAPABILITIES:
        return name
    guess = name.upper().removeprefix("CAP_")
    hint = f" (did you mean {guess!r}?)" if guess in CAPABILITIES else _did_you_mean(guess, CAPABILITIES)
    raise _expected("a Linux capability name in upper case without CAP_, like NET_RAW", hint)


def _size_bytes(size: str) -> int:
    number, unit = _SIZE.fullmatch(size).groups()  # type: ignore[union-attr]  # validated before
    return int(number) * _UNITS[unit.lower()]


def _memory(value: Any) -> Any:
    """Accept `256m`, `1G`, `512k` or a byte count (YAML int); keep it as a lower-case string."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _SIZE.fullmatch(value):
        raise _expected("a size like 256m or 1g")
    if _size_bytes(value) < MIN_MEMORY:
        raise _expected("a size of at least 6m (the engine refuses less)")
    return value.lower()


def _user(value: Any) -> Any:
    """`user: 1000` is a YAML int; take it as the string Docker wants."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _network(value: Any) -> Any:
    if isinstance(value, IPv4Network):
        return value
    hint = ""
    if isinstance(value, str):
        try:
            network = IPv4Network(value)
        except ValueError:
            try:
                hint = f" (host bits set: did you mean {IPv4Network(value, strict=False)}?)"
            except ValueError:
                pass
        else:
            if network.prefixlen <= 29:
                return network
            hint = " (too small to hold a lab)"
    raise _expected("an IPv4 network like 10.213.0.0/16", hint)


def _sysctl_name(name: str) -> str:
    if _SYSCTL.fullmatch(name):
        return name
    hint = f" (did you mean {name.lower()!r}?)" if _SYSCTL.fullmatch(name.lower()) else ""
    raise _expected(_PATTERN_WORDS[SYSCTL], hint)


def _no_default(schema: dict[str, Any]) -> None:
    """Drop a default from the JSON Schema where the real default depends on the node's role."""
    schema.pop("default", None)


LabName = Annotated[str, StringConstraints(pattern=LAB_NAME)]
NodeName = Annotated[str, StringConstraints(pattern=NODE_NAME)]
Capability = Annotated[str, AfterValidator(_capability),
                       WithJsonSchema({"type": "string", "enum": list(CAPABILITIES)})]
MemorySize = Annotated[str, BeforeValidator(_memory),
                       WithJsonSchema({"anyOf": [{"type": "string", "pattern": "^[0-9]+[bkmgBKMG]?$"},
                                                 {"type": "integer", "minimum": MIN_MEMORY}]})]
UserId = Annotated[str, BeforeValidator(_user), StringConstraints(pattern=USER),
                   WithJsonSchema({"anyOf": [{"type": "string", "pattern": USER},
                                             {"type": "integer", "minimum": 0}]})]
Pool = Annotated[IPv4Network, BeforeValidator(_network)]
Port = Annotated[int, Field(ge=1, le=65535)]
SysctlName = Annotated[str, AfterValidator(_sysctl_name)]
#: Kernel settings of a container's network namespace, as lab.yaml and exercise.yaml write them
#: (`net.ipv4.tcp_syncookies: 0`); the engine takes the values as text (`sysctl_values`).
Sysctls = Annotated[dict[SysctlName, Union[int, str]],
                    WithJsonSchema({"type": "object", "propertyNames": {"pattern": SYSCTL},
                                    "additionalProperties": {"anyOf": [{"type": "integer"}, {"type": "string"}]}})]


def sysctl_values(sysctls: dict[str, int | str]) -> dict[str, str]:
    """Sysctls as the engine takes them: every value as text."""
    return {name: str(value) for name, value in sysctls.items()}


# -- models --------------------------------------------------------------------------------------

class _Spec(BaseModel):
    # Unknown keys are mistakes (a typo must not be ignored silently); strict: YAML already gives
    # typed values, so "30" for a number or 1 for a boolean is an error, not a guess.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Limits(_Spec):
    """Resource limits of one node's container, so no process in the lab can starve the host."""

    cpus: float = Field(1.0, gt=0.0, le=64.0, description="CPUs the container may use (0.5 is half a CPU).")
    memory: MemorySize = Field("256m", description="Memory limit: a byte count, or a number with k, m or g "
                                                   "(512k, 256m, 1g); at least 6m.")
    pids: int = Field(256, ge=8, description="Most processes and threads at once (a fork bomb stops here).")
    nofile: int = Field(4096, ge=64, description="Most open file descriptors per process (RLIMIT_NOFILE); "
                                                 "the engine's own limit caps it.")
    disk: MemorySize = Field("64m", description="Size of each folder the container may write (/tmp, /var/tmp, "
                                                "/run, /dev/shm, and where its files go: /submission and "
                                                "/srv/www on the server); the rest is read-only. They live in "
                                                "memory and count in `memory`: nothing reaches the host's disk.")

    @property
    def memory_bytes(self) -> int:
        return _size_bytes(self.memory)

    @property
    def disk_bytes(self) -> int:
        return _size_bytes(self.disk)


class NetworkSpec(_Spec):
    """The lab's private network: each lab takes one subnet of the pool, so labs never collide."""

    # A string default, validated, so the JSON Schema shows it the same with every pydantic version.
    pool: Pool = Field("10.213.0.0/16", validate_default=True,  # type: ignore[assignment]
                       description="Addresses all labs on this host share.")
    prefix: int = Field(24, json_schema_extra={"maximum": 29},
                        description="Size of one lab's subnet (a /24 has 254 addresses); at least the "
                                    "pool's prefix, at most 29.")
    internal: bool = Field(True, description="true: the lab has no route to the internet.")

    @field_validator("prefix")
    @classmethod
    def _fits_pool(cls, prefix: int, info: ValidationInfo) -> int:
        pool = info.data.get("pool")
        if pool is not None and not pool.prefixlen <= prefix <= 29:
            raise _expected(f"a prefix length from {pool.prefixlen} to 29 (a lab's subnet must fit inside "
                            f"the pool {pool} and hold a few addresses)")
        return prefix


class Timeouts(_Spec):
    """Time budgets, in seconds."""

    up: float = Field(30.0, gt=0.0, description="Seconds for the lab to start and the server to listen.")
    exec: float = Field(120.0, gt=0.0, description="Seconds a command run in a node may take by default.")


class NodeSpec(_Spec):
    """One container of the lab. Its name is its key under `nodes`."""

    name: SkipJsonSchema[str] = ""  # filled from the key under nodes by LabSpec
    role: Role = Field(description="server: runs the student's code; client and injector: run checks "
                                   "(injector crafts raw packets); observer: reads the server's /proc.")
    image: Annotated[str, StringConstraints(pattern=IMAGE)] = Field("tools", json_schema_extra=_no_default,
                         description="Image built from images/<name>/. Default: server for the server, "
                                     "tools for the others.")
    capabilities: list[Capability] = Field(default_factory=list,
                                           description="Linux capabilities added to the container, without "
                                                       "CAP_ (NET_RAW, NET_ADMIN, SYS_PTRACE...). The server "
                                                       "gets none: student code runs with all dropped.")
    user: UserId | None = Field(None, json_schema_extra=_no_default,
                                description="uid:gid the container runs as. Default: 1000:1000 for the "
                                            "server, root (null) for the others.")
    port: Port | None = Field(None, json_schema_extra=_no_default,
                              description="Server only: the port the student's server listens on "
                                          "(default 8080, also given as $PORT).")
    watches: NodeName | None = Field(None, validate_default=True,
                                     description="Observer only (required there): the server node whose "
                                                 "PID namespace it shares to read /proc.")
    limits: Limits = Field(default_factory=Limits)
    sysctls: Sysctls = Field(default_factory=dict,
                             description="Kernel settings of this container's own network namespace, like "
                                         "net.ipv4.tcp_syncookies: 0 (only net.ipv4, net.ipv6, net.core and "
                                         "net.unix ones: the others are the whole host's).")

    @model_validator(mode="before")
    @classmethod
    def _server_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("role") == "server":
            return {"image": "server", "user": "1000:1000", "port": 8080, **data}
        return data

    @field_validator("capabilities")
    @classmethod
    def _server_has_none(cls, capabilities: list[str], info: ValidationInfo) -> list[str]:
        if capabilities and info.data.get("role") == "server":
            hint = (" (the observer holds SYS_PTRACE to read the server's /proc)"
                    if "SYS_PTRACE" in capabilities else "")
            raise _expected("no capabilities (student code runs in the server with all capabilities "
                            "dropped)", hint)
        return capabilities

    @field_validator("port")
    @classmethod
    def _port_on_server(cls, port: int | None, info: ValidationInfo) -> int | None:
        if port is not None and info.data.get("role") not in (None, "server"):
            raise _expected("no port here (only the server node has a port)")
        return port

    @field_validator("watches")
    @classmethod
    def _watches_on_observer(cls, watches: str | None, info: ValidationInfo) -> str | None:
        role = info.data.get("role")
        if role == "observer" and watches is None:
            raise _expected("the name of the server node this observer watches (like watches: server)")
        if role not in (None, "observer") and watches is not None:
            raise _expected("no watches here (only an observer watches a server)")
        return watches


class LabSpec(_Spec):
    """A labctl lab: its containers (nodes), their network and time budgets."""

    model_config = ConfigDict(title="labctl lab")

    name: LabName = Field("labctl", description="Prefix of everything the lab creates (containers, network).")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    nodes: dict[NodeName, NodeSpec] = Field(
        description="The containers, by name: exactly one server, at most one observer.",
        json_schema_extra={"additionalProperties": False, "minProperties": 1})

    @field_validator("nodes", mode="wrap")
    @classmethod
    def _check_nodes(cls, nodes: Any, handler: Any) -> dict[str, NodeSpec]:
        """Validate the nodes and the rules across them, reporting both kinds of mistake together."""
        problems = _node_rules(nodes)
        if isinstance(nodes, dict):  # each node learns its name from its key
            nodes = {key: {**node, "name": key} if isinstance(node, dict) and "name" not in node
                     and isinstance(key, str) else node
                     for key, node in nodes.items()}
        try:
            valid = handler(nodes)
        except ValidationError as error:
            if not problems:
                raise
            raise _merge(error, problems, cls.__name__) from None
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return {key: node if node.name == key else node.model_copy(update={"name": key})
                for key, node in valid.items()}

    @property
    def server(self) -> NodeSpec:
        """The one server node (validation guarantees there is exactly one)."""
        return self.nodes_by_role("server")[0]

    def nodes_by_role(self, role: Role) -> list[NodeSpec]:
        return [node for node in self.nodes.values() if node.role == role]


def _get(node: Any, field: str) -> Any:
    return node.get(field) if isinstance(node, dict) else getattr(node, field, None)


def _node_rules(nodes: Any) -> list[InitErrorDetails]:
    """The rules across nodes, checked on the raw mapping so they show up even when a node has
    other mistakes (pydantic would skip an after-validator then)."""
    if not isinstance(nodes, dict):
        return []
    problems: list[InitErrorDetails] = []

    def add(loc: tuple[Any, ...], value: Any, message: str) -> None:
        problems.append({"type": _rule(message), "loc": loc, "input": value})

    roles = {key: _get(node, "role") for key, node in nodes.items()}
    for key, node in nodes.items():
        if isinstance(node, dict) and "name" in node:
            add((key, "name"), node["name"],
                f"unknown field: a node is named by its key under nodes (here {key!r})")
    servers = [key for key, role in roles.items() if role == "server"]
    observers = [key for key, role in roles.items() if role == "observer"]
    if not servers and all(role in ROLES for role in roles.values()):
        add((), nodes, "expected exactly one node with role: server, found none")
    for key in servers[1:]:
        add((key, "role"), "server", f"expected exactly one node with role: server, found a second one "
                                     f"(nodes.{servers[0]} is the server)")
    for key in observers[1:]:
        add((key, "role"), "observer", f"expected at most one node with role: observer, found a second one "
                                       f"(nodes.{observers[0]} is the observer)")
    if len(servers) == 1:
        for key in observers:
            watches = _get(nodes[key], "watches")
            if isinstance(watches, str) and watches != servers[0]:
                why = (f"nodes.{watches} has role {roles[watches]}" if watches in nodes
                       else "no node has that name")
                add((key, "watches"), watches,
                    f"expected the name of the server node ({servers[0]!r}), found {watches!r} ({why})")
    return problems


def _merge(error: ValidationError, extra: list[InitErrorDetails], title: str) -> ValidationError:
    """One ValidationError with the errors of `error` and `extra` (kind and ctx kept for _describe)."""
    details: list[InitErrorDetails] = [
        {"type": PydanticCustomError(e["type"], "{_msg}", {**e.get("ctx", {}), "_msg": e["msg"]}),
         "loc": e["loc"], "input": e["input"]}
        for e in error.errors(include_url=False)]
    return ValidationError.from_exception_data(title, details + extra)


def lab_json_schema() -> dict[str, Any]:
    """The JSON Schema of lab.yaml, for editors (completion, checking) and `labctl schema`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **LabSpec.model_json_schema()}


# -- loading -------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def load_lab(path: str | Path) -> LabSpec:
    """Read and validate a lab.yaml; raise SpecError listing every mistake."""
    return load_model(path, LabSpec, "lab")


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


def _describe_all(model: type[BaseModel], source: YamlSource, errors: list[Any]) -> list[tuple[int, str]]:
    """Describe pydantic's errors, one line per mistake.

    pydantic puts union members in `loc`: a discriminated union's tag (`checks.2.http.params.x`), a
    plain union's member type (`status.int`, `status.list[int]`). The shown path leaves them out, and
    the errors of a plain union's members become one line: when some member got inside the value
    (the value was a list, a mapping), its errors; else `expected A or B, found X`.
    """
    described: list[tuple[int, str]] = []
    unions: dict[tuple[Any, ...], dict[str, list[tuple[tuple[Any, ...], Any]]]] = {}
    for error in errors:
        loc, branch = _split_loc(model, error["loc"])
        if branch is None:
            described.append(_describe(model, source, error, loc))
        else:
            at, member = branch
            unions.setdefault(loc[:at], {}).setdefault(member, []).append((loc, error))
    for where, members in unions.items():
        inside = [items for items in members.values() if all(len(loc) > len(where) for loc, _ in items)]
        if inside:
            described += [_describe(model, source, error, loc) for loc, error in min(inside, key=len)]
            continue
        errors_here = [error for items in members.values() for _, error in items]
        words = [_expected_words(error) for error in errors_here]
        if None in words:
            described += [_describe(model, source, error, where) for error in errors_here]
        else:
            expected = " or ".join(dict.fromkeys(word for word in words if word))
            text = f"{path_text(where, source.data) or 'top level'}: expected {expected}, found " \
                   f"{_found(errors_here[0]['input'])}"
            described.append((line_of(source.lines, where), text))
    return described


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
        return _PATTERN_WORDS.get(ctx["pattern"], f"text matching {ctx['pattern']}")
    if kind in _EXPECTED:
        return _EXPECTED[kind].format(**ctx)
    return None


def _describe(model: type[BaseModel], source: YamlSource, error: Any,
              shown: tuple[Any, ...] | None = None) -> tuple[int, str]:
    """(line, `path: expected X, found Y`) for one pydantic error; `shown`: its loc without union members."""
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
    shown = loc if shown is None else shown
    found = _found(error["input"])
    if kind in ("union_tag_invalid", "union_tag_not_found"):  # the tag's key is the field to show
        key = ctx.get("discriminator", "").strip("'")
        tags = _union_tags(_annotation_at(model, loc), key)
        shown = (*shown, key)
        if kind == "union_tag_invalid":
            tag = error["input"].get(key, ctx.get("tag")) if isinstance(error["input"], dict) else ctx.get("tag")
            tags = tags or re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
            text = f"expected one of {_one_of(tags)}, found {_found(tag)}{_did_you_mean(tag, tags)}"
        else:
            text = "required, but missing" + (f": expected one of {_one_of(tags)}" if tags else "")
        return line_of(source.lines, shown), f"{path_text(shown, source.data)}: {text}"
    if kind == "rule":
        text = ctx["message"]
    elif kind == "expected":
        text = f"expected {ctx['what']}, found {found}{ctx.get('hint', '')}"
    elif kind == "missing":
        text = f"required, but missing{_describe_field(model, loc)}"
    elif kind == "extra_forbidden":
        allowed = _field_names(_model_at(model, loc[:-1]))
        close = _closest(loc[-1], allowed)
        text = (f"unknown field, did you mean {close!r}?" if close
                else f"unknown field, expected one of {', '.join(allowed)}")
    elif kind == "literal_error":
        options = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = _did_you_mean(error["input"], options)
        text = f"expected one of {ctx.get('expected')}, found {found}{hint}"
    elif kind == "string_type" and loc and loc[-1] == "[key]":
        text = f"expected a key that is text, found {found}"
    elif kind == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(ctx["pattern"], f"text matching {ctx['pattern']}")
        text = f"expected {words}, found {found}"
    elif kind in _EXPECTED:
        text = f"expected {_EXPECTED[kind].format(**ctx)}, found {found}"
    else:
        message = ctx.get("_msg", error["msg"])
        text = f"{message[:1].lower()}{message[1:]}, found {found}"
    return line_of(source.lines, shown), f"{path_text(shown, source.data) or 'top level'}: {text}"


def _found(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(str(value)) if isinstance(value, IPv4Network) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _one_of(options: list[str]) -> str:
    quoted = [repr(option) for option in options]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


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
        return f": expected one of {_one_of(list(get_args(annotation)))}"
    if not field.description:
        return ""
    description = field.description.rstrip(".")
    return f" ({description[:1].lower()}{description[1:]})"


def _field_names(model: type[BaseModel] | None) -> list[str]:
    """The keys a person may write for `model` (hidden fields such as NodeSpec.name left out)."""
    if model is None:
        return []
    return [name for name, field in model.model_fields.items()
            if not any(isinstance(meta, SkipJsonSchema) for meta in field.metadata)]
