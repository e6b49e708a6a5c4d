"""The junit report: JUnit XML in the shape of Jenkins' junit-10.xsd, read by Jenkins, GitLab, Azure, ...

    <testsuites name="labctl EXERCISE: SCORE/MAX points" tests failures errors time>
      <testsuite name="EXERCISE: SCORE/MAX points" tests failures errors skipped time timestamp>
        <properties>   score, max_score, gradable, ...; per check: CHECK.points, .max_points, .visibility, .check
        <testcase classname="labctl.EXERCISE" name=CHECK time>
          <failure type="failed" message=...>message + evidence</failure>           (status failed)
          <error type="timed_out|error" message=...>message + evidence</error>      (timed_out, error)
          <skipped message=...>message + evidence</skipped>    (a lesson, 0 points, that did not pass: never a failure)
        <testcase name="server log"><system-out>the server's log tail</system-out></testcase>

Per-check properties live on the suite: junit-10.xsd allows <properties> only there (a testcase
<properties>, as pytest's record_property writes, fails that schema). A report that is not gradable
gets one extra testcase, "grading", saying why, so a CI shows it red: a <failure type="not_gradable">
when the submission is why (JUnit's word for "what was tested is wrong"), an <error type="infrastructure">
when the machine is (JUnit's word for "the test could not run"); the suite's `failure` property names it.
Characters XML 1.0 cannot carry (ANSI escapes, NUL, ...) are written as \\xNN text.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from labctl.report._common import (
    STATUS_WORDS,
    evidence_file_lines,
    evidence_lines,
    failed,
    first_line,
    not_gradable_text,
    points,
    set_aside,
    shown,
    tail,
)
from labctl.results import CheckResult, GradeReport

SCHEMA_FILE = "junit.xsd"
DEFAULT_PATH = "labctl-junit.xml"
LOG_LIMIT = 64_000

# Everything outside XML 1.0's Char production; \r is folded into \n (a parser would do it anyway).
_NOT_XML = re.compile("[^\u0009\u000a\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text XML 1.0 can carry, safe to show: control characters visible (labctl.untrusted.shown),
    then whatever else XML forbids (lone surrogates) as \\uNNNN."""
    text = shown(text)
    return _NOT_XML.sub(lambda match: f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100
                        else f"\\u{ord(match.group()):04x}", text)


def _time(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def _body(result: CheckResult) -> str:
    lines = [result.message.rstrip()]
    lines += evidence_lines(result.evidence, long_limit=4000)
    lines += evidence_file_lines(result)
    if result.description:
        lines.append(f"what it checks: {result.description}")
    return xml_text("\n".join(lines))


def _testcase(suite: ET.Element, classname: str, result: CheckResult) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=xml_text(result.name),
                         time=_time(result.duration))
    if result.status == "passed":
        return
    if not result.graded:
        # A lesson (or a check this backend cannot run) is never a failure: test reporters fail a job on
        # <failure>, and show <skipped> as a note.
        skipped = ET.SubElement(case, "skipped", message=xml_text(first_line(
            f"{result.aside} ({STATUS_WORDS[result.status]}): {result.message}", 1000)))
        skipped.text = _body(result)
        return
    tag = "failure" if result.status == "failed" else "error"
    outcome = ET.SubElement(case, tag, type=result.status, message=xml_text(first_line(result.message, 1000)))
    outcome.text = _body(result)


def build(report: GradeReport) -> ET.Element:
    classname = f"labctl.{report.exercise}"
    results = report.results
    failures = sum(1 for r in failed(report) if r.status == "failed") + int(report.failure == "submission")
    errors = sum(1 for r in failed(report) if r.status != "failed") + int(report.infrastructure_failed)
    skipped = len(set_aside(report))
    tests = len(results) + (0 if report.gradable else 1) + (1 if report.server_log_tail else 0)
    counts = {"tests": str(tests), "failures": str(failures), "errors": str(errors)}

    # The score goes in the names: the one place every viewer (GitLab, Jenkins, test reporters) shows.
    scored = f"{report.exercise}: {points(report.score)}/{points(report.max_score)} points"
    root = ET.Element("testsuites", {"name": xml_text(f"labctl {scored}"), **counts,
                                     "time": _time(report.duration)})
    suite = ET.SubElement(root, "testsuite", {"name": xml_text(scored), **counts, "skipped": str(skipped),
                                              "time": _time(report.duration),
                                              "timestamp": xml_text(report.started_at)})
    properties = ET.SubElement(suite, "properties")

    def prop(name: str, value: object) -> None:
        ET.SubElement(properties, "property", name=xml_text(name), value=xml_text(str(value)))

    prop("score", points(report.score))
    prop("max_score", points(report.max_score))
    prop("gradable", str(report.gradable).lower())
    if report.failure:
        prop("failure", report.failure)
    if report.error:
        prop("error", report.error)
    prop("budget_exhausted", str(report.budget_exhausted).lower())
    prop("submission", report.submission)
    prop("labctl_version", report.labctl_version)
    prop("schema_version", report.schema_version)
    if report.title:
        prop("title", report.title)
    for result in results:
        prop(f"{result.name}.points", points(result.points))
        prop(f"{result.name}.max_points", points(result.max_points))
        prop(f"{result.name}.visibility", result.visibility)
        prop(f"{result.name}.check", result.check)

    if not report.gradable:
        case = ET.SubElement(suite, "testcase", classname=classname, name="grading", time=_time(report.duration))
        tag, kind = ("error", "infrastructure") if report.infrastructure_failed else ("failure", "not_gradable")
        outcome = ET.SubElement(case, tag, type=kind, message=xml_text(first_line(report.error or kind, 1000)))
        outcome.text = xml_text(not_gradable_text(report))
    for result in results:
        _testcase(suite, classname, result)
    if report.server_log_tail:
        # A testcase of its own: viewers show a testcase's output, and ignore the suite's.
        case = ET.SubElement(suite, "testcase", classname=classname, name="server log", time="0.000")
        ET.SubElement(case, "system-out").text = xml_text(tail(report.server_log_tail, LOG_LIMIT, "the log"))
    return root


def render(report: GradeReport) -> str:
    root = build(report)
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def default_path() -> Path:
    return Path(DEFAULT_PATH)
