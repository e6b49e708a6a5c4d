"""The server's bytes never reach a terminal or a CI runner raw: hostile text through every output.

A submission controls its log, its responses and its thread names. Each renderer, the guard on
labctl's own streams, and `labctl observe`'s table get the same hostile text; what comes out
must hold no control character and no line a runner would execute, except labctl's own
annotations.
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from labctl import observe
from labctl.report import RENDERERS
from labctl.report import terminal as terminal_report
from labctl.results import CheckResult, GradeReport
from labctl.untrusted import CommandGuard, is_command, neutralize, printable, write_command

HOSTILE = ("ok\x1b]0;pwned title\x07\x1b[2J\x1b[H\x00\x9b31m\ufffd\u202egnp.exe\u2028"
           "\n::error title=owned::by the server\n  ::stop-commands::TOKEN\n\t##[group]fold"
           "\r::add-mask::secret\n##vso[task.setvariable]x\n" + "z" * 70 + " ::warning::wrapped onto its own line")

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def hostile_report(gradable: bool = True) -> GradeReport:
    result = CheckResult(name="get-index " + HOSTILE[:20], check="http", status="failed", points=0, max_points=2,
                         duration=0.5, message="the server said: " + HOSTILE,
                         evidence={"server_log_tail": HOSTILE, "status_line": HOSTILE.splitlines()[0]})
    return GradeReport(labctl_version="0", exercise="blocking", title="t", submission="s", gradable=gradable,
                       error=None if gradable else "the server did not start: " + HOSTILE,
                       started_at="2026-01-01T00:00:00Z", duration=1, score=0, max_score=2,
                       results=[result] if gradable else [], server_log_tail=HOSTILE)


def through_guard(text: str, width: int | None = None) -> str:
    """What a CI log receives when `text` is written to labctl's guarded stdout."""
    sink = io.StringIO()
    guard = CommandGuard(sink)
    guard.write(text)
    guard.close()
    return sink.getvalue()


def runner_lines(text: str) -> list[str]:
    """Lines as GitHub's runner splits them: LF, CR and CRLF all end a line."""
    return re.split(r"\r\n|\r|\n", text)


def assert_safe(text: str, allowed_commands: int = 0) -> None:
    assert not CONTROL.search(text.replace("\r\n", "\n").rstrip("\n").replace("\n", "")), \
        [m.group() for m in CONTROL.finditer(text)]
    commands = [line for line in runner_lines(text) if is_command(line)]
    assert len(commands) <= allowed_commands, commands
    for line in commands:
        assert line.startswith("::error title=labctl "), line  # labctl's own annotation, nothing else


def test_printable_makes_every_control_character_visible():
    shown = printable(HOSTILE)
    assert "\x1b" not in shown and "\\x1b]0;pwned" in shown
    assert "\\x00" in shown and "\\x9b" in shown and "\\u202e" in shown and "\\u2028" in shown
    assert "\r" not in shown and "\\x0d::add-mask" in shown
    assert "\t" in shown and "\n" in shown  # tab and line feed stay layout


def test_neutralize_marks_commands_at_any_indentation():
    text = neutralize("a\n::error::x\n   ::warning::y\n\t##[group]z\nkeep :: this\n")
    assert text == "a\n\\x3a:error::x\n   \\x3a:warning::y\n\t\\x23#[group]z\nkeep :: this\n"


@pytest.mark.parametrize("chunks", [
    ["::error::x\n"],
    [":", ":error::x\n"],
    ["  ", "  :", ":error::x\n"],
    ["ok\r", "::add-mask::y\n"],
    ["##", "[group]x\n"],
    ["##v", "so[task]\n"],
])
def test_the_guard_catches_a_command_split_over_writes(chunks):
    sink = io.StringIO()
    guard = CommandGuard(sink)
    for chunk in chunks:
        guard.write(chunk)
    guard.close()
    assert not [line for line in runner_lines(sink.getvalue()) if is_command(line)], repr(sink.getvalue())
    assert sink.getvalue().replace("\\x3a", ":").replace("\\x23", "#") == "".join(chunks)


def test_the_guard_lets_ordinary_text_through_unchanged():
    text = "score 2/2\n  check  status\n: a colon\n# a heading\n#[not a command]\n::\n"
    # "::" alone is still a command prefix for the runner; everything else is untouched.
    assert through_guard(text) == text.replace("\n::\n", "\n\\x3a:\n")


def test_deliberate_annotations_go_past_the_guard(monkeypatch):
    sink = io.StringIO()
    guard = CommandGuard(sink)
    monkeypatch.setattr("sys.stdout", guard)
    guard.write("half a line")
    write_command("::error title=labctl x::y")
    guard.write("::error::not ours\n")
    guard.close()
    assert sink.getvalue() == "half a line\n::error title=labctl x::y\n\\x3a:error::not ours\n"


@pytest.mark.parametrize("name", [name for name in RENDERERS if name not in ("terminal", "github")])
@pytest.mark.parametrize("gradable", [True, False])
def test_file_reports_hold_no_control_character_and_no_command(name, gradable):
    text = RENDERERS[name].render(hostile_report(gradable))
    if name == "json":  # JSON escapes control characters itself: \u001b, never the raw byte
        assert "\x1b" not in text and "\x00" not in text
    else:
        assert_safe(text)
    assert_safe(through_guard(text))


@pytest.mark.parametrize("gradable", [True, False])
def test_terminal_report_wrapped_at_80_columns_is_safe(gradable):
    sink = io.StringIO()
    console = Console(file=CommandGuard(sink), width=80, color_system=None, force_terminal=False)
    console.print(terminal_report.renderable(hostile_report(gradable)))
    assert_safe(sink.getvalue())
    assert "wrapped onto its own line" in sink.getvalue()


@pytest.mark.parametrize("gradable", [True, False])
def test_github_summary_and_annotations_are_safe(gradable, monkeypatch, tmp_path, capsys):
    from labctl.report import github

    summary = tmp_path / "summary.md"
    sink = io.StringIO()
    monkeypatch.setattr("sys.stdout", CommandGuard(sink))
    github.emit(hostile_report(gradable), summary, Console(file=io.StringIO()))
    assert_safe(summary.read_text())
    assert_safe(sink.getvalue(), allowed_commands=1)
    assert len(runner_lines(sink.getvalue().rstrip("\n"))) == 1, "one annotation, each on one line"


def test_observe_table_shows_thread_names_escaped():
    snapshot = observe.Snapshot.from_json({
        "machine": "x86_64", "clk_tck": 100, "time": 0.0,
        "processes": [{"pid": 7, "ppid": 1, "comm": "srv", "threads": [
            {"tid": 7, "comm": "\x1b[2J::error::", "state": "S", "syscall": 288, "wchan": "\x07x"}]}]})
    text = observe.render(snapshot)
    assert_safe(through_guard(text + "\n"))
    assert "\\x1b[2J" in text


@pytest.mark.parametrize("name", list(RENDERERS))
def test_every_report_file_is_safe_even_where_a_table_wrapped(name, tmp_path, monkeypatch):
    """A log line indented and longer than the file's width: the wrap starts a line with '::'."""
    from labctl.report import write_reports

    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    wrapped = "x" * 88 + " ::warning::second\n" + "y" * 80 + " ##[error]third"
    report = hostile_report()
    report.results[0].evidence["server_log_tail"] = wrapped
    report = report.model_copy(update={"server_log_tail": wrapped})
    target = tmp_path / f"report.{name}"
    write_reports(report, [f"{name}:{target}"], Console(file=io.StringIO()))
    assert_safe(target.read_text(), allowed_commands=0)
