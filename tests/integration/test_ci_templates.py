"""The CI templates' steps, run here in order, in a student repository made the way an instructor makes one.

The repository is `labctl export --student` of this project, written fresh for each run (a checkout is a fresh
copy), with `labctl ci github|gitlab blocking` in it; the submission is the starter the student edits in place
(exercises/blocking/starter: it fails 5 checks), or the reference solution copied over it (it passes all).
Each step's script runs in bash in that folder, with the variables the CI sets; what only the CI service can do
is replaced by its local equivalent, each named below (LOCAL_ACTIONS, and the GitLab notes in run_gitlab_job).
The pip install in the steps is the real one (a fresh virtual environment, labctl installed from the
repository: about 10 s here with pip's cache). One lab per run: three gradings of about 15 s each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from conftest import OWNER, ROOT

from labctl.authoring import export_student
from labctl.images import image_tags

EXERCISE = "blocking"
STEP_TIMEOUT = 600
#: The python a setup-python step would put on PATH (as `python`): this machine's own, not a virtualenv.
THIS_PYTHON = Path(sys.base_prefix) / "bin" / "python3"


@dataclass
class Step:
    """What happened to one step of a job: whether it ran, its exit code, its output, what it said."""

    name: str
    ran: bool
    exit_code: int = 0
    output: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    note: str = ""


@dataclass
class Job:
    steps: list[Step]
    artifacts: Path

    def step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    @property
    def failed(self) -> bool:
        return any(step.exit_code != 0 for step in self.steps)


def student_repository(folder: Path, platform: str, solved: bool) -> Path:
    """A student repository: the handout, its CI configuration, the student's server (the starter, or the
    reference solution copied over it)."""
    export_student(ROOT, folder)
    written = subprocess.run([sys.executable, "-m", "labctl", "--project", str(folder), "ci", platform, EXERCISE],
                             capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    if solved:
        starter = folder / "exercises" / EXERCISE / "starter"
        shutil.rmtree(starter)
        shutil.copytree(ROOT / "exercises" / EXERCISE / "solution", starter)
    return folder


def tool_path(tmp: Path) -> str:
    """PATH for the steps: `python` is this machine's python (setup-python's job), then the system's folders
    (docker's CLI among them); no virtual environment of the developer's."""
    bin_dir = tmp / "setup-python-bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "python3"):
        if not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(THIS_PYTHON)
    return os.pathsep.join([str(bin_dir), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def base_env(tmp: Path) -> dict[str, str]:
    env = {"PATH": tool_path(tmp), "HOME": os.environ.get("HOME", str(tmp)), "LANG": "C.UTF-8", "CI": "true"}
    env.update({key: os.environ[key] for key in ("DOCKER_HOST",) if key in os.environ})  # this machine's engine
    return env


def run_script(script: str, cwd: Path, env: dict[str, str], shell: list[str]) -> tuple[int, str]:
    result = subprocess.run([*shell, script], cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    return result.returncode, result.stdout + result.stderr


# -- GitHub Actions ----------------------------------------------------------------------------------

EXPRESSION = re.compile(r"\$\{\{\s*([\w.-]+)\s*\}\}")
CONDITION = re.compile(r"^steps\.([\w-]+)\.outputs\.([\w-]+) (==|!=) '([^']*)'$")


def expand(text: str, context: dict[str, str]) -> str:
    """`${{ name }}` replaced by its value; a name this runner does not know fails the test (a new expression
    in the template needs a value here)."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        assert name in context, f"the template uses ${{{{ {name} }}}}, which this test's runner does not provide"
        return context[name]
    return EXPRESSION.sub(value, text)


def should_run(condition: str | None, context: dict[str, str], failed: bool) -> bool:
    """GitHub's `if:`: none is success(); always() runs after a failure too; a comparison of a step's output
    is ANDed with success(), as GitHub does when a condition names no status function."""
    if condition is None:
        return not failed
    if condition == "always()":
        return True
    match = CONDITION.match(condition.strip())
    assert match, f"an if: this test's runner cannot evaluate: {condition!r}"
    step_id, output, operator, expected = match.groups()
    actual = context.get(f"steps.{step_id}.outputs.{output}", "")
    return not failed and ((actual == expected) == (operator == "=="))


def read_outputs(path: Path) -> dict[str, str]:
    """A GITHUB_OUTPUT file: name=value lines (and name<<DELIMITER blocks)."""
    outputs: dict[str, str] = {}
    lines = iter(path.read_text().splitlines()) if path.exists() else iter(())
    for line in lines:
        if "<<" in line and "=" not in line.split("<<")[0]:
            name, delimiter = line.split("<<", 1)
            outputs[name] = "\n".join(iter(lambda: next(lines), delimiter))
        elif "=" in line:
            name, value = line.split("=", 1)
            outputs[name] = value
    return outputs


def place(source: Path, target: Path) -> None:
    """A cache entry in or out: a hard link where it can be (the images' tarball is hundreds of MB), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@dataclass
class Actions:
    """The local equivalent of each action a template uses, on one job's folders."""

    workspace: Path
    cache: Path
    artifacts: Path

    def checkout(self, inputs: dict[str, str]) -> tuple[dict[str, str], str]:
        return {}, "checkout: the workspace is a fresh copy of the student repository already"

    def setup_python(self, inputs: dict[str, str]) -> tuple[dict[str, str], str]:
        return {}, f"setup-python {inputs.get('python-version')}: this machine's {THIS_PYTHON} is `python` on PATH"

    def _entry(self, key: str) -> Path:
        return self.cache / re.sub(r"[^\w.+-]", "_", key)

    def cache_restore(self, inputs: dict[str, str]) -> tuple[dict[str, str], str]:
        entry, path = self._entry(inputs["key"]), Path(inputs["path"])
        if not entry.exists():
            return {"cache-hit": "false", "cache-primary-key": inputs["key"]}, f"cache miss: {inputs['key']}"
        place(entry, path)
        return {"cache-hit": "true", "cache-primary-key": inputs["key"],
                "cache-matched-key": inputs["key"]}, f"cache hit: {inputs['key']}"

    def cache_save(self, inputs: dict[str, str]) -> tuple[dict[str, str], str]:
        entry, path = self._entry(inputs["key"]), Path(inputs["path"])
        assert path.is_file(), f"actions/cache/save: nothing at {path} to save"
        place(path, entry)
        return {}, f"cache saved: {inputs['key']}"

    def upload_artifact(self, inputs: dict[str, str]) -> tuple[dict[str, str], str]:
        source = self.workspace / inputs["path"]
        files = sorted(path for path in source.rglob("*") if path.is_file()) if source.is_dir() else []
        assert files or inputs.get("if-no-files-found") != "error", f"upload-artifact: no files at {source}"
        target = self.artifacts / inputs["name"]
        for path in files:
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.relative_to(source))
        return {}, f"artifact {inputs['name']}: {len(files)} file(s)"


#: action -> its local stand-in (each says, in its note, what it did instead).
LOCAL_ACTIONS: dict[str, Callable[[Actions, dict[str, str]], tuple[dict[str, str], str]]] = {
    "actions/checkout@v4": Actions.checkout,
    "actions/setup-python@v5": Actions.setup_python,
    "actions/cache/restore@v4": Actions.cache_restore,
    "actions/cache/save@v4": Actions.cache_save,
    "actions/upload-artifact@v4": Actions.upload_artifact,
}


def run_github_job(workspace: Path, cache: Path, tmp: Path, run_id: str) -> Job:
    """The workflow's one job for EXERCISE, its steps in order, as a runner would run them."""
    workflow = yaml.safe_load((workspace / ".github" / "workflows" / "labctl.yml").read_text())
    job = workflow["jobs"]["grade"]
    (exercise,) = job["strategy"]["matrix"]["exercise"]
    runner_temp = tmp / "runner-temp"
    runner_temp.mkdir()
    context = {"matrix.exercise": exercise, "github.run_id": run_id, "github.run_attempt": "1",
               "runner.temp": str(runner_temp), "runner.os": "Linux"}
    env = {**base_env(tmp), "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(workspace),
           "RUNNER_TEMP": str(runner_temp), "RUNNER_OS": "Linux"}
    env.update({name: expand(str(value), context) for name, value in job["env"].items()})
    actions = Actions(workspace, cache, tmp / "artifacts")
    steps: list[Step] = []
    for number, spec in enumerate(job["steps"]):
        failed = any(step.exit_code != 0 for step in steps)
        step = Step(spec["name"], ran=should_run(spec.get("if"), context, failed))
        steps.append(step)
        if not step.ran:
            continue
        if "uses" in spec:
            inputs = {name: expand(str(value), context) for name, value in spec.get("with", {}).items()}
            step.outputs, step.note = LOCAL_ACTIONS[spec["uses"]](actions, inputs)
        else:
            output_file, summary_file = runner_temp / f"output-{number}", runner_temp / f"summary-{number}"
            step_env = {**env, "GITHUB_OUTPUT": str(output_file), "GITHUB_STEP_SUMMARY": str(summary_file),
                        **{name: expand(str(value), context) for name, value in spec.get("env", {}).items()}}
            # GitHub's default shell for run: on Linux: bash -e {0}, the script in a file.
            script = runner_temp / f"step-{number}.sh"
            script.write_text(expand(spec["run"], context))
            bash = ["bash", "--noprofile", "--norc", "-e"]
            step.exit_code, step.output = run_script(str(script), workspace, step_env, bash)
            step.outputs = read_outputs(output_file)
            step.summary = summary_file.read_text() if summary_file.exists() else ""
        if "id" in spec:
            context.update({f"steps.{spec['id']}.outputs.{name}": value for name, value in step.outputs.items()})
    return Job(steps, actions.artifacts)


def remove_labs(backend, owner: str) -> None:
    from labctl.lab import LABEL_OWNER

    backend.remove({LABEL_OWNER: owner})


def test_the_github_workflow_grades_caches_the_images_and_reports_a_failing_grade_too(tmp_path, project, backend):
    run_id = OWNER.replace("pytest-", "")
    owner = f"github-{run_id}-1-{EXERCISE}"
    cache = tmp_path / "actions-cache"
    try:
        solved = run_github_job(student_repository(tmp_path / "first" / "repo", "github", solved=True), cache,
                                tmp_path / "first", run_id)
        starter = run_github_job(student_repository(tmp_path / "second" / "repo", "github", solved=False), cache,
                                 tmp_path / "second", run_id)
    finally:
        remove_labs(backend, owner)
    log = "\n\n".join(f"[{job}] {step.name}: ran={step.ran} exit={step.exit_code} {step.note}\n{step.output[-2500:]}"
                      for job, run in (("solved", solved), ("starter", starter)) for step in run.steps)

    # The tags step: the key is the real content hashes of the images a blocking grading runs on.
    tags = image_tags(ROOT / "images")
    wanted = [tags["base"], tags["server"], tags["tools"]]
    for run in (solved, starter):
        assert run.step("Image tags").outputs == {"tags": " ".join(wanted),
                                                  "key": "labctl-images-Linux-" + "+".join(wanted)}, log

    # First run: a miss, the images built (here: found up to date) and saved, before the grade; a pass, exit 0.
    assert solved.step("Restore the images from the cache").note.startswith("cache miss"), log
    assert not solved.step("Load the cached images").ran
    assert solved.step("Build the images (not in the cache yet)").exit_code == 0, log
    assert solved.step("Save the images in the cache").note.startswith("cache saved"), log
    grade = solved.step("Grade (the public checks)")
    assert grade.exit_code == 0, log
    assert "Score: 13/13 points" in grade.summary, log
    assert not solved.failed, log

    # Second run: a hit, the images loaded with docker load, nothing built or saved; the starter fails (exit 1)
    # and the steps that must run after a failing grade ran.
    assert starter.step("Restore the images from the cache").note.startswith("cache hit"), log
    assert starter.step("Load the cached images").exit_code == 0, log
    assert "Loaded image" in starter.step("Load the cached images").output, log
    assert not starter.step("Build the images (not in the cache yet)").ran
    assert not starter.step("Save the images in the cache").ran
    grade = starter.step("Grade (the public checks)")
    assert grade.exit_code == 1, log
    assert "## ❌ labctl blocking" in grade.summary and "Score: 7/13 points" in grade.summary, log
    assert "::error title=labctl blocking%3A get-index (failed)::" in grade.output, log
    for name in ("Upload the reports", "Remove the labs"):
        assert starter.step(name).ran and starter.step(name).exit_code == 0, log

    reports = starter.artifacts / f"labctl-reports-{EXERCISE}"
    suite = ET.parse(reports / "junit.xml").getroot()
    assert "7/13" in ET.tostring(suite, encoding="unicode"), log
    assert (reports / "report.json").is_file()
    assert backend.find_containers({"labctl.owner": owner}) == [], "a lab outlived its job"


# -- GitLab CI ---------------------------------------------------------------------------------------

#: dind's variables: the job reaches this machine's engine instead (DOCKER_HOST as this process has it, or the
#: local socket), which speaks no TLS.
DIND_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_CERTDIR", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


def gitlab_variables(variables: dict[str, str], env: dict[str, str]) -> dict[str, str]:
    """Job variables as the runner passes them: $NAME and ${NAME} of earlier variables expanded."""
    known = dict(env)
    for name, value in variables.items():
        known[name] = re.sub(r"\$\{?(\w+)\}?", lambda match: known.get(match.group(1), ""), str(value))
    return {name: known[name] for name in variables}


def run_gitlab_job(workspace: Path, tmp: Path, job_id: str) -> tuple[int, str, dict]:
    """The job for EXERCISE: before_script and script in one shell that stops at the first failing command
    (as GitLab's runner does), in CI_PROJECT_DIR, with the job's variables and its matrix value. Not run here:
    the `image:` (this machine is the job's machine, this python its python) and the docker:dind service
    (this machine's engine is the job's engine)."""
    config = yaml.safe_load((workspace / ".gitlab-ci.yml").read_text())
    job = config["grade"]
    ((name, (exercise,)),) = job["parallel"]["matrix"][0].items()
    env = {**base_env(tmp), "GITLAB_CI": "true", "CI_PROJECT_DIR": str(workspace), "CI_JOB_ID": job_id, name: exercise}
    variables = gitlab_variables(job["variables"], env)
    env.update({key: value for key, value in variables.items() if key not in DIND_VARIABLES})
    script = "\n".join([*job["before_script"], *job["script"]])
    code, output = run_script(script, workspace, env, ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"])
    return code, output, job


def test_the_gitlab_job_grades_and_leaves_its_junit_report_when_a_check_fails(tmp_path, project, backend):
    job_id = OWNER.replace("pytest-", "").replace("-", "")
    workspace = student_repository(tmp_path / "repo", "gitlab", solved=False)
    try:
        code, output, job = run_gitlab_job(workspace, tmp_path, job_id)
    finally:
        remove_labs(backend, f"gitlab-{job_id}")
    assert job["variables"]["DOCKER_HOST"] == "tcp://docker:2376"  # what the job would talk to: dind
    assert code == 1, output[-4000:]
    assert job["artifacts"]["when"] == "always", "the reports of a failing job are the ones a student needs"
    (junit,) = workspace.glob(job["artifacts"]["reports"]["junit"])
    assert "7/13" in junit.read_text()
    for pattern in job["artifacts"]["paths"]:
        assert (workspace / pattern / EXERCISE / "report.json").is_file()
    assert "score 7/13 points" in output, output[-4000:]
