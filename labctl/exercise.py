"""Typed model of exercise.yaml: what the student's server must do, and how it is graded.

An exercise is a folder `exercises/<id>/` holding `exercise.yaml` and what it ships (a docroot,
the instructor's solution, starter and mutants, optionally a `checks.py` with custom checks):

```yaml
title: A threaded file server
model: threaded
submission: {run: python3 server.py, port: 8080}
docroot: www
checks:
  - name: index
    check: http
    points: 2
    params: {path: /index.html, expect: {status: 200, file: index.html}}
validate:
  mutants:
    - path: mutants/blocking
      fails: [slow-client]
      why: serves one client at a time
```

Each check names a catalog check (`labctl.checks.REGISTRY`) and gives that check's parameters,
validated by the check's own model. `exercise_model()` builds the model from the registry as it is
now: `checks` is a union discriminated by `check`, so a mistake in parameters is reported against
that check's fields, and the JSON Schema lets an editor complete the parameters of each check.
Errors are `file:line: field.path: expected X, found Y` lines, like lab.yaml's (`labctl.spec_errors`).
"""

from __future__ import annotations

import re
import traceback
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails

from labctl import models
from labctl.backends.base import Feature
from labctl.checks import REGISTRY, CheckDef, CheckParams, load_catalog, load_exercise_checks
from labctl.errors import SpecError
from labctl.impairment import Impairment
from labctl.spec import DEFAULT_PORT, ENV_NAME, Port, Sysctls
from labctl.spec_errors import (
    SpecModel,
    broken_rule,
    did_you_mean,
    expected,
    field_of,
    load_model,
    one_of,
    with_rules,
)

__all__ = ["CheckSpec", "Exercise", "MutantSpec", "SubmissionSpec", "ValidateSpec", "exercise_json_schema",
           "exercise_model", "find_exercises", "load_exercise"]

EXERCISE_FILE = "exercise.yaml"
CHECKS_FILE = "checks.py"
CHECK_NAME = r"^[a-z0-9][a-z0-9-]*$"
_CHECK_NAME = re.compile(CHECK_NAME)
_DIR = "exercise_dir"  # validation context: the exercise's folder, for relative paths

Visibility = Literal["public", "hidden"]

# `validate` is the natural word in exercise.yaml; on a model it shadows BaseModel.validate (a
# deprecated classmethod), which pydantic warns about. The field wins on instances, as wanted.
warnings.filterwarnings("ignore", message=r'Field name "validate" in ".*" shadows an attribute',
                        category=UserWarning)


# -- field types ---------------------------------------------------------------------------------

def _check_name(name: str) -> str:
    if not _CHECK_NAME.fullmatch(name):
        raise expected("a check name: a lowercase letter or digit, then lowercase letters, digits or '-'")
    return name


def _folder(value: Any, info: ValidationInfo) -> Any:
    """A folder given relative to the exercise folder; when loading from a folder, it must exist there."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise expected("a folder, relative to the exercise folder")
    if Path(value).is_absolute():
        raise expected("a folder relative to the exercise folder, not an absolute path")
    base = (info.context or {}).get(_DIR)
    if base is not None:
        folder = Path(base) / value
        if not folder.exists():
            raise expected("a folder inside the exercise folder", f" (no such folder: {folder})")
        if not folder.is_dir():
            raise expected("a folder inside the exercise folder", f" ({folder} is a file)")
    return value


def _docroot(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return None
    base = (info.context or {}).get(_DIR)
    relative = _folder(value, info)
    return Path(base) / relative if base is not None else Path(relative)


#: An exercise's server image: a folder of the project's images/ by name, or its own folder ("./image").
SERVER_IMAGE = r"^([a-z0-9][a-z0-9-]{0,40}|\./[A-Za-z0-9_.-][A-Za-z0-9_./-]*)$"


def _server_image(value: Any, info: ValidationInfo) -> Any:
    """A name of the project's images/ folders, or ./folder (the exercise's own, with a Dockerfile);
    checked to exist when loading from a folder inside a project."""
    if not isinstance(value, str) or not re.fullmatch(SERVER_IMAGE, value) or ".." in value.split("/"):
        raise expected("the name of an image folder of images/ (like server or server-c), or ./folder for the "
                       "exercise's own image")
    base = (info.context or {}).get(_DIR)
    if base is None:
        return value
    if value.startswith("./"):
        if not (Path(base) / value / "Dockerfile").is_file():
            raise expected("./folder holding a Dockerfile", f" (no {Path(base) / value / 'Dockerfile'})")
        return value
    images = Path(base).resolve().parent.parent / "images"
    if images.is_dir() and not (images / value / "Dockerfile").is_file():
        known = sorted(path.parent.name for path in images.glob("*/Dockerfile") if path.parent.name != "base")
        raise expected(f"an image of {images} ({', '.join(known)}), or ./folder for the exercise's own", "")
    return value


CheckName = Annotated[str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": CHECK_NAME})]
ServerImage = Annotated[str, BeforeValidator(_server_image),
                        WithJsonSchema({"type": "string", "pattern": SERVER_IMAGE})]
Folder = Annotated[str, BeforeValidator(_folder), WithJsonSchema({"type": "string"})]
DocRoot = Annotated[Path | None, BeforeValidator(_docroot),
                    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "null"}]})]


# -- models --------------------------------------------------------------------------------------

class SubmissionSpec(SpecModel):
    """How the student's server is built and run. The submission folder is copied to /submission."""

    image: ServerImage = Field("server", description=(
        "The server's image: a folder of the project's images/ by name (server: Python; server-c: with a C "
        "compiler; any other there), or ./folder, the exercise's own (a Dockerfile whose `ARG BASE=labctl-server` "
        "names its parent: it is built, content-hashed and reused like labctl's)."))
    language: str = Field("python", description="The language of the submission, shown to students.")
    build: str | None = Field(None, description="Shell command run once in /submission before the server "
                                                "starts (like make); null: nothing to build.")
    run: str = Field("python3 server.py", description="Shell command that starts the server, in /submission.")
    port: Port = Field(DEFAULT_PORT, description="The port the server must listen on (also given as $PORT).")
    sysctls: Sysctls = Field(default_factory=dict,
                             description="The server's kernel settings for this exercise (its own network "
                                         "namespace), over those of lab.yaml's server node: like "
                                         "net.ipv4.tcp_syncookies: 0 to turn SYN cookies off.")


class CheckSpec(SpecModel):
    """One graded check: a catalog check with its parameters, points and visibility."""

    # The catalog check's default time budget; set on the classes exercise_model() makes.
    default_timeout: ClassVar[float | None] = None

    name: CheckName = Field(description="The check's name in this exercise (unique; lowercase letters, "
                                        "digits and '-'): reports and mutants refer to it.")
    check: str = Field(description="The catalog check to run (see `labctl checks`).")
    points: float = Field(1.0, ge=0.0, description="Points it is worth.")
    visibility: Visibility = Field("public", description="public: students see and run it; hidden: only in "
                                                         "grading (left out of the student handout).")
    timeout: float | None = Field(None, gt=0.0, description="Seconds this check may take; null: the catalog "
                                                            "check's own default.")
    description: str = Field("", description="What it looks for and why, in words shown to students.")
    impair: Impairment | None = Field(None, description="Run this check under these impairments (delay, jitter, "
                                                        "loss, rate), set on the client and the injector for it "
                                                        "and taken off after it, also when it fails.")
    params: CheckParams = Field(default_factory=dict, validate_default=True,
                                description="The catalog check's parameters.")

    @field_validator("check")
    @classmethod
    def _known_check(cls, check: str) -> str:
        if check not in REGISTRY:
            names = sorted(REGISTRY)
            raise expected(f"one of {one_of(names)}" if names else "a registered check (none is registered)",
                           did_you_mean(check, names))
        return check

    @field_validator("params", mode="before")
    @classmethod
    def _check_params(cls, params: Any, info: ValidationInfo) -> Any:
        """On this base class, validate the parameters with the model of the check named (built from
        Python); the classes of exercise_model() have that model as the field's type already."""
        if cls.model_fields["params"].annotation is not CheckParams:
            return params
        definition = REGISTRY.get(info.data.get("check", ""))
        if definition is None:
            return CheckParams()  # the unknown check is the mistake reported
        if isinstance(params, definition.params):
            return params
        return definition.params.model_validate(params, context=info.context)

    @property
    def needs(self) -> frozenset[Feature]:
        """What it needs of a backend: its catalog check's needs, and a network of the lab's own to be impaired on."""
        definition = REGISTRY.get(self.check)
        needs = definition.needs if definition else frozenset()
        return needs | frozenset({"own_network"}) if self.impair is not None else needs

    @property
    def budget(self) -> float:
        """Seconds this check may take: its own timeout, else the catalog check's default."""
        if self.timeout is not None:
            return self.timeout
        if self.default_timeout is not None:
            return self.default_timeout
        definition = REGISTRY.get(self.check)
        return definition.default_timeout if definition else 30.0


class MutantSpec(SpecModel):
    """A wrong server the exercise must catch: grading it must fail exactly the checks named."""

    path: Folder = Field(description="Its folder, relative to the exercise folder.")
    not_gradable: bool = Field(False, description="true: it must not even be gradable (never listens, "
                                                  "crashes at start); then fails stays empty.")
    fails: list[str] = Field(default_factory=list, validate_default=True,
                             description="Names of this exercise's checks it must fail (all others pass).")
    why: str = Field("", description="What is wrong with it, in words.")
    env: dict[Annotated[str, StringConstraints(pattern=ENV_NAME)], str] = Field(
        default_factory=dict,
        description="Environment variables for its server: a mutant can be another folder's server with "
                    "one setting changed (e.g. the solution with WORKERS: '1'), instead of a copy of it.")

    @field_validator("fails")
    @classmethod
    def _fails_or_not_gradable(cls, fails: list[str], info: ValidationInfo) -> list[str]:
        not_gradable = info.data.get("not_gradable")
        if not_gradable and fails:
            raise expected("no fails when not_gradable is true (no check runs on a server that cannot "
                           "be graded)")
        if not_gradable is False and not fails:
            raise expected("the names of the checks this mutant must fail (or not_gradable: true)")
        return fails


class ValidateSpec(SpecModel):
    """For `labctl validate` (instructors only; left out of student handouts): the solution passes every
    check, the starter fails or is not gradable, each mutant fails exactly its checks."""

    solution: Folder = Field("solution", validate_default=True,
                             description="Folder of the instructor's solution, relative to the exercise.")
    starter: Folder = Field("starter", validate_default=True,
                            description="Folder of the code students start from, relative to the exercise.")
    mutants: list[MutantSpec] = Field(default_factory=list, description="Wrong servers the checks must catch.")


class Exercise(SpecModel):
    """A labctl exercise: the server students write, the checks that grade it, and how to validate them."""

    model_config = ConfigDict(title="labctl exercise")

    id: SkipJsonSchema[str] = ""  # the folder's name, filled when loaded from a folder
    dir: SkipJsonSchema[Path] = Path(".")  # the folder itself
    title: str = Field(description="The exercise's title, shown to students.")
    model: models.Expected = Field(description="The I/O model the server must have: blocking, thread-per-connection, "
                                               "thread-pool, fork-per-connection, prefork, event-loop, "
                                               "event-loop-workers, event-loop-threads, or a family: threaded, "
                                               "forking, event-driven (labctl.models).")
    summary: str = Field("", description="What to build, in a few sentences for students.")
    submission: SubmissionSpec = Field(default_factory=SubmissionSpec)
    docroot: DocRoot = Field(None, description="Folder of files the server serves, relative to the exercise "
                                               "folder; copied to /srv/www in the server.")
    budget: float = Field(300.0, gt=0.0, description="Seconds the whole grading may take.")
    checks: list[CheckSpec] = Field(description="The graded checks, in the order they run.",
                                    json_schema_extra={"minItems": 1})
    # The key instructors write is `validate`; it shadows pydantic's deprecated BaseModel.validate.
    validate: ValidateSpec | None = Field(None, description="Instructors only: the solution, starter and "  # type: ignore[assignment]
                                                            "mutants `labctl validate` grades.")

    @model_validator(mode="wrap")
    @classmethod
    def _from_folder(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        """Take id and dir from the folder loaded, and check the rules across fields on the raw data
        so they are reported together with every other mistake. (Returns the Exercise; typed Any because
        mypy, seeing Exercise through the checks' import cycle, infers pydantic's model type as Never.)"""
        folder = (info.context or {}).get(_DIR)
        problems = _exercise_rules(data, folder)
        if folder is not None and isinstance(data, dict):
            data = {key: value for key, value in data.items() if key not in ("id", "dir")}
            data.update(id=Path(folder).name, dir=Path(folder))
        return with_rules(handler, data, problems, cls.__name__)

    @field_validator("checks")
    @classmethod
    def _at_least_one(cls, checks: list[CheckSpec]) -> list[CheckSpec]:
        if not checks:
            raise expected("at least one check (a list of entries with name, check and params)")
        return checks

    def server_image(self) -> tuple[str, dict[str, Path]]:
        """(the server image's name, the exercise's own image to add to images/: name -> folder)."""
        image = self.submission.image
        if image.startswith("./"):
            name = f"exercise-{self.id}"
            return name, {name: self.dir / image}
        return image, {}

    @property
    def public_checks(self) -> list[CheckSpec]:
        return [check for check in self.checks if check.visibility == "public"]

    @property
    def hidden_checks(self) -> list[CheckSpec]:
        return [check for check in self.checks if check.visibility == "hidden"]

    @property
    def max_points(self) -> float:
        return sum(check.points for check in self.checks)


def _exercise_rules(data: Any, folder: Any) -> list[InitErrorDetails]:
    """Rules across fields: check names differ, mutants name checks that exist, id/dir come from the folder."""
    if not isinstance(data, dict):
        return []
    problems: list[InitErrorDetails] = []

    def add(loc: tuple[Any, ...], value: Any, message: str) -> None:
        problems.append(broken_rule(loc, value, message))

    if folder is not None:
        if "id" in data:
            add(("id",), data["id"], f"unknown field: an exercise is named by its folder (here "
                                     f"{Path(folder).name!r})")
        if "dir" in data:
            add(("dir",), data["dir"], "unknown field: an exercise's files are found in the folder of its "
                                       "exercise.yaml")
    names: dict[str, int] = {}
    checks = data.get("checks")
    for index, item in enumerate(checks if isinstance(checks, list) else []):
        name = field_of(item, "name")
        if not isinstance(name, str):
            continue
        if name in names:
            add(("checks", index, "name"), name, f"expected a name no other check has, found {name!r} "
                                                 f"(checks[{names[name]}] is named so too)")
        else:
            names[name] = index
    mutants = field_of(data.get("validate"), "mutants")
    for index, mutant in enumerate(mutants if isinstance(mutants, list) and names else []):
        fails = field_of(mutant, "fails")
        for position, name in enumerate(fails if isinstance(fails, list) else []):
            if isinstance(name, str) and name not in names:
                add(("validate", "mutants", index, "fails", position), name,
                    f"expected the name of a check of this exercise ({one_of(list(names))}), found "
                    f"{name!r}{did_you_mean(name, names)}")
    return problems


# -- the model built from the registry -------------------------------------------------------------

# Registry content -> model; the key holds the CheckDefs themselves (equal content, same model).
_MODELS: dict[tuple[tuple[str, CheckDef], ...], type[Exercise]] = {}


def exercise_model() -> type[Exercise]:
    """The Exercise model for the checks registered now: `checks` items are a union discriminated by
    `check`, each member with that check's parameter model (cached per registry content)."""
    key = tuple(sorted(REGISTRY.items(), key=lambda item: item[0]))
    if key not in _MODELS:
        members = [_check_model(definition) for _, definition in key]
        if not members:
            item: Any = CheckSpec
        elif len(members) == 1:
            item = members[0]
        else:
            item = Annotated[Union[tuple(members)], Field(discriminator="check")]  # noqa: UP007  (made at run time)
        field = Exercise.model_fields["checks"]
        _MODELS[key] = create_model(
            "Exercise", __base__=Exercise, __module__=__name__, __doc__=Exercise.__doc__,
            checks=(list[item], Field(description=field.description, json_schema_extra={"minItems": 1})))
    return _MODELS[key]


def _check_model(definition: CheckDef) -> type[CheckSpec]:
    """CheckSpec for one catalog check: `check` is its name, `params` its parameter model."""
    words = [part for part in re.split(r"[^A-Za-z0-9]+", definition.name) if part]
    class_name = "".join(word[:1].upper() + word[1:] for word in words) + "Check"
    model = create_model(
        class_name, __base__=CheckSpec, __module__=__name__, __doc__=definition.summary,
        check=(Literal[definition.name], Field(description="The catalog check to run.")),  # type: ignore[arg-type]  # a Literal made at run time
        timeout=(float | None, Field(None, gt=0.0, description=f"Seconds this check may take; null: the "
                                                               f"check's default, {definition.default_timeout:g}.")),
        params=(definition.params, Field(default_factory=dict, validate_default=True,
                                         description=f"Parameters of {definition.name}.")),
    )
    model.default_timeout = definition.default_timeout
    return model


def exercise_json_schema() -> dict[str, Any]:
    """The JSON Schema of exercise.yaml for the checks registered now (call load_catalog() first)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **exercise_model().model_json_schema()}


# -- loading -------------------------------------------------------------------------------------

_IMPORTED: dict[Path, frozenset[str]] = {}  # checks.py -> the check names it registered


def load_exercise(folder: str | Path) -> Exercise:
    """Read `folder/exercise.yaml` (after the catalog and the folder's checks.py register their checks);
    raise SpecError listing every mistake as `file:line: field: ...`."""
    folder = Path(folder)
    load_catalog()
    if (folder / CHECKS_FILE).is_file():
        _import_checks(folder / CHECKS_FILE)
    return load_model(folder / EXERCISE_FILE, exercise_model(), "exercise", context={_DIR: folder})


def find_exercises(root: str | Path) -> list[Path]:
    """The exercise folders of a project: root/exercises/*/ holding an exercise.yaml, sorted."""
    return sorted(path.parent for path in (Path(root) / "exercises").glob(f"*/{EXERCISE_FILE}"))


def _import_checks(path: Path) -> None:
    """Import an exercise's checks.py once (again only if its checks left the registry)."""
    key = path.resolve()
    if key in _IMPORTED and _IMPORTED[key] <= REGISTRY.keys():
        return
    before = set(REGISTRY)
    try:
        load_exercise_checks(path)
    except Exception as error:  # noqa: BLE001  (any mistake in the instructor's code is reported)
        line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
        if line is None:
            frames = [frame for frame in traceback.extract_tb(error.__traceback__)
                      if Path(frame.filename).resolve() == key]
            line = frames[-1].lineno if frames else 1
        raise SpecError([f"{path}:{line}: cannot import the exercise's checks: {type(error).__name__}: "
                         f"{error}"]) from None
    _IMPORTED[key] = frozenset(set(REGISTRY) - before)
