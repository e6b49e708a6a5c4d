"""`labctl ci github|gitlab` and `labctl images tags`, without an engine: the YAML written parses, its steps come
in order, the steps that must survive a failing grade run always, the cache key is the real image tags, and an
existing file is not overwritten. tests/integration/test_ci_templates.py runs the steps themselves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from labctl import ci_templates
from labctl.authoring import export_student
from labctl.cli import main
from labctl.errors import LabctlError
from labctl.images import image_tags
from labctl.project import Project

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = Project(ROOT).exercise_ids()


def invoke(*args: str):
    return CliRunner().invoke(main, ["--project", str(ROOT), *args])


def github(*args: str) -> dict:
    result = invoke("ci", "github", "-o", "-", *args)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def gitlab(*args: str) -> dict:
    result = invoke("ci", "gitlab", "-o", "-", *args)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def steps_by_name(workflow: dict) -> dict[str, dict]:
    return {step["name"]: step for step in workflow["jobs"]["grade"]["steps"]}


# -- GitHub ------------------------------------------------------------------------------------------

def test_the_github_workflow_runs_on_push_and_pull_request_with_one_job_per_exercise():
    workflow = github()
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    job = workflow["jobs"]["grade"]
    assert job["strategy"]["matrix"]["exercise"] == EXERCISES
    assert job["strategy"]["fail-fast"] is False
    assert job["env"]["EXERCISE"] == "${{ matrix.exercise }}"


def test_a_named_exercise_is_the_only_one_graded():
    assert github("polling")["jobs"]["grade"]["strategy"]["matrix"]["exercise"] == ["polling"]
    assert gitlab("polling")["grade"]["parallel"]["matrix"] == [{"EXERCISE": ["polling"]}]


def test_the_github_steps_come_in_order_with_the_actions_pinned_to_their_major_versions():
    names = list(steps_by_name(github()))
    assert names == ["Check out the repository", "Set up Python", "Install labctl (from this repository)",
                     "Image tags", "Restore the images from the cache", "Load the cached images",
                     "Build the images (not in the cache yet)", "Save the images in the cache",
                     "Grade (the public checks)", "Upload the reports", "Remove the labs"]
    uses = [step["uses"] for step in steps_by_name(github()).values() if "uses" in step]
    assert uses == ["actions/checkout@v4", "actions/setup-python@v5", "actions/cache/restore@v4",
                    "actions/cache/save@v4", "actions/upload-artifact@v4"]


def test_labctl_is_installed_from_the_repository_as_the_readme_does():
    install = steps_by_name(github())["Install labctl (from this repository)"]["run"]
    assert "python -m venv .venv && .venv/bin/pip install ." == install
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install ." in readme


def test_the_grade_runs_the_public_checks_with_the_github_junit_and_json_reports():
    grade = steps_by_name(github())["Grade (the public checks)"]
    assert "if" not in grade, "the grade's exit code is the job's verdict"
    run = grade["run"]
    assert run.startswith('.venv/bin/labctl test "$EXERCISE" --submission "exercises/$EXERCISE/starter"')
    for report in ("--report github", '--report "junit:$REPORTS/junit.xml"', '--report "json:$REPORTS/report.json"'):
        assert report in run
    assert "labctl grade" not in run, "a student repository gets the public checks only"


def test_the_steps_after_the_grade_run_always_and_the_cache_is_saved_before_it():
    steps = steps_by_name(github())
    names = list(steps)
    after = names[names.index("Grade (the public checks)") + 1:]
    assert after and all(steps[name].get("if") == "always()" for name in after)
    assert names.index("Save the images in the cache") < names.index("Grade (the public checks)"), (
        "actions/cache saves in its post step only when the job succeeds: a failing grade would lose the images")
    upload = steps["Upload the reports"]["with"]
    assert upload["name"] == "labctl-reports-${{ matrix.exercise }}", "v4 artifacts need a name per matrix job"
    assert upload["path"].startswith("labctl-reports/${{ matrix.exercise }}")


def test_the_cache_key_is_the_image_tags_and_a_miss_builds_then_saves_them():
    steps = steps_by_name(github())
    tags_step = steps["Image tags"]
    assert tags_step["id"] == "images"
    assert '.venv/bin/labctl images tags "$EXERCISE"' in tags_step["run"]
    assert 'key=labctl-images-$RUNNER_OS-$(echo $tags' in tags_step["run"]
    restore, save = steps["Restore the images from the cache"], steps["Save the images in the cache"]
    assert restore["with"]["key"] == save["with"]["key"] == "${{ steps.images.outputs.key }}"
    assert restore["with"]["path"] == save["with"]["path"] == "${{ runner.temp }}/labctl-images.tar"
    assert steps["Load the cached images"]["if"] == "steps.cache.outputs.cache-hit == 'true'"
    assert "docker load" in steps["Load the cached images"]["run"]
    build = steps["Build the images (not in the cache yet)"]
    assert build["if"] == save["if"] == "steps.cache.outputs.cache-hit != 'true'"
    assert '.venv/bin/labctl images build --exercise "$EXERCISE"' in build["run"]
    assert "docker save" in build["run"] and "$TAGS" in build["run"]
    assert build["env"]["TAGS"] == "${{ steps.images.outputs.tags }}"


def test_images_tags_are_the_real_content_hashes_an_exercise_needs():
    tags = image_tags(ROOT / "images")
    result = invoke("images", "tags", "blocking")
    assert result.exit_code == 0, result.output
    assert result.output.split() == [tags["base"], tags["server"], tags["tools"]]
    c_tags = json.loads(invoke("images", "tags", "polling-c", "--json").output)
    assert c_tags == {name: tags[name] for name in ("base", "server", "server-c", "tools")}
    node = json.loads(invoke("images", "tags", "polling-node", "--json").output)
    assert set(node) == {"base", "server", "tools", "exercise-polling-node"}
    assert re.fullmatch(r"labctl-exercise-polling-node:[0-9a-f]{12}", node["exercise-polling-node"])
    everything = invoke("images", "tags").output.split()
    assert set(everything) == set(tags.values()) | {node["exercise-polling-node"]}


# -- GitLab ------------------------------------------------------------------------------------------

def test_the_gitlab_job_talks_to_a_dind_service_over_tls():
    job = gitlab()["grade"]
    assert job["services"] == [{"name": "docker:27-dind", "alias": "docker"}]
    variables = job["variables"]
    assert variables["DOCKER_HOST"] == "tcp://docker:2376"
    assert variables["DOCKER_TLS_CERTDIR"] == "/certs"
    assert variables["DOCKER_TLS_VERIFY"] == "1"
    assert variables["DOCKER_CERT_PATH"] == "$DOCKER_TLS_CERTDIR/client"
    assert job["parallel"]["matrix"] == [{"EXERCISE": EXERCISES}]


def test_the_gitlab_job_installs_builds_then_grades_and_keeps_its_reports_always():
    job = gitlab()["grade"]
    assert job["before_script"] == ["python -m venv .venv && .venv/bin/pip install .",
                                    '.venv/bin/labctl images build --exercise "$EXERCISE"']
    (script,) = job["script"]
    assert script.startswith('.venv/bin/labctl test "$EXERCISE" --submission "exercises/$EXERCISE/starter"')
    assert '--report "junit:labctl-reports/$EXERCISE/junit.xml"' in script
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "labctl-reports/*/junit.xml"
    assert "volumes" not in yaml.safe_dump(job), "nothing is bind-mounted: labctl copies code through the API"


# -- both --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_the_submission_pattern_names_the_exercise(platform):
    text = invoke("ci", platform, "-o", "-", "--submission", "my_{exercise}").output
    assert '--submission "my_$EXERCISE"' in text


@pytest.mark.parametrize("pattern", ['a"b', "a$b", "a`b", "a\\b", " "])
def test_a_submission_that_would_break_the_shell_line_is_refused(pattern):
    result = invoke("ci", "github", "-o", "-", "--submission", pattern)
    assert result.exit_code == 2
    assert "--submission" in result.output and "expected a folder path" in result.output


def test_an_unknown_exercise_is_exit_2_naming_the_exercises_there():
    result = invoke("ci", "gitlab", "-o", "-", "nope")
    assert result.exit_code == 2
    assert "no exercise 'nope'" in result.output and "blocking" in result.output


@pytest.mark.parametrize("platform, where", [("github", ".github/workflows/labctl.yml"), ("gitlab", ".gitlab-ci.yml")])
def test_the_file_goes_to_its_place_in_the_project_and_is_not_overwritten_without_force(tmp_path, platform, where):
    handout = tmp_path / "handout"
    export_student(ROOT, handout)
    runner = CliRunner()
    first = runner.invoke(main, ["--project", str(handout), "ci", platform])
    assert first.exit_code == 0, first.output
    written = handout / where
    yaml.safe_load(written.read_text())
    written.write_text("# the instructor's edits\n")
    again = runner.invoke(main, ["--project", str(handout), "ci", platform])
    assert again.exit_code == 2
    assert f"{written} exists: pass --force" in again.output
    assert written.read_text() == "# the instructor's edits\n"
    forced = runner.invoke(main, ["--project", str(handout), "ci", platform, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "labctl test" in written.read_text()


def test_o_names_the_file_relative_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("ci", "github", "blocking", "-o", "ci/workflow.yml")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "ci" / "workflow.yml").read_text())["name"] == "labctl"


def test_a_handout_keeps_the_ci_templates_but_not_the_exercise_scaffold(tmp_path):
    export_student(ROOT, tmp_path / "handout")
    templates = tmp_path / "handout" / "labctl" / "templates"
    assert sorted(path.name for path in (templates / "ci").iterdir()) == ["github.yml", "gitlab-ci.yml"]
    assert not (templates / "exercise").exists(), "the scaffold holds a solution"


def test_the_templates_are_yaml_before_substitution_too():
    """Editors and linters read the template files as they are: the tokens keep them valid YAML."""
    for template in ci_templates.TEMPLATES.iterdir():
        assert yaml.safe_load(template.read_text())


def test_chosen_exercises_without_any_is_an_error(tmp_path):
    (tmp_path / "lab.yaml").write_text((ROOT / "lab.yaml").read_text())
    with pytest.raises(LabctlError, match="no exercises under"):
        ci_templates.chosen_exercises(Project(tmp_path), None)


def test_the_readmes_ci_commands_work_as_written(tmp_path, monkeypatch):
    """The README's "Grading in a student repository's CI" commands, run in a new folder of an instructor's."""
    import shlex

    section = (ROOT / "README.md").read_text().split("## Grading in a student repository's CI", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.+?)\n```", section, re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABCTL_PROJECT", str(ROOT))  # the instructor runs the first command in the course's clone
    for line in block.splitlines():
        for command in line.split("#", 1)[0].split("&&"):
            words = shlex.split(command)
            assert words[0] == "labctl"
            result = CliRunner().invoke(main, words[1:])
            assert result.exit_code == 0, (command, result.output)
    workflow = yaml.safe_load((tmp_path / "handout" / ".github" / "workflows" / "labctl.yml").read_text())
    assert workflow["jobs"]["grade"]["strategy"]["matrix"]["exercise"] == EXERCISES
    gitlab_ci = yaml.safe_load((tmp_path / "handout" / ".gitlab-ci.yml").read_text())
    assert gitlab_ci["grade"]["parallel"]["matrix"] == [{"EXERCISE": ["polling"]}]
