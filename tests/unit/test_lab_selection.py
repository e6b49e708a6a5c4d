"""Which lab a command means (found by label on a fake engine), and the submission an exercise runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.backends.base import ContainerPlan
from labctl.errors import LabctlError, LabNotFound
from labctl.lab import LABEL_LAB, LABEL_NODE, LABEL_OWNER, LABEL_ROLE, Lab, Submission, find_lab, labs_to_remove
from labctl.spec import DEFAULT_PORT, LabSpec
from unit.fakes import FakeBackend

ROOT = Path(__file__).resolve().parents[2]
SPEC = LabSpec(nodes={"server": {"role": "server"}, "client": {"role": "client"}})


def engine_with(*labs: tuple[str, str]) -> FakeBackend:
    """An engine running these labs, (lab id, owner) each: a network and a server, labelled as Lab.up does."""
    engine = FakeBackend()
    for lab, owner in labs:
        labels = {LABEL_LAB: lab, LABEL_OWNER: owner}
        engine.create_network(f"labctl-{lab}", "10.213.0.0/16", 24, labels, internal=True)
        engine.create_container(ContainerPlan(name=f"labctl-{lab}-server", node="server", image="labctl-server:x",
                                              command=["sleep", "infinity"], network=f"labctl-{lab}",
                                              labels={**labels, LABEL_ROLE: "server", LABEL_NODE: "server"}))
        engine.start(f"labctl-{lab}-server")
    return engine


@pytest.fixture(autouse=True)
def me(monkeypatch):
    monkeypatch.setenv("LABCTL_OWNER", "me")


# -- down: which labs to remove ---------------------------------------------------------------------

def test_down_without_a_name_removes_my_only_lab_or_nothing():
    assert labs_to_remove(engine_with()) == []
    assert labs_to_remove(engine_with(("a", "me"), ("b", "you"))) == ["a"]


def test_down_without_a_name_refuses_to_choose_between_my_labs():
    with pytest.raises(LabctlError, match=r"^2 labs are running \(a, c\): name one, or use --all$"):
        labs_to_remove(engine_with(("a", "me"), ("b", "you"), ("c", "me")))


def test_down_of_a_named_lab_removes_it_even_when_gone():
    engine = engine_with(("a", "me"), ("c", "me"))
    assert labs_to_remove(engine, "gone") == ["gone"], "removing is safe to repeat"
    assert labs_to_remove(engine, "b") == ["b"]


def test_down_all_is_my_labs_and_with_any_owner_everyones():
    engine = engine_with(("a", "me"), ("b", "you"), ("c", "me"))
    assert labs_to_remove(engine, every=True) == ["a", "c"]
    assert labs_to_remove(engine, every=True, any_owner=True) == ["a", "b", "c"]
    assert labs_to_remove(engine, "b", every=True) == ["a", "c"], "--all wins over a name"
    assert labs_to_remove(engine_with(("a", "me"), ("b", "you")), any_owner=True) == ["a"], \
        "--any-owner means something only with --all"


# -- every other command: the one lab it works on -------------------------------------------------------

def test_a_command_works_on_my_only_lab():
    lab = find_lab(SPEC, engine_with(("a", "me"), ("b", "you")))
    assert isinstance(lab, Lab) and lab.id == "a"


def test_a_named_lab_must_exist_and_may_be_anyones():
    engine = engine_with(("a", "me"), ("b", "you"))
    assert find_lab(SPEC, engine, "b").id == "b"
    with pytest.raises(LabNotFound, match=r"^no lab 'gone' on this engine \(see `labctl status`\)$"):
        find_lab(SPEC, engine, "gone")


def test_no_lab_or_several_of_mine_is_a_clear_error():
    with pytest.raises(LabNotFound, match="^no lab is running: start one with `labctl up`$"):
        find_lab(SPEC, engine_with(("b", "you")))
    with pytest.raises(LabNotFound, match=r"^2 labs are running \(a, c\): name one with --lab$"):
        find_lab(SPEC, engine_with(("a", "me"), ("c", "me")))


# -- the submission an exercise runs ----------------------------------------------------------------

def make_exercise(tmp_path: Path) -> Path:
    folder = tmp_path / "exercises" / "echo"
    (folder / "www").mkdir(parents=True)
    (folder / "exercise.yaml").write_text(
        "title: Echo\nmodel: blocking\ndocroot: www\n"
        "submission:\n  build: make\n  run: ./server\n  port: 9090\n  sysctls: {net.ipv4.tcp_syncookies: 0}\n"
        "checks:\n  - {name: index, check: http, params: {path: /, expect: {status: 200}}}\n", encoding="utf-8")
    return folder


def test_a_submission_for_an_exercise_runs_as_the_exercise_says(tmp_path: Path):
    from labctl.exercise import load_exercise

    exercise = load_exercise(make_exercise(tmp_path))
    env = {"WORKERS": "1"}
    sub = Submission.for_exercise(exercise, tmp_path / "mine", env=env)
    assert sub == Submission(path=tmp_path / "mine", run="./server", build="make", port=9090,
                             docroot=exercise.dir / "www", env={"WORKERS": "1"},
                             sysctls={"net.ipv4.tcp_syncookies": "0"})
    assert sub.env is not env, "the submission keeps its own copy"
    assert sub.command() == ["sh", "-c", "make && exec ./server"]
    assert Submission.for_exercise(exercise, tmp_path).env == {}


def test_the_blocking_exercises_submission():
    from labctl.exercise import load_exercise

    exercise = load_exercise(ROOT / "exercises" / "blocking")
    sub = Submission.for_exercise(exercise, ROOT)
    assert (sub.run, sub.build, sub.port, sub.docroot, sub.sysctls) == (
        "python3 server.py", None, 8080, exercise.docroot, {})


# -- the default port --------------------------------------------------------------------------------

def test_the_server_listens_on_the_default_port_unless_lab_yaml_says_otherwise():
    images = {"server": "labctl-server", "tools": "labctl-tools"}
    assert DEFAULT_PORT == 8080 == Submission(path=ROOT).port
    assert SPEC.server_port == DEFAULT_PORT
    idle = Lab(SPEC, backend=None, lab_id="t")._plan(SPEC.server, images, None)
    assert idle.env["PORT"] == str(DEFAULT_PORT)
    other = LabSpec(nodes={"server": {"role": "server", "port": 9000}, "client": {"role": "client"}})
    assert other.server_port == 9000
    assert Lab(other, backend=None, lab_id="t")._plan(other.server, images, None).env["PORT"] == "9000"
