"""Typed models of lab.yaml, loaded with errors a person can act on.

A lab is described in YAML by students and instructors, so every mistake must come back as
`lab.yaml:12: nodes.server.limits.memory: expected a size like 256m or 1g, found '12q'`:
file, line, field path, what was expected, what was found; all mistakes at once, never a
traceback. pydantic does the validation; `labctl.spec_errors` turns its errors into such lines
(and reads exercise.yaml the same way).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from ipaddress import IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails

from labctl.impairment import CAPABILITY, IMPAIRED_ROLES, Impairment
from labctl.spec_errors import (
    SpecModel,
    broken_rule,
    did_you_mean,
    expected,
    explain_patterns,
    field_of,
    load_model,
    with_rules,
)

__all__ = ["CAPABILITIES", "DEFAULT_PORT", "LabSpec", "Limits", "NetworkSpec", "NodeSpec", "Sysctls",
           "Timeouts", "lab_json_schema", "load_lab", "sysctl_values"]

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
#: The port a student's server listens on when lab.yaml and the exercise say nothing (also in $PORT).
DEFAULT_PORT = 8080

# What a pattern means, in words (pydantic would only show the regex).
_PATTERN_WORDS = {
    LAB_NAME: "a lab name: a lowercase letter or digit, then up to 30 lowercase letters, digits or '-'",
    NODE_NAME: "a node name: a lowercase letter, then up to 15 lowercase letters, digits or '-'",
    USER: "a numeric user like 1000:1000 (uid:gid) or 1000",
    SYSCTL: "a network sysctl like net.ipv4.tcp_syncookies (only those are per container)",
    ENV_NAME: "an environment variable name like WORKERS (upper case, digits, '_')",
    IMAGE: "an image name: a folder of images/, like server or tools",
}
explain_patterns(_PATTERN_WORDS)


# -- field types ---------------------------------------------------------------------------------

def _capability(name: str) -> str:
    if name in CAPABILITIES:
        return name
    guess = name.upper().removeprefix("CAP_")
    hint = f" (did you mean {guess!r}?)" if guess in CAPABILITIES else did_you_mean(guess, CAPABILITIES)
    raise expected("a Linux capability name in upper case without CAP_, like NET_RAW", hint)


def _size_bytes(size: str) -> int:
    number, unit = _SIZE.fullmatch(size).groups()  # type: ignore[union-attr]  # validated before
    return int(number) * _UNITS[unit.lower()]


def _memory(value: Any) -> Any:
    """Accept `256m`, `1G`, `512k` or a byte count (YAML int); keep it as a lower-case string."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _SIZE.fullmatch(value):
        raise expected("a size like 256m or 1g")
    if _size_bytes(value) < MIN_MEMORY:
        raise expected("a size of at least 6m (the engine refuses less)")
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
    raise expected("an IPv4 network like 10.213.0.0/16", hint)


def _sysctl_name(name: str) -> str:
    if _SYSCTL.fullmatch(name):
        return name
    hint = f" (did you mean {name.lower()!r}?)" if _SYSCTL.fullmatch(name.lower()) else ""
    raise expected(_PATTERN_WORDS[SYSCTL], hint)


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
Sysctls = Annotated[dict[SysctlName, int | str],
                    WithJsonSchema({"type": "object", "propertyNames": {"pattern": SYSCTL},
                                    "additionalProperties": {"anyOf": [{"type": "integer"}, {"type": "string"}]}})]


def sysctl_values(sysctls: Mapping[str, int | str]) -> dict[str, str]:
    """Sysctls as the engine takes them: every value as text."""
    return {name: str(value) for name, value in sysctls.items()}


# -- models --------------------------------------------------------------------------------------

class Limits(SpecModel):
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


class NetworkSpec(SpecModel):
    """The lab's private network: each lab takes one subnet of the pool, so labs never collide."""

    # A string default, validated, so the JSON Schema shows it the same with every pydantic version.
    pool: Pool = Field("10.213.0.0/16", validate_default=True,
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
            raise expected(f"a prefix length from {pool.prefixlen} to 29 (a lab's subnet must fit inside "
                           f"the pool {pool} and hold a few addresses)")
        return prefix


class Timeouts(SpecModel):
    """Time budgets, in seconds."""

    up: float = Field(30.0, gt=0.0, description="Seconds for the lab to start and the server to listen.")
    exec: float = Field(120.0, gt=0.0, description="Seconds a command run in a node may take by default.")


class NodeSpec(SpecModel):
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
    impair: Impairment | None = Field(None, description="Client or injector only (with NET_ADMIN): delay, "
                                                        "jitter, loss and rate on the server's packets as this node "
                                                        "receives them, set when the lab comes up (`labctl impair` "
                                                        "changes it at run time).")
    user: UserId | None = Field(None, json_schema_extra=_no_default,
                                description="uid:gid the container runs as. Default: 1000:1000 for the "
                                            "server, root (null) for the others.")
    port: Port | None = Field(None, json_schema_extra=_no_default,
                              description="Server only: the port the student's server listens on "
                                          f"(default {DEFAULT_PORT}, also given as $PORT).")
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
            return {"image": "server", "user": "1000:1000", "port": DEFAULT_PORT, **data}
        return data

    @field_validator("capabilities")
    @classmethod
    def _server_has_none(cls, capabilities: list[str], info: ValidationInfo) -> list[str]:
        if capabilities and info.data.get("role") == "server":
            hint = (" (the observer holds SYS_PTRACE to read the server's /proc)"
                    if "SYS_PTRACE" in capabilities else "")
            raise expected("no capabilities (student code runs in the server with all capabilities "
                           "dropped)", hint)
        return capabilities

    @field_validator("impair")
    @classmethod
    def _impair_on_a_client(cls, impair: Impairment | None, info: ValidationInfo) -> Impairment | None:
        role = info.data.get("role")
        if impair is None or role is None:
            return impair
        if role not in IMPAIRED_ROLES:
            why = ("the server never gets NET_ADMIN: impair the client, whose side then delays, drops and limits "
                   "the server's packets" if role == "server" else "the observer has no network")
            raise expected(f"no impair here (only a client or the injector is impaired: {why})")
        return impair

    @model_validator(mode="wrap")
    @classmethod
    def _impair_needs_net_admin(cls, data: Any, handler: Any) -> NodeSpec:
        """A client or injector with `impair` holds NET_ADMIN (said at its capabilities, with the other mistakes)."""
        problems: list[InitErrorDetails] = []
        capabilities = field_of(data, "capabilities")
        if (isinstance(data, dict) and field_of(data, "role") in IMPAIRED_ROLES and field_of(data, "impair") is not None
                and isinstance(capabilities or [], list) and CAPABILITY not in (capabilities or [])):
            problems.append(broken_rule(("capabilities",), capabilities or [],
                                        f"expected {CAPABILITY} among the capabilities of a node with impair (tc and "
                                        f"iptables need it), found {capabilities or []!r}"))
        return with_rules(handler, data, problems, cls.__name__)

    @field_validator("port")
    @classmethod
    def _port_on_server(cls, port: int | None, info: ValidationInfo) -> int | None:
        if port is not None and info.data.get("role") not in (None, "server"):
            raise expected("no port here (only the server node has a port)")
        return port

    @field_validator("watches")
    @classmethod
    def _watches_on_observer(cls, watches: str | None, info: ValidationInfo) -> str | None:
        role = info.data.get("role")
        if role == "observer" and watches is None:
            raise expected("the name of the server node this observer watches (like watches: server)")
        if role not in (None, "observer") and watches is not None:
            raise expected("no watches here (only an observer watches a server)")
        return watches


class LabSpec(SpecModel):
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
        valid = with_rules(handler, nodes, problems, cls.__name__)
        return {key: node if node.name == key else node.model_copy(update={"name": key})
                for key, node in valid.items()}

    @property
    def server(self) -> NodeSpec:
        """The one server node (validation guarantees there is exactly one)."""
        return self.nodes_by_role("server")[0]

    @property
    def server_port(self) -> int:
        """The port the server listens on unless a submission says otherwise: lab.yaml's, else DEFAULT_PORT."""
        return self.server.port or DEFAULT_PORT

    def nodes_by_role(self, role: Role) -> list[NodeSpec]:
        return [node for node in self.nodes.values() if node.role == role]


def _node_rules(nodes: Any) -> list[InitErrorDetails]:
    """The rules across nodes, checked on the raw mapping so they show up even when a node has
    other mistakes (`with_rules`)."""
    if not isinstance(nodes, dict):
        return []
    roles = {key: field_of(node, "role") for key, node in nodes.items()}
    servers = [key for key, role in roles.items() if role == "server"]
    observers = [key for key, role in roles.items() if role == "observer"]
    return [*_named_by_key(nodes), *_role_counts(nodes, roles, servers, observers),
            *_watching_the_server(nodes, roles, servers, observers)]


def _named_by_key(nodes: dict[Any, Any]) -> list[InitErrorDetails]:
    return [broken_rule((key, "name"), node["name"],
                        f"unknown field: a node is named by its key under nodes (here {key!r})")
            for key, node in nodes.items() if isinstance(node, dict) and "name" in node]


def _role_counts(nodes: dict[Any, Any], roles: dict[Any, Any], servers: list[Any],
                 observers: list[Any]) -> list[InitErrorDetails]:
    """Exactly one server, at most one observer."""
    problems: list[InitErrorDetails] = []
    if not servers and all(role in ROLES for role in roles.values()):
        problems.append(broken_rule((), nodes, "expected exactly one node with role: server, found none"))
    problems += [broken_rule((key, "role"), "server", f"expected exactly one node with role: server, found a "
                                                      f"second one (nodes.{servers[0]} is the server)")
                 for key in servers[1:]]
    problems += [broken_rule((key, "role"), "observer", f"expected at most one node with role: observer, found "
                                                        f"a second one (nodes.{observers[0]} is the observer)")
                 for key in observers[1:]]
    return problems


def _watching_the_server(nodes: dict[Any, Any], roles: dict[Any, Any], servers: list[Any],
                         observers: list[Any]) -> list[InitErrorDetails]:
    """An observer watches the server node (judged only when there is one server)."""
    if len(servers) != 1:
        return []
    problems: list[InitErrorDetails] = []
    for key in observers:
        watches = field_of(nodes[key], "watches")
        if isinstance(watches, str) and watches != servers[0]:
            why = f"nodes.{watches} has role {roles[watches]}" if watches in nodes else "no node has that name"
            problems.append(broken_rule((key, "watches"), watches, f"expected the name of the server node "
                                                                   f"({servers[0]!r}), found {watches!r} ({why})"))
    return problems


def lab_json_schema() -> dict[str, Any]:
    """The JSON Schema of lab.yaml, for editors (completion, checking) and `labctl schema`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **LabSpec.model_json_schema()}


# -- loading -------------------------------------------------------------------------------------

def load_lab(path: str | Path) -> LabSpec:
    """Read and validate a lab.yaml; raise SpecError listing every mistake."""
    return load_model(path, LabSpec, "lab")
