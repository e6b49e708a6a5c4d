"""Lab.up on the in-memory engine: a whole lab or nothing, at every point where up can fail, and the
engine's nofile ceiling clamped and said.

What is asserted is what the engine holds afterwards (containers, networks, plans) and the error
raised: `up` promises that a failure, or a Ctrl-C, leaves nothing with the lab's labels.
"""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from labctl.errors import LabctlError, ServerStartError, SubmissionError
from labctl.lab import LABEL_LAB, LABEL_NODE, LABEL_OWNER, LABEL_ROLE, Lab, Submission, current_owner

from .fakes import FakeBackend, FakeContainer, write_lab

IMAGES = {"server": "labctl-server:fake", "tools": "labctl-tools:fake"}
LAB = "t1"
NODES = ("server", "client", "injector", "observer")


@pytest.fixture
def spec(tmp_path):
    return write_lab(tmp_path / "project")


@pytest.fixture
def submission(tmp_path) -> Submission:
    folder = tmp_path / "submission"
    folder.mkdir()
    (folder / "server.py").write_text("print('serving')\n")
    return Submission(path=folder)


def members(payload: bytes | None) -> set[str]:
    assert payload is not None
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        return set(tar.getnames())


def left_of(fake: FakeBackend, lab: str = LAB) -> tuple[list[str], list[str]]:
    """What the engine still holds with the lab's label: (containers, networks)."""
    return ([info.name for info in fake.find_containers({LABEL_LAB: lab})],
            [net.name for net in fake.find_networks({LABEL_LAB: lab})])


# -- a whole lab ----------------------------------------------------------------------------------

def test_up_makes_one_network_and_a_running_container_per_node_all_labelled(fake, spec, submission):
    said: list[str] = []
    lab = Lab.create(spec, fake, name=LAB).up(IMAGES, submission, progress=said.append)

    assert list(fake.networks) == [f"labctl-{LAB}"]
    assert fake.networks[f"labctl-{LAB}"].info.subnet == "10.213.0.0/24"
    assert sorted(c.node for c in fake.containers.values()) == sorted(NODES)
    for container in fake.containers.values():
        assert container.status == "running"
        assert container.plan.labels[LABEL_LAB] == LAB
        assert container.plan.labels[LABEL_OWNER] == current_owner()
        assert container.plan.labels[LABEL_NODE] == container.node
        assert container.plan.labels[LABEL_ROLE] == spec.nodes[container.node].role
    observer, server = fake.container("observer"), fake.container("server")
    assert observer.plan.network is None and observer.address is None
    assert observer.plan.pid_of == server.name
    assert "submission/server.py" in members(server.plan.payload)
    assert "opt/labctl/harness/__main__.py" in members(fake.container("client").plan.payload)
    assert said[-1].startswith("the server listens on port 8080")
    assert sorted(info.node for info in lab.containers()) == sorted(NODES)


def test_a_second_lab_takes_the_next_subnet_and_down_removes_only_its_own(fake, spec):
    first = Lab.create(spec, fake, name="one").up(IMAGES)
    second = Lab.create(spec, fake, name="two").up(IMAGES)

    assert fake.networks["labctl-one"].info.subnet == "10.213.0.0/24"
    assert fake.networks["labctl-two"].info.subnet == "10.213.1.0/24"
    assert first.down() == len(NODES) + 1
    assert left_of(fake, "one") == ([], [])
    assert len(left_of(fake, "two")[0]) == len(NODES)
    assert second.down() == len(NODES) + 1
    assert second.down() == 0  # idempotent: a lab already gone is no error


# -- rollback: every failure point leaves nothing -------------------------------------------------

#: Each engine call of `up` that can fail, on each container it is made for: the network, each
#: container's creation (the three first ones in parallel, the sidecar after), each start, each
#: payload going in (the Docker backend sends it once the container runs), and the readiness wait's
#: look at the server (inspect) and its harness command in the client (exec).
FAILURE_POINTS = [
    ("create_network", f"labctl-{LAB}"),
    *[("create_container", node) for node in NODES],
    *[("start", node) for node in NODES],
    *[("copy", node) for node in NODES],
    ("inspect", "server"),
    ("exec", "client"),
]


@pytest.mark.parametrize("operation, target", FAILURE_POINTS, ids=[f"{op}-{target}" for op, target in FAILURE_POINTS])
def test_a_failure_at_any_point_of_up_removes_everything_and_raises_the_engines_error(
        fake, spec, submission, operation, target):
    fake.fail_on(operation, container=target)
    said: list[str] = []

    with pytest.raises(LabctlError, match=f"fake engine: {operation} .*failed, as the test asked") as raised:
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission, progress=said.append)

    assert type(raised.value) is LabctlError  # the engine's error as it was, not re-worded into another
    assert left_of(fake) == ([], [])
    assert fake.containers == {} and fake.networks == {}
    assert "removing what was made" in said


def test_a_failed_up_leaves_another_labs_network_and_containers_alone(fake, spec, submission):
    other = Lab.create(spec, fake, name="other").up(IMAGES)
    fake.fail_on("start", container=f"labctl-{LAB}-client")

    with pytest.raises(LabctlError):
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission)

    assert left_of(fake) == ([], [])
    assert sorted(c.node for c in fake.containers.values()) == sorted(NODES)
    assert all(c.plan.labels[LABEL_LAB] == other.id and c.status == "running" for c in fake.containers.values())
    assert list(fake.networks) == ["labctl-other"]


def test_no_free_subnet_in_the_pool_is_said_and_nothing_is_made(fake, tmp_path):
    spec = write_lab(tmp_path / "small", lambda data: data["network"].update(pool="10.9.0.0/23", prefix=24))
    Lab.create(spec, fake, name="a").up(IMAGES)
    Lab.create(spec, fake, name="b").up(IMAGES)

    with pytest.raises(LabctlError, match=r"no free /24 subnet left in the address pool 10\.9\.0\.0/23"):
        Lab.create(spec, fake, name=LAB).up(IMAGES)

    assert left_of(fake) == ([], [])
    assert sorted(fake.networks) == ["labctl-a", "labctl-b"]


def test_a_submission_too_big_for_the_servers_folder_is_refused_after_the_network_and_removes_it(fake, tmp_path):
    spec = write_lab(tmp_path / "project", lambda data: data["nodes"]["server"]["limits"].update(disk="6m"))
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\0" * (7 * 2**20))

    with pytest.raises(SubmissionError, match=r"big takes about 7\.0 MiB once copied, and the server's "
                                              r"/submission holds 6m \(lab\.yaml: nodes\.server\.limits\.disk\)"):
        Lab.create(spec, fake, name=LAB).up(IMAGES, Submission(path=folder))

    assert ("create_network", f"labctl-{LAB}") in fake.calls  # it failed after the network was made
    assert left_of(fake) == ([], [])


@pytest.mark.parametrize("exit_code, words", [
    (1, "the server exited with code 1 before it listened on port 8080.\nIts log ends with:\n"),
    (0, "A server must stay in the foreground"),
])
def test_a_server_that_exits_at_once_is_a_server_start_error_not_the_sidecars(fake, spec, submission,
                                                                              exit_code, words):
    def crash(container: FakeContainer) -> None:
        fake.log(container.name, "Traceback (most recent call last):\nModuleNotFoundError: No module named 'flask'\n")
        fake.stop(container.name, exit_code)

    fake.on_start["server"] = crash

    with pytest.raises(ServerStartError) as raised:
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission)

    assert words in str(raised.value)
    assert "No module named 'flask'" in str(raised.value)
    assert "join PID" not in str(raised.value)  # the observer's failed start is the consequence, not the news
    assert left_of(fake) == ([], [])


def test_a_server_that_exits_while_up_waits_for_it_is_a_server_start_error(fake, spec, submission):
    def probe(params: dict) -> dict:
        fake.log("server", "Segmentation fault\n")
        fake.stop("server", 139)
        return {"listening": False}

    fake.harness["client"]["wait_listening"] = probe

    with pytest.raises(ServerStartError, match="exited with code 139 before it listened on port 8080") as raised:
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission)

    assert "Segmentation fault" in str(raised.value)
    assert left_of(fake) == ([], [])


def test_a_server_that_never_listens_is_a_server_start_error_after_timeouts_up(fake, tmp_path, submission):
    spec = write_lab(tmp_path / "project", lambda data: data["timeouts"].update(up=0.3))
    asked: list[dict] = []

    def probe(params: dict) -> dict:
        asked.append(params)
        time.sleep(0.02)
        return {"listening": False}

    fake.harness["client"]["wait_listening"] = probe
    started = time.monotonic()

    with pytest.raises(ServerStartError, match=r"did not listen on port 8080 within 0\.3 s \(it is still running"):
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission)

    assert 0.3 <= time.monotonic() - started < 2.0
    assert asked and all(p["host"] == "server" and p["port"] == 8080 and 0 < p["timeout"] <= 1.0 for p in asked)
    assert left_of(fake) == ([], [])


def test_a_harness_that_cannot_answer_the_wait_fails_up_and_removes_everything(fake, spec, submission):
    del fake.harness["client"]["wait_listening"]  # the harness crashes: no JSON on stdout

    with pytest.raises(LabctlError, match=r"harness wait_listening on client failed \(exit 1\)"):
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission)

    assert left_of(fake) == ([], [])


def test_a_lab_with_nothing_to_probe_from_cannot_wait_and_removes_everything(fake, tmp_path, submission):
    def server_only(data: dict) -> None:
        data["nodes"] = {name: node for name, node in data["nodes"].items() if name in ("server", "observer")}

    spec = write_lab(tmp_path / "project", server_only)

    with pytest.raises(LabctlError, match="no client or injector node to check that the server listens"):
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission)

    assert left_of(fake) == ([], [])


#: Ctrl-C arrives in the main thread (the network, the sidecar's start, the wait) or in a worker of the
#: pool that creates and starts the first containers: up hands it on either way, after the cleanup.
INTERRUPT_POINTS = [("create_network", f"labctl-{LAB}"), ("create_container", "client"), ("start", "server"),
                    ("start", "observer"), ("exec", "client")]


@pytest.mark.parametrize("operation, target", INTERRUPT_POINTS, ids=[f"{op}-{t}" for op, t in INTERRUPT_POINTS])
def test_ctrl_c_in_the_middle_of_up_removes_everything_and_goes_on_up(fake, spec, submission, operation, target):
    fake.fail_on(operation, container=target, error=KeyboardInterrupt())
    said: list[str] = []

    with pytest.raises(KeyboardInterrupt):
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission, progress=said.append)

    assert left_of(fake) == ([], [])
    assert said[-1] == "removing what was made"


def test_ctrl_c_while_the_harness_waits_for_the_server_removes_everything(fake, spec, submission):
    def interrupted(params: dict) -> dict:
        raise KeyboardInterrupt

    fake.harness["client"]["wait_listening"] = interrupted

    with pytest.raises(KeyboardInterrupt):
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission)

    assert left_of(fake) == ([], [])


# -- the engine's nofile ceiling ----------------------------------------------------------------

def test_a_nofile_above_the_engines_own_limit_is_clamped_and_said(spec, submission):
    fake = FakeBackend(nofile_limit=2000)
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    said: list[str] = []

    Lab.create(spec, fake, name=LAB).up(IMAGES, submission, progress=said.append)

    nofile = {c.node: c.plan.nofile for c in fake.containers.values()}
    assert nofile == {"server": 2000, "client": 2000, "injector": 2000, "observer": 1024}
    assert all(c.status == "running" for c in fake.containers.values())
    assert "node server: nofile 4096 is above the engine's own limit 2000; using 2000" in said
    assert "node client: nofile 8192 is above the engine's own limit 2000; using 2000" in said
    assert "node injector: nofile 4096 is above the engine's own limit 2000; using 2000" in said
    assert not any(message.startswith("node observer: nofile") for message in said)
    # The container made again is the same plan but for nofile: the submission still goes in.
    assert "submission/server.py" in members(fake.container("server").plan.payload)
    assert fake.container("server").plan.labels[LABEL_LAB] == LAB


def test_a_lab_yaml_asking_far_more_than_the_engine_allows_gets_the_engines_limit_sidecar_included(tmp_path,
                                                                                               submission):
    def greedy(data: dict) -> None:
        for node in data["nodes"].values():
            node["limits"]["nofile"] = 65536

    spec = write_lab(tmp_path / "project", greedy)
    fake = FakeBackend(nofile_limit=20000)
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    said: list[str] = []

    Lab.create(spec, fake, name=LAB).up(IMAGES, submission, progress=said.append)

    assert {c.node: c.plan.nofile for c in fake.containers.values()} == dict.fromkeys(NODES, 20000)
    assert fake.container("observer").plan.pid_of == fake.container("server").name
    assert fake.container("observer").status == "running"
    assert sorted(m for m in said if "nofile" in m) == sorted(
        f"node {node}: nofile 65536 is above the engine's own limit 20000; using 20000" for node in NODES)


@pytest.mark.parametrize("operation, nth", [("engine_nofile_limit", 1), ("create_container", 2), ("start", 2)],
                         ids=["reading-the-limit", "creating-it-again", "starting-it-again"])
def test_a_failure_while_clamping_removes_everything(spec, submission, operation, nth):
    fake = FakeBackend(nofile_limit=2000)
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    fake.fail_on(operation, container=None if operation == "engine_nofile_limit" else "server", nth=nth)

    with pytest.raises(LabctlError, match="failed, as the test asked"):
        Lab.create(spec, fake, name=LAB).up(IMAGES, submission)

    assert left_of(fake) == ([], [])


def test_a_failing_cleanup_does_not_hide_the_error_that_started_it(fake, spec):
    """The start failed; then removing what was made failed too: the start's error is the one raised."""
    fake.fail_on("start", container="client", error=LabctlError("the client would not start"))
    fake.fail_on("remove", error=LabctlError("the engine went away"))
    said: list[str] = []
    lab = Lab.create(spec, fake)
    with pytest.raises(LabctlError, match="the client would not start"):
        lab.up(IMAGES, progress=said.append)
    assert any("removing what was made failed too: the engine went away" in line for line in said)


def test_alive_means_one_thing_for_every_state_an_engine_can_say():
    from labctl.backends.base import ALIVE, CONTAINER_STATES, ContainerInfo, container_state

    assert container_state("exited") == "exited" and container_state("Up 3 seconds") == "unknown"
    assert container_state(None) == "unknown"
    alive = {state for state in CONTAINER_STATES
             if ContainerInfo("c", "server", "server", container_state(state), None, None, {}).running}
    assert alive == ALIVE == {"created", "running", "restarting"}


# -- a backend that shares the host's network ---------------------------------------------------------

def test_a_capture_on_a_backend_without_a_network_of_its_own_is_refused_before_anything_runs(spec, submission):
    fake = FakeBackend(features=frozenset({"thread_waits"}))
    fake.harness["client"]["wait_listening"] = lambda params: {"listening": True}
    lab = Lab(spec, fake, LAB).up(IMAGES, submission)
    with pytest.raises(LabctlError, match="capturing needs a network of the lab's own: the fake backend"):
        lab.capture("client", 1.0)
    assert not [e for e in fake.execs if e.harness_command == "capture"]
