"""The CLI prints what it is given: brackets in types, paths and messages are text, not markup."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from labctl import cli
from labctl.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_types_with_brackets_are_shown_whole():
    result = CliRunner().invoke(main, ["--project", str(ROOT), "checks", "blocked_in"])
    assert result.exit_code == 0, result.output
    assert "list[str]" in result.output


def test_an_error_with_brackets_is_shown_whole(tmp_path):
    (tmp_path / "lab.yaml").write_text("nodes:\n  server:\n    role: server\n    capabilities: [a]\n")
    result = CliRunner().invoke(main, ["--project", str(tmp_path), "up"])
    assert result.exit_code == 2
    assert "lab.yaml:4: nodes.server.capabilities[0]: expected a Linux capability name" in result.output
    assert "found 'a'" in result.output


def test_a_bug_in_labctl_is_two_lines_exit_3_and_the_traceback_kept(monkeypatch, tmp_path):
    from click.testing import CliRunner

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def broken(ctx):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(cli, "project", broken)
    result = CliRunner().invoke(cli.main, ["list"])
    assert result.exit_code == 3, result.output  # an infrastructure failure: nobody's submission is at fault
    assert "labctl failed: RecursionError: maximum recursion depth exceeded" in result.output
    assert "This is a bug in labctl" in result.output and "Traceback" not in result.output
    [saved] = tmp_path.glob("labctl-crash-*.txt")
    assert "RecursionError" in saved.read_text()


def test_exercise_names_complete_in_the_shell(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli._exercise_ids("th") == ["thread-pool", "threaded"]
    assert {"blocking", "polling", "polling-c"} <= set(cli._exercise_ids(""))
    monkeypatch.chdir("/")
    assert cli._exercise_ids("") == []  # outside a project: nothing to offer, no error


def test_tables_in_a_log_keep_each_row_on_one_line():
    """Not a terminal (a pipe, a CI log): no wrapping at 80 columns, no names cut with an ellipsis."""
    from labctl.checks import load_catalog

    result = CliRunner().invoke(main, ["--project", str(ROOT), "checks"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for definition in load_catalog().values():
        assert any(definition.name in line and definition.summary in line for line in lines), definition.name
    assert "…" not in result.output and "\x1b" not in result.output  # nothing cut, no colours

