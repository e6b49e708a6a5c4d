"""exercise.yaml loads into typed models; each check's params are validated by that check's own model;
every mistake reads as `file:line: field: ...`.

The tests run against a small registry of fake checks (the `registry` fixture), so they do not depend
on the real catalog. Each folder in broken_exercises/ holds one kind of mistake (or several, for the
"all at once" case) and says, in its `# expect:` header lines, the exact lines the loader must print.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

import labctl.exercise as exercise_module
from labctl.checks import REGISTRY, CheckParams, Outcome, check, load_catalog
from labctl.errors import SpecError
from labctl.exercise import (
    CheckSpec,
    Exercise,
    MutantSpec,
    SubmissionSpec,
    ValidateSpec,
    exercise_json_schema,
    exercise_model,
    find_exercises,
    load_exercise,
)

HERE = Path(__file__).parent
BROKEN = sorted(path.parent for path in (HERE / "broken_exercises").glob("*/exercise.yaml"))


# -- a registry of fake checks ------------------------------------------------------------------

class HttpGetParams(CheckParams):
    path: str = Field("/", description="The path requested.")
    expect_status: int = Field(200, description="The status expected.")
    accept: int | list[int] = Field(200, description="A status, or statuses, accepted.")
    headers: dict[str, str] = Field(default_factory=dict)


class ManyClientsParams(CheckParams):
    clients: int = Field(10, ge=1, le=100, description="How many clients at once.")
    limit: float = Field(2.0, gt=0)


class FileDigestParams(CheckParams):
    file: str = Field(description="A docroot file whose digest the answer must have.")
    path: str = "/"


def _passes(ctx: object, params: object) -> Outcome:
    return Outcome(True, "fine")


FAKES = {
    "http_get": (HttpGetParams, "One GET request and its status.", 10.0),
    "many_clients": (ManyClientsParams, "Many clients at once.", 40.0),
    "file_digest": (FileDigestParams, "A file served whole.", 15.0),
}


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """REGISTRY holds exactly the fake checks during a test (the real catalog is put back after)."""
    load_catalog()  # the whole real catalog, so that it is whole again afterwards
    saved = dict(REGISTRY)
    REGISTRY.clear()
    for name, (params, summary, timeout) in FAKES.items():
        check(name, params, summary, default_timeout=timeout)(_passes)
    monkeypatch.setattr(exercise_module, "load_catalog", lambda: REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


def make_exercise(root: Path, text: str, folders: tuple[str, ...] = (), name: str = "hello") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "exercise.yaml").write_text(text, encoding="utf-8")
    for sub in folders:
        (folder / sub).mkdir(parents=True)
    return folder


def problems_of(folder: str | Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_exercise(folder)
    return caught.value.problems


def expected_problems(folder: Path) -> list[str]:
    text = (folder / "exercise.yaml").read_text(encoding="utf-8")
    return [line.removeprefix("# expect: ") for line in text.splitlines() if line.startswith("# expect: ")]


FULL = """\
title: A threaded file server
model: threaded
summary: Serve files to many clients at once.
submission:
  image: server-c
  language: c
  build: make
  run: ./server
  port: 9000
docroot: www
budget: 120
checks:
  - name: index
    check: http_get
    points: 2
    description: The index page comes back whole.
    params:
      path: /index.html
      accept: [200, 304]
  - name: crowd
    check: many_clients
    points: 3.5
    visibility: hidden
    timeout: 25
    params: {clients: 50}
  - name: digest
    check: file_digest
    points: 0
    params: {file: index.html}
validate:
  solution: sol
  starter: start
  mutants:
    - path: mutants/blocking
      fails: [crowd]
      why: serves one client at a time
    - path: mutants/crash
      not_gradable: true
"""


# -- good exercises -----------------------------------------------------------------------------

def test_full_exercise_loads_with_all_fields(tmp_path: Path) -> None:
    folder = make_exercise(tmp_path, FULL, ("www", "sol", "start", "mutants/blocking", "mutants/crash"))
    ex = load_exercise(folder)
    assert isinstance(ex, Exercise)
    assert (ex.id, ex.dir, ex.title, ex.model, ex.summary) == (
        "hello", folder, "A threaded file server", "threaded", "Serve files to many clients at once.")
    assert ex.submission == SubmissionSpec(image="server-c", language="c", build="make", run="./server", port=9000)
    assert ex.docroot == folder / "www" and ex.docroot.is_dir()
    assert ex.budget == 120.0
    index, crowd, digest = ex.checks
    assert all(isinstance(spec, CheckSpec) for spec in ex.checks)
    assert (index.name, index.check, index.points, index.visibility, index.timeout, index.description) == (
        "index", "http_get", 2.0, "public", None, "The index page comes back whole.")
    assert index.params == HttpGetParams(path="/index.html", accept=[200, 304])
    assert isinstance(crowd.params, ManyClientsParams) and crowd.params.clients == 50
    assert (crowd.points, crowd.visibility, crowd.timeout, crowd.budget) == (3.5, "hidden", 25.0, 25.0)
    assert index.budget == 10.0 and digest.budget == 15.0  # the catalog's defaults
    assert digest.params == FileDigestParams(file="index.html")
    assert ex.validate == ValidateSpec(solution="sol", starter="start", mutants=[
        MutantSpec(path="mutants/blocking", fails=["crowd"], why="serves one client at a time"),
        MutantSpec(path="mutants/crash", not_gradable=True)])
    assert [spec.name for spec in ex.public_checks] == ["index", "digest"]
    assert [spec.name for spec in ex.hidden_checks] == ["crowd"]
    assert ex.max_points == 5.5


def test_defaults(tmp_path: Path) -> None:
    folder = make_exercise(tmp_path, "title: Hello\nmodel: blocking\nchecks:\n  - name: index\n    check: http_get\n")
    ex = load_exercise(folder)
    assert (ex.summary, ex.docroot, ex.budget, ex.validate) == ("", None, 300.0, None)
    assert ex.submission == SubmissionSpec()
    assert (ex.submission.image, ex.submission.language, ex.submission.build, ex.submission.run,
            ex.submission.port) == ("server", "python", None, "python3 server.py", 8080)
    (index,) = ex.checks
    assert (index.points, index.visibility, index.timeout, index.description, index.budget) == (
        1.0, "public", None, "", 10.0)
    assert index.params == HttpGetParams()
    assert ex.max_points == 1.0 and ex.hidden_checks == []


def test_submission_sysctls_go_over_the_lab_servers_into_the_server_container_only(tmp_path: Path) -> None:
    from labctl.lab import Lab, Submission
    from labctl.spec import LabSpec, sysctl_values

    folder = make_exercise(tmp_path, "title: Hello\nmodel: blocking\nsubmission:\n  sysctls:\n"
                                     "    net.ipv4.tcp_syncookies: 0\n    net.core.somaxconn: '64'\n"
                                     "checks:\n  - {name: index, check: http_get}\n")
    sub = load_exercise(folder).submission
    assert sub.sysctls == {"net.ipv4.tcp_syncookies": 0, "net.core.somaxconn": "64"}
    assert SubmissionSpec().sysctls == {}
    spec = LabSpec(nodes={
        "server": {"role": "server", "sysctls": {"net.ipv4.tcp_syncookies": 1, "net.ipv4.tcp_fin_timeout": 10}},
        "client": {"role": "client", "sysctls": {"net.core.somaxconn": 512}},
        "observer": {"role": "observer", "watches": "server"}})
    lab = Lab(spec, backend=None, lab_id="t")  # type: ignore[arg-type]  (planning asks no engine)
    images = {"server": "labctl-server", "tools": "labctl-tools"}
    plans = {name: lab._plan(node, images, None) for name, node in spec.nodes.items()}
    assert plans["server"].sysctls == {"net.ipv4.tcp_syncookies": "1", "net.ipv4.tcp_fin_timeout": "10"}
    lab.submission = Submission(path=folder, sysctls=sysctl_values(sub.sysctls))
    plans = {name: lab._plan(node, images, lab.submission) for name, node in spec.nodes.items()}
    assert plans["server"].sysctls == {"net.ipv4.tcp_syncookies": "0", "net.ipv4.tcp_fin_timeout": "10",
                                       "net.core.somaxconn": "64"}
    assert plans["client"].sysctls == {"net.core.somaxconn": "512"}
    assert plans["observer"].sysctls == {}, "the observer shares the server's PID namespace, not its network"


def test_validate_defaults_to_solution_and_starter(tmp_path: Path) -> None:
    folder = make_exercise(tmp_path, "title: Hello\nmodel: blocking\nchecks:\n  - {name: index, check: http_get}\n"
                                     "validate: {}\n", ("solution", "starter"))
    validate = load_exercise(folder).validate
    assert validate == ValidateSpec(solution="solution", starter="starter", mutants=[])


def test_a_mutant_can_be_another_folder_with_environment_settings(tmp_path: Path) -> None:
    text = ("title: Hello\nmodel: blocking\nchecks:\n  - {name: index, check: http_get}\n"
            "validate:\n  mutants:\n    - {path: solution, env: {WORKERS: '1'}, fails: [index]}\n")
    folder = make_exercise(tmp_path, text, ("solution", "starter"))
    assert load_exercise(folder).validate.mutants[0].env == {"WORKERS": "1"}
    bad = make_exercise(tmp_path, text.replace("WORKERS", "workers"), ("solution", "starter"), name="bad")
    assert [problem.split("bad/", 1)[1] for problem in problems_of(bad)] == [
        "exercise.yaml:7: validate.mutants[0].env.workers: expected an environment variable name like WORKERS "
        "(upper case, digits, '_'), found 'workers'"]


def test_docroot_is_resolved_against_the_exercise_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_exercise(tmp_path, "title: Hello\nmodel: event-loop\ndocroot: files/www\n"
                            "checks:\n  - {name: index, check: http_get}\n", ("files/www",))
    monkeypatch.chdir(tmp_path)
    ex = load_exercise(Path("hello"))
    assert ex.dir == Path("hello") and ex.docroot == Path("hello/files/www")
    assert ex.docroot.is_dir()


def test_checks_py_registers_a_custom_check(tmp_path: Path) -> None:
    folder = make_exercise(tmp_path, "title: Custom\nmodel: blocking\nchecks:\n"
                                     "  - name: banner\n    check: banner_says\n    params: {word: hello}\n")
    (folder / "checks.py").write_text(
        "from labctl.checks import CheckParams, Outcome, check\n\n"
        "class BannerParams(CheckParams):\n    word: str\n    times: int = 1\n\n"
        "@check('banner_says', BannerParams, 'The banner says a word.', default_timeout=7)\n"
        "def banner_says(ctx, params):\n    return Outcome(True, 'ok')\n", encoding="utf-8")
    ex = load_exercise(folder)
    (banner,) = ex.checks
    assert banner.check == "banner_says" and banner.budget == 7.0
    assert type(banner.params).__name__ == "BannerParams"
    assert (banner.params.word, banner.params.times) == ("hello", 1)
    assert load_exercise(folder).checks[0].params.word == "hello"  # loading again does not re-register
    (folder / "exercise.yaml").write_text("title: Custom\nmodel: blocking\nchecks:\n"
                                          "  - name: banner\n    check: banner_says\n    params: {times: x}\n")
    assert problems_of(folder) == [
        f"{folder}/exercise.yaml:6: checks[0].params.word: required, but missing",
        f"{folder}/exercise.yaml:6: checks[0].params.times: expected a whole number, found 'x'",
    ]


def test_checks_py_that_fails_to_import_is_a_spec_error(tmp_path: Path) -> None:
    folder = make_exercise(tmp_path, "title: Custom\nmodel: blocking\nchecks:\n  - {name: a, check: http_get}\n")
    (folder / "checks.py").write_text("import os\n\nraise RuntimeError('half written')\n", encoding="utf-8")
    assert problems_of(folder) == [
        f"{folder}/checks.py:3: cannot import the exercise's checks: RuntimeError: half written"]
    (folder / "checks.py").write_text("def broken(:\n    pass\n", encoding="utf-8")
    (problem,) = problems_of(folder)
    assert problem.startswith(f"{folder}/checks.py:1: cannot import the exercise's checks: SyntaxError: ")


def test_missing_exercise_file_is_a_sentence(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [
        f"{tmp_path}/exercise.yaml: no such file: the exercise file was looked for at "
        f"{(tmp_path / 'exercise.yaml').resolve()}"]


def test_find_exercises(tmp_path: Path) -> None:
    for name in ("b-second", "a-first"):
        make_exercise(tmp_path / "exercises", "title: x\n", name=name)
    (tmp_path / "exercises" / "notes").mkdir()
    assert find_exercises(tmp_path) == [tmp_path / "exercises" / "a-first", tmp_path / "exercises" / "b-second"]
    assert find_exercises(tmp_path / "nowhere") == []


# -- the model built from the registry -------------------------------------------------------------

def test_exercise_model_follows_the_registry(registry: dict) -> None:
    model = exercise_model()
    assert issubclass(model, Exercise) and exercise_model() is model  # cached while the registry holds
    del registry["file_digest"]
    smaller = exercise_model()
    assert smaller is not model
    with pytest.raises(ValidationError):
        smaller.model_validate({"title": "t", "model": "other", "checks": [{"name": "a", "check": "file_digest",
                                                                            "params": {"file": "x"}}]})


def test_models_built_in_python_validate_params_by_the_check() -> None:
    """Other modules (and tests) build exercises directly; the base models check the same things."""
    spec = CheckSpec(name="index", check="http_get", params={"path": "/a"})
    assert spec.params == HttpGetParams(path="/a") and spec.budget == 10.0
    ex = Exercise(title="t", model="blocking", checks=[spec, {"name": "b", "check": "many_clients"}])
    assert isinstance(ex.checks[1].params, ManyClientsParams) and ex.max_points == 2.0
    with pytest.raises(ValidationError):
        CheckSpec(name="index", check="http_get", params={"pth": "/a"})
    with pytest.raises(ValidationError):
        CheckSpec(name="index", check="htp_get")
    with pytest.raises(ValidationError):
        Exercise(title="t", model="blocking", checks=[spec, spec])
    with pytest.raises(ValidationError):
        MutantSpec(path="m", not_gradable=True, fails=["index"])


# -- the JSON Schema ----------------------------------------------------------------------------

def test_schema_has_each_checks_params_under_its_discriminator() -> None:
    schema = exercise_json_schema()
    assert schema["title"] == "labctl exercise" and schema["description"]
    assert schema["additionalProperties"] is False
    assert {"title", "model", "checks"} <= set(schema["required"])
    assert "id" not in schema["properties"] and "dir" not in schema["properties"]
    items = schema["properties"]["checks"]["items"]
    assert schema["properties"]["checks"]["minItems"] == 1
    assert items["discriminator"]["propertyName"] == "check"
    mapping = items["discriminator"]["mapping"]
    assert set(mapping) == set(FAKES)
    for name, (params, summary, timeout) in FAKES.items():
        member = schema["$defs"][mapping[name].removeprefix("#/$defs/")]
        assert member["properties"]["check"]["const"] == name
        assert member["description"] == summary
        assert f"{timeout:g}" in member["properties"]["timeout"]["description"]
        params_ref = member["properties"]["params"]["$ref"]
        params_schema = schema["$defs"][params_ref.removeprefix("#/$defs/")]
        assert set(params_schema["properties"]) == set(params.model_fields)
        assert params_schema["additionalProperties"] is False
    assert schema["$defs"]["ManyClientsCheck"]["properties"]["params"]["$ref"].endswith("ManyClientsParams")
    assert schema["$defs"]["ManyClientsParams"]["properties"]["clients"]["maximum"] == 100


def test_schema_accepts_a_good_exercise_and_rejects_bad_params() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(exercise_json_schema())
    validator.check_schema(validator.schema)
    assert list(validator.iter_errors(yaml.safe_load(FULL))) == []
    bad = yaml.safe_load(FULL)
    bad["checks"][1]["params"] = {"clients": 500}
    assert [list(error.absolute_path) for error in validator.iter_errors(bad)] == [["checks", 1]]


# -- broken exercises: exact messages -------------------------------------------------------------

def test_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 12
    for folder in BROKEN:
        assert expected_problems(folder), f"{folder.name} has no '# expect:' line"


@pytest.mark.parametrize("folder", BROKEN, ids=[folder.name for folder in BROKEN])
def test_broken_exercise_reports_exact_lines(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)  # messages carry the path as given: broken_exercises/<name>/exercise.yaml
    assert problems_of(Path("broken_exercises") / folder.name) == expected_problems(folder)


def test_every_problem_is_one_plain_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    for folder in BROKEN:
        for problem in problems_of(Path("broken_exercises") / folder.name):
            assert re.match(r"^broken_exercises/[\w.]+/exercise\.yaml:\d+: \S", problem), problem
            assert "\n" not in problem and "Traceback" not in problem and "pydantic" not in problem


def test_an_exercise_brings_its_own_image_or_names_one_of_the_projects(tmp_path: Path) -> None:
    project = tmp_path / "course"
    for image in ("base", "server", "server-node"):
        (project / "images" / image).mkdir(parents=True)
        (project / "images" / image / "Dockerfile").write_text("FROM scratch\n")
    named = make_exercise(project / "exercises", "title: T\nmodel: event-loop\nsubmission: {image: server-node}\n"
                          "checks:\n  - {name: a, check: http_get}\n", name="named")
    assert load_exercise(named).server_image() == ("server-node", {})
    own = make_exercise(project / "exercises", "title: T\nmodel: event-loop\nsubmission: {image: ./image}\n"
                        "checks:\n  - {name: a, check: http_get}\n", folders=("image",), name="own")
    (own / "image" / "Dockerfile").write_text("ARG BASE=labctl-server\nFROM ${BASE}\n")
    assert load_exercise(own).server_image() == ("exercise-own", {"exercise-own": own / "image"})
    missing = make_exercise(project / "exercises", "title: T\nmodel: event-loop\nsubmission: {image: server-go}\n"
                            "checks:\n  - {name: a, check: http_get}\n", name="missing")
    [problem] = problems_of(missing)
    assert problem.endswith("submission.image: expected an image of "
                            f"{(project / 'images').resolve()} (server, server-node), or ./folder for the exercise's "
                            "own, found 'server-go'"), problem
    no_dockerfile = make_exercise(project / "exercises", "title: T\nmodel: event-loop\nsubmission: {image: ./img}\n"
                                  "checks:\n  - {name: a, check: http_get}\n", folders=("img",), name="nodockerfile")
    assert "expected ./folder holding a Dockerfile, found './img' (no " in problems_of(no_dockerfile)[0]
