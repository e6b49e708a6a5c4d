"""The spec layer: lab.yaml loads into typed models, and every mistake reads as `file:line: field: ...`.

Each file in broken_labs/ holds one kind of mistake (or several, for the "all at once" case) and
says, in its `# expect:` header lines, the exact lines the loader must print, in order.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from labctl.errors import SpecError
from labctl.spec import (
    LabSpec,
    Limits,
    NetworkSpec,
    NodeSpec,
    Timeouts,
    lab_json_schema,
    load_lab,
    sysctl_values,
)
from labctl.spec_errors import load_model

HERE = Path(__file__).parent
REPO = HERE.parents[1]
BROKEN = sorted((HERE / "broken_labs").glob("*.yaml"))
SCHEMA_FILE = REPO / "labctl" / "schemas" / "lab.schema.json"


def expected_problems(path: Path) -> list[str]:
    return [line.removeprefix("# expect: ") for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("# expect: ")]


def problems_of(path: str | Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_lab(path)
    return caught.value.problems


def write(tmp_path: Path, text: str, name: str = "lab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the real lab.yaml --------------------------------------------------------------------------

def test_repo_lab_yaml_loads_with_its_values() -> None:
    lab = load_lab(REPO / "lab.yaml")
    assert lab.name == "labctl"
    assert lab.network == NetworkSpec(pool=IPv4Network("10.213.0.0/16"), prefix=24, internal=True)
    assert lab.timeouts == Timeouts(up=30, exec=120)
    assert list(lab.nodes) == ["server", "client", "injector", "observer"]
    expected = {
        "server": ("server", "server", [], "1000:1000", 8080, None,
                   Limits(cpus=1.0, memory="256m", pids=512, nofile=4096, disk="128m")),
        "client": ("client", "tools", ["NET_RAW", "NET_ADMIN", "SETGID"], None, None, None,
                   Limits(cpus=1.0, memory="512m", pids=512, nofile=8192)),
        "injector": ("injector", "tools", ["NET_RAW", "NET_ADMIN"], None, None, None,
                     Limits(cpus=0.5, memory="256m", pids=128, nofile=4096)),
        "observer": ("observer", "tools", ["SYS_PTRACE", "DAC_READ_SEARCH"], None, None, "server",
                     Limits(cpus=0.5, memory="128m", pids=64, nofile=1024)),
    }
    for name, (role, image, capabilities, user, port, watches, limits) in expected.items():
        node = lab.nodes[name]
        assert (node.name, node.role, node.image, node.capabilities, node.user, node.port, node.watches,
                node.limits) == (name, role, image, capabilities, user, port, watches, limits), name
    assert lab.server is lab.nodes["server"]
    assert [node.name for node in lab.nodes_by_role("observer")] == ["observer"]
    assert lab.nodes["client"].limits.memory_bytes == 512 * 2**20


def test_repo_lab_yaml_points_editors_at_the_schema() -> None:
    first_line = (REPO / "lab.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=labctl/schemas/lab.schema.json"


# -- defaults -----------------------------------------------------------------------------------

def test_defaults_apply(tmp_path: Path) -> None:
    lab = load_lab(write(tmp_path, "nodes:\n  web:\n    role: server\n  probe:\n    role: client\n"
                                   "  eye:\n    role: observer\n    watches: web\n"))
    assert lab.name == "labctl"
    assert lab.network.pool == IPv4Network("10.213.0.0/16")
    assert (lab.network.prefix, lab.network.internal) == (24, True)
    assert (lab.timeouts.up, lab.timeouts.exec) == (30.0, 120.0)
    web, probe, eye = lab.nodes.values()
    assert (web.name, web.image, web.user, web.port, web.capabilities) == ("web", "server", "1000:1000", 8080, [])
    assert (probe.image, probe.user, probe.port, probe.watches) == ("tools", None, None, None)
    assert eye.watches == "web"
    assert probe.limits == Limits() == Limits(cpus=1.0, memory="256m", pids=256, nofile=4096)
    assert lab.server is web


@pytest.mark.parametrize(("written", "size", "nbytes"), [
    ("256m", "256m", 256 * 2**20), ("1g", "1g", 2**30), ("1G", "1g", 2**30), ("8192k", "8192k", 8 * 2**20),
    ("1073741824", "1073741824", 2**30), (1073741824, "1073741824", 2**30), ("7340032b", "7340032b", 7 * 2**20),
], ids=["m", "g", "upper-case", "k", "bytes-string", "bytes-int", "b"])
def test_memory_sizes(written: object, size: str, nbytes: int) -> None:
    limits = Limits(memory=written)  # type: ignore[arg-type]
    assert (limits.memory, limits.memory_bytes) == (size, nbytes)


def test_user_may_be_a_yaml_number(tmp_path: Path) -> None:
    lab = load_lab(write(tmp_path, "nodes:\n  server:\n    role: server\n    user: 1000\n"))
    assert lab.server.user == "1000"


def test_no_base_60_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads 1000:59 as 60059; a uid:gid must stay what it looks like."""
    lab = load_lab(write(tmp_path, "nodes:\n  server:\n    role: server\n    user: 1000:59\n"
                                   "    limits: {cpus: 0.5, pids: 0x40, nofile: 1_024}\n"))
    assert lab.server.user == "1000:59"
    assert (lab.server.limits.cpus, lab.server.limits.pids, lab.server.limits.nofile) == (0.5, 64, 1024)


def test_sysctls_of_a_nodes_network_namespace(tmp_path: Path) -> None:
    lab = load_lab(write(tmp_path, "nodes:\n  server:\n    role: server\n    sysctls:\n"
                                   "      net.ipv4.tcp_syncookies: 0\n      net.ipv6.conf.all.disable_ipv6: '1'\n"
                                   "      net.core.somaxconn: 1024\n      net.unix.max_dgram_qlen: 64\n"
                                   "  client:\n    role: client\n"))
    assert lab.server.sysctls == {"net.ipv4.tcp_syncookies": 0, "net.ipv6.conf.all.disable_ipv6": "1",
                                  "net.core.somaxconn": 1024, "net.unix.max_dgram_qlen": 64}
    assert lab.nodes["client"].sysctls == {}
    assert sysctl_values(lab.server.sysctls)["net.ipv4.tcp_syncookies"] == "0"  # the engine takes text


@pytest.mark.parametrize("name", ["kernel.shmmax", "vm.swappiness", "fs.file-max", "net.netfilter.nf_conntrack_max",
                                  "net.ipv4", "net.ipv4.", "net.ipv4.TCP_SYNCOOKIES", "net.ipv4.tcp-syncookies",
                                  "net/ipv4/tcp_syncookies"])
def test_only_network_namespace_sysctls_are_accepted(name: str) -> None:
    with pytest.raises(ValidationError, match="expected a network sysctl like net.ipv4.tcp_syncookies"):
        NodeSpec(role="server", sysctls={name: 1})
    with pytest.raises(ValidationError):
        NodeSpec(role="server", sysctls={"net.ipv4.tcp_syncookies": 0.5})


def test_node_key_that_is_not_text(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes:\n  server:\n    role: server\n  1:\n    role: client\n")
    assert problems_of(path) == [f"{path}:4: nodes.1: expected a key that is text, found 1"]


# -- the JSON Schema ----------------------------------------------------------------------------

def test_committed_schema_matches_the_models() -> None:
    """Editors read the committed file; it must say what the models say (compared as JSON, so
    pydantic versions that print 0 or 0.0 agree)."""
    text = SCHEMA_FILE.read_text(encoding="utf-8")
    regenerate = ("stale; regenerate it: python -c \"import json; from labctl.spec import lab_json_schema; "
                  "open('labctl/schemas/lab.schema.json', 'w')"
                  ".write(json.dumps(lab_json_schema(), indent=2) + '\\n')\"")
    assert json.loads(text) == lab_json_schema(), regenerate
    assert text.endswith("}\n")


def test_schema_describes_lab_yaml() -> None:
    schema = lab_json_schema()
    assert schema["title"] and schema["description"]
    assert schema["additionalProperties"] is False
    node = schema["$defs"]["NodeSpec"]
    assert "name" not in node["properties"]  # a node is named by its key
    assert "NET_RAW" in node["properties"]["capabilities"]["items"]["enum"]
    assert node["properties"]["sysctls"]["propertyNames"]["pattern"].startswith("^net\\.")


# -- broken files: exact messages ---------------------------------------------------------------

def test_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 15
    for path in BROKEN:
        assert expected_problems(path), f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize("path", BROKEN, ids=[path.stem for path in BROKEN])
def test_broken_lab_reports_exact_lines(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)  # messages carry the path as given: broken_labs/<file>
    assert problems_of(Path("broken_labs") / path.name) == expected_problems(path)


def test_many_mistakes_are_all_reported_in_line_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    problems = problems_of("broken_labs/40_many_mistakes.yaml")
    assert len(problems) >= 8
    lines = [int(problem.split(":")[1]) for problem in problems]
    assert lines == sorted(lines)
    fields = [problem.split(": ")[1] for problem in problems]
    for field in ("network.prefix", "timeouts.up", "timeouts.exce", "nodes.server.capabilities",
                  "nodes.server.limits.memory", "nodes.client.port", "nodes.client.capabilities[0]",
                  "nodes.backup.role", "nodes.backup.limits.cpus", "nodes.backup.limits.pids"):
        assert field in fields


def test_every_problem_is_one_plain_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    for path in BROKEN:
        for problem in problems_of(Path("broken_labs") / path.name):
            assert re.match(r"^broken_labs/[\w.]+:\d+: \S", problem), problem
            assert "\n" not in problem and "Traceback" not in problem and "pydantic" not in problem


def test_missing_file_is_a_sentence(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nope.yaml")
    assert problems == [f"{tmp_path / 'nope.yaml'}: no such file: the lab file was looked for at "
                        f"{(tmp_path / 'nope.yaml').resolve()}"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    assert problems_of(path) == [f"{path}: not UTF-8 text (byte 0xe9 at offset 9); save the lab file as UTF-8"]


def test_spec_error_message_joins_the_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "name: Bad\nnodes: {}\n")
    with pytest.raises(SpecError) as caught:
        load_lab(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 2
    assert caught.value.exit_code == 2


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    lab = load_lab(write(tmp_path, "nodes:\n  server:\n    role: server\n"
                                   "    limits: &small {cpus: 0.5, memory: 64m}\n"
                                   "  client:\n    role: client\n    limits:\n      <<: *small\n      pids: 32\n"))
    assert lab.nodes["client"].limits == Limits(cpus=0.5, memory="64m", pids=32)


# -- the models outside of YAML (other modules build them directly) ----------------------------

def test_models_enforce_the_rules_when_built_in_python() -> None:
    lab = LabSpec(nodes={"s": NodeSpec(role="server"), "o": {"role": "observer", "watches": "s"}})
    assert [node.name for node in lab.nodes.values()] == ["s", "o"]
    with pytest.raises(ValidationError):
        LabSpec(nodes={"a": NodeSpec(role="server"), "b": NodeSpec(role="server")})
    with pytest.raises(ValidationError):
        NodeSpec(role="client", port=80)
    with pytest.raises(ValidationError):
        NodeSpec(role="server", capabilities=["NET_RAW"])


class _Tiny(BaseModel):
    """A model other than LabSpec, as exercise.yaml will have."""

    model_config = ConfigDict(extra="forbid", strict=True)
    title: str


def test_load_model_is_generic(tmp_path: Path) -> None:
    assert load_model(write(tmp_path, "title: hello\n", "exercise.yaml"), _Tiny, "exercise").title == "hello"
    with pytest.raises(SpecError) as caught:
        load_model(write(tmp_path, "titel: hello\n", "exercise.yaml"), _Tiny, "exercise")
    assert caught.value.problems == [
        f"{tmp_path / 'exercise.yaml'}:1: title: required, but missing",
        f"{tmp_path / 'exercise.yaml'}:1: titel: unknown field, did you mean 'title'?",
    ]
