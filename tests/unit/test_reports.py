"""Reports: every format rendered from GradeReports built here, validated against its published schema.

JSON formats are checked with jsonschema against labctl/report/schemas/*.json; junit against
labctl/report/schemas/junit.xsd with xmlschema (or lxml) when one is installed, and always with
strict ElementTree checks of the same structure.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema  # the test dependencies have it: a report is checked against its schema, never skipped
import pytest
import xmlschema
from rich.console import Console

from labctl.errors import LabctlError
from labctl.report import RENDERERS, SCHEMAS_DIR, github, gradescope, json_report, parse_spec, prairielearn, write_reports
from labctl.results import CheckResult, GradeReport
from labctl.untrusted import shown

NASTY = 'expected <200 OK> & got "500" \'x\' ]]> 100% done\r\nline two: a,b\x1b[31m\x00 ü'
LOG = "GET / HTTP/1.1\n\x1b[31mTraceback\x1b[0m <boom> & more\nGET /secret-hidden-path\n"


def check(name, status="passed", points=None, max_points=2.0, visibility="public", **kw) -> CheckResult:
    if points is None:
        points = max_points if status == "passed" else 0.0
    return CheckResult(name=name, check=kw.pop("check", "http"), status=status, points=points,
                       max_points=max_points, visibility=visibility, duration=kw.pop("duration", 0.25),
                       message=kw.pop("message", f"{name}: {status}"), **kw)


def report_of(results: list[CheckResult], **kw) -> GradeReport:
    fields = dict(labctl_version="0.1.0", exercise="blocking-echo", title="A blocking server",
                  submission="./student", gradable=True, started_at="2026-01-02T03:04:05Z", duration=12.3,
                  score=sum(r.points for r in results), max_score=sum(r.max_points for r in results),
                  results=results, server_log_tail=LOG)
    fields.update(kw)
    return GradeReport(**fields)


@pytest.fixture
def mixed() -> GradeReport:
    """passed, failed (with XML/escaping trouble), timed_out, error, and two hidden checks."""
    return report_of([
        check("serves index", check="http", evidence={"status": 200, "latency_ms": 1.5}),
        check("slow client <K=3>", "failed", message=NASTY, check="slow_client",
              evidence={"p99_ms": 5012.25, "log_tail": "line1\nline2\n", "threads": ["S", "R"]},
              description="A slow client must not block others."),
        check("many clients", "timed_out", max_points=3.0, check="concurrent", duration=30.0,
              message="the check ran out of its 30 s budget"),
        check("idle cpu", "error", max_points=1.0, check="idle_cpu", message="the observer could not read /proc"),
        check("secret passes", visibility="hidden", max_points=4.0, message="hidden ok"),
        check("secret fails", "failed", visibility="hidden", max_points=1.0,
              message="SECRET-MESSAGE: /secret-hidden-path answered 404", evidence={"path": "/secret-hidden-path"}),
    ])


@pytest.fixture
def all_passed() -> GradeReport:
    return report_of([check("serves index"), check("keeps alive", max_points=3.0)], server_log_tail="")


@pytest.fixture
def not_gradable() -> GradeReport:
    """The submission's doing: its server never listened."""
    return report_of([], gradable=False, failure="submission",
                     error="the server never listened on port 8080: exited with 1", score=0.0, max_score=10.0)


@pytest.fixture
def infrastructure() -> GradeReport:
    """The machine's doing: the engine did not answer."""
    return report_of([], gradable=False, failure="infrastructure", server_log_tail="",
                     error="cannot reach the Docker Engine at unix:///nonexistent", score=0.0, max_score=10.0)


def schema(name: str) -> dict:
    return json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))


def validate_json(renderer: str, text: str) -> dict:
    document = json.loads(text)
    jsonschema.Draft202012Validator(schema(RENDERERS[renderer].schema)).validate(document)
    return document


# -- json ---------------------------------------------------------------------------------------------

def test_json_is_exactly_the_model_dump(mixed):
    text = RENDERERS["json"].render(mixed)
    assert json.loads(text) == mixed.model_dump(mode="json")
    assert text.startswith("{\n  ") and text.endswith("}\n")
    assert GradeReport.model_validate_json(text) == mixed
    validate_json("json", text)


def test_json_schema_file_is_the_generated_one():
    committed = (SCHEMAS_DIR / json_report.SCHEMA_FILE).read_text(encoding="utf-8")
    assert json.loads(committed) == json_report.schema(), \
        "regenerate: python3 -m labctl.report.json_report > labctl/report/schemas/labctl-report.schema.json"
    assert committed == json_report.schema_text()


def test_published_json_schemas_are_valid_schemas():
    for name in ("labctl-report.schema.json", "gradescope-results.schema.json", "prairielearn-results.schema.json"):
        jsonschema.Draft202012Validator.check_schema(schema(name))


def test_json_schema_refuses_a_broken_report(mixed):
    document = mixed.model_dump(mode="json")
    document["results"][0]["status"] = "sort of"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema("labctl-report.schema.json")).validate(document)


# -- junit --------------------------------------------------------------------------------------------

def xsd_validate(text: str) -> None:
    """Validate against junit.xsd (xmlschema is one of the test dependencies)."""
    xmlschema.XMLSchema(str(SCHEMAS_DIR / "junit.xsd")).validate(text)


ALLOWED = {  # element -> (allowed attributes, allowed children): the junit-10.xsd shape we promise
    "testsuites": ({"name", "tests", "failures", "errors", "time"}, {"testsuite"}),
    "testsuite": ({"name", "tests", "failures", "errors", "skipped", "time", "timestamp"},
                  {"properties", "testcase", "system-out", "system-err"}),
    "properties": (set(), {"property"}),
    "property": ({"name", "value"}, set()),
    "testcase": ({"name", "classname", "time"}, {"failure", "error", "skipped", "system-out", "system-err"}),
    "failure": ({"type", "message"}, set()),
    "error": ({"type", "message"}, set()),
    "skipped": ({"message"}, set()),
    "system-out": (set(), set()),
}


def strict_structure(root: ET.Element) -> None:
    assert root.tag == "testsuites"
    for element in root.iter():
        attributes, children = ALLOWED[element.tag]
        assert set(element.attrib) <= attributes, (element.tag, element.attrib)
        assert {child.tag for child in element} <= children, element.tag
    for suite in root.findall("testsuite"):
        assert {"name", "tests", "failures", "errors"} <= set(suite.attrib)
        order = [child.tag for child in suite]
        assert order == sorted(order, key=["properties", "testcase", "system-out"].index)
        for case in suite.findall("testcase"):
            assert "name" in case.attrib
            assert len([c for c in case if c.tag in ("failure", "error", "skipped")]) <= 1
        for name in ("tests", "failures", "errors", "skipped"):
            assert suite.get(name, "0").isdigit()
        float(suite.get("time"))


def test_junit_valid_and_exact(mixed):
    text = RENDERERS["junit"].render(mixed)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    xsd_validate(text)
    root = ET.fromstring(text)
    strict_structure(root)
    suite = root.find("testsuite")
    assert suite.get("name") == "blocking-echo: 6/13 points" and root.get("name") == "labctl blocking-echo: 6/13 points"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("7", "2", "2")  # 6 checks, the log
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("7", "2", "2")
    assert suite.get("time") == "12.300" and suite.get("timestamp") == "2026-01-02T03:04:05Z"
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert list(cases) == [r.name for r in mixed.results] + ["server log"]
    assert all(case.get("classname") == "labctl.blocking-echo" for case in cases.values())
    assert cases["serves index"].get("time") == "0.250" and len(cases["serves index"]) == 0
    failure = cases["slow client <K=3>"].find("failure")
    assert failure.get("type") == "failed"
    assert failure.get("message") == 'expected <200 OK> & got "500" \'x\' ]]> 100% done'
    assert 'got "500"' in failure.text and "]]>" in failure.text and "ü" in failure.text
    assert "\\x1b[31m\\x00" in failure.text  # illegal XML characters written as text, not dropped
    assert "p99_ms: 5012.25" in failure.text and "A slow client must not block others." in failure.text
    assert cases["many clients"].find("error").get("type") == "timed_out"
    assert cases["idle cpu"].find("error").get("type") == "error"
    assert cases["secret fails"].find("failure") is not None
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["score"] == "6" and props["max_score"] == "13" and props["gradable"] == "true"
    assert props["slow client <K=3>.points"] == "0" and props["slow client <K=3>.max_points"] == "2"
    assert props["slow client <K=3>.check"] == "slow_client"
    assert props["secret passes.visibility"] == "hidden" and props["serves index.visibility"] == "public"
    assert suite.find("system-out") is None  # the log is in a testcase, where viewers show it
    out = cases["server log"].find("system-out").text
    assert "<boom> & more" in out and "\\x1b[31mTraceback" in out


def test_junit_not_gradable_is_one_failure(not_gradable):
    text = RENDERERS["junit"].render(not_gradable)
    xsd_validate(text)
    root = ET.fromstring(text)
    strict_structure(root)
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")  # grading, the log
    assert [case.get("name") for case in suite.findall("testcase")] == ["grading", "server log"]
    failure = suite.find("testcase/failure")
    assert failure.get("type") == "not_gradable" and suite.find("testcase/error") is None
    assert failure.get("message") == "the server never listened on port 8080: exited with 1"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["failure"] == "submission"


def test_junit_all_passed_has_no_outcomes(all_passed):
    root = ET.fromstring(RENDERERS["junit"].render(all_passed))
    strict_structure(root)
    assert root.find(".//failure") is None and root.find(".//error") is None
    assert root.find(".//system-out") is None


def test_junit_xsd_refuses_what_junit10_refuses():
    bad = ('<testsuites><testsuite name="x" tests="1" failures="0" errors="0">'
           '<testcase name="a"><properties/></testcase></testsuite></testsuites>')
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xsd_validate(bad)
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xsd_validate('<testsuites><testsuite name="x" tests="1"/></testsuites>')


# -- gradescope ---------------------------------------------------------------------------------------

def test_gradescope_valid_and_exact(mixed):
    document = validate_json("gradescope", RENDERERS["gradescope"].render(mixed))
    assert document["score"] == 6.0  # all of it, hidden included: Gradescope records this as the grade
    assert document["execution_time"] == 13
    assert document["visibility"] == "visible" and document["stdout_visibility"] == "hidden"
    assert document["extra_data"]["labctl"]["max_score"] == 13.0
    checks = [t for t in document["tests"] if "score" in t]
    assert sum(t["score"] for t in checks) == document["score"]
    assert sum(t["max_score"] for t in checks) == 13.0
    by_name = {t["name"]: t for t in document["tests"]}
    assert by_name["serves index"]["status"] == "passed" and by_name["serves index"]["visibility"] == "visible"
    assert by_name["many clients"]["status"] == "failed" and "timed out" in by_name["many clients"]["output"]
    assert by_name["idle cpu"]["status"] == "failed"
    assert by_name["secret passes"]["visibility"] == "after_published"
    assert by_name["secret fails"]["visibility"] == "after_published"
    assert by_name["slow client <K=3>"]["output"].count(shown(NASTY)) == 1
    text = RENDERERS["gradescope"].render(mixed)  # no NUL (PostgreSQL jsonb refuses it), no raw ESC/CR
    assert "\\u0000" not in text and "\\u001b" not in text and "\\r" not in text
    assert '\\\\x1b[31m\\\\x00' in text
    assert by_name["slow client <K=3>"]["tags"] == ["slow_client"]
    assert [t["number"] for t in checks] == ["1", "2", "3", "4", "5", "6"]
    # nothing of the hidden checks reaches what students see before grades are published
    visible = json.dumps([document["output"]] + [t for t in document["tests"] if t.get("visibility") == "visible"])
    assert "secret" not in visible and "SECRET" not in visible
    log = by_name["server log (last lines)"]
    assert log["visibility"] == "after_published" and "/secret-hidden-path" in log["output"]
    assert "score" not in log


def test_gradescope_public_only_shows_log(all_passed):
    report = all_passed.model_copy(update={"server_log_tail": "hello\n"})
    document = validate_json("gradescope", RENDERERS["gradescope"].render(report))
    assert document["score"] == 5.0
    assert {t["name"]: t["visibility"] for t in document["tests"]}["server log (last lines)"] == "visible"


def test_gradescope_not_gradable(not_gradable):
    document = validate_json("gradescope", RENDERERS["gradescope"].render(not_gradable))
    assert document["score"] == 0
    assert "the server never listened on port 8080" in document["output"]
    assert document["tests"][0]["name"] == "grading" and document["tests"][0]["status"] == "failed"
    assert document["extra_data"]["labctl"]["gradable"] is False


def test_gradescope_schema_catches_mistakes(mixed):
    document = gradescope.results(mixed)
    document["tests"][0]["visibility"] = "public"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema("gradescope-results.schema.json")).validate(document)


# -- prairielearn -------------------------------------------------------------------------------------

def test_prairielearn_valid_and_exact(mixed):
    document = validate_json("prairielearn", RENDERERS["prairielearn"].render(mixed))
    assert document["gradable"] is True
    assert document["score"] == pytest.approx(6 / 13)
    assert sum(t["points"] for t in document["tests"]) == 6.0
    assert sum(t["max_points"] for t in document["tests"]) == 13.0
    names = [t["name"] for t in document["tests"]]
    assert names == ["serves index", "slow client <K=3>", "many clients", "idle cpu", "hidden checks"]
    hidden = document["tests"][-1]
    assert (hidden["points"], hidden["max_points"]) == (4.0, 5.0)
    assert "secret" not in json.dumps(document).lower()  # no name, message, evidence or log of hidden checks
    assert "output" not in document  # the server log may show hidden checks' requests
    slow = document["tests"][1]
    assert slow["message"] == shown(NASTY) == ('expected <200 OK> & got "500" \'x\' ]]> 100% done\n'
                                               'line two: a,b\\x1b[31m\\x00 ü')
    assert slow["description"] == "A slow client must not block others."
    assert set(slow) == {"name", "points", "max_points", "message", "output", "description"}


def test_prairielearn_all_passed(all_passed):
    report = all_passed.model_copy(update={"server_log_tail": "hello\n"})
    document = validate_json("prairielearn", RENDERERS["prairielearn"].render(report))
    assert document["score"] == 1.0 and "hello" in document["output"]
    assert prairielearn.fraction(report_of([], max_score=0.0)) == 1.0


def test_prairielearn_not_gradable(not_gradable):
    document = validate_json("prairielearn", RENDERERS["prairielearn"].render(not_gradable))
    assert document["gradable"] is False
    assert "never listened" in document["message"]
    assert document["format_errors"] == ["the server never listened on port 8080: exited with 1"]


def test_prairielearn_schema_requires_score_when_gradable():
    validator = jsonschema.Draft202012Validator(schema("prairielearn-results.schema.json"))
    validator.validate({"gradable": False, "message": "x"})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"gradable": True, "message": "x"})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"score": 1.5})


# -- github -------------------------------------------------------------------------------------------

def test_github_escaping_rules():
    assert github.escape_data("100% a\r\nb") == "100%25 a%0D%0Ab"
    assert github.escape_property("a: b, c%\n") == "a%3A b%2C c%25%0A"


def test_github_annotations(mixed):
    lines = github.annotation_lines(mixed)
    assert len(lines) == 4  # failed, timed_out, error, hidden failed: the caller chooses what is shown
    first = lines[0]
    assert first.startswith("::error title=labctl blocking-echo%3A slow client <K=3> (failed)::")
    message = first.split("::", 2)[2]
    assert message == ('expected <200 OK> & got "500" \'x\' ]]> 100%25 done%0D%0Aline two: a,b\\x1b[31m\\x00 ü')
    assert all("\n" not in line and "\r" not in line and "\x1b" not in line for line in lines)
    assert "(timed out)" in lines[1]


def test_github_summary(mixed):
    markdown = RENDERERS["github"].render(mixed)
    assert markdown.startswith("## ❌ labctl blocking-echo: A blocking server: 6/13 points")
    assert "| ✅ | serves index | passed | 2/2 | 0.25 s |" in markdown
    assert "| ❌ | slow client &lt;K=3&gt; | failed | 0/2 |" in markdown
    assert "| ❌ | many clients | timed out | 0/3 |" in markdown
    assert "*(hidden)*" in markdown
    assert markdown.count("<details>") == 4 and markdown.count("</details>") == 4
    assert "p99_ms: 5012.25" in markdown
    assert "\x1b" not in markdown and "\x00" not in markdown and "\\x1b[31m" in markdown


def test_github_summary_fences_survive_backticks():
    report = report_of([check("x", "failed", message="look: ```\nrm -rf /\n```")])
    markdown = github.render(report)
    assert "````text\n" in markdown


def test_github_writes_summary_and_annotations(mixed, tmp_path, monkeypatch, capsys):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    console = Console(file=io.StringIO())
    assert write_reports(mixed, ["github"], console) == [str(summary)]
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n## ❌ labctl")  # appended, not replaced
    out = capsys.readouterr().out
    assert out.count("::error title=") == 4


def test_github_without_summary_prints_it(all_passed, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    buffer = io.StringIO()
    assert write_reports(all_passed, ["github"], Console(file=buffer, width=200)) == []
    shown = buffer.getvalue()
    assert "GITHUB_STEP_SUMMARY is not set" in shown and "## ✅ labctl blocking-echo" in shown
    assert "::error" not in capsys.readouterr().out


# -- terminal -----------------------------------------------------------------------------------------

def test_terminal(mixed):
    text = RENDERERS["terminal"].render(mixed)
    for name in ("serves index", "slow client <K=3>", "many clients", "idle cpu", "secret passes (hidden)"):
        assert name in text
    assert "score 6/13 points" in text and "2 of 6 checks passed" in text
    assert "the check ran out of its 30 s budget" in text  # failed checks' messages below the table
    assert "p99_ms: 5012.25" in text
    assert "hidden ok" not in text  # passed checks' messages are not repeated
    assert "\x1b" not in text and "\\x1b[31m" in text  # a student's colour codes are shown, not obeyed


def test_terminal_says_what_the_server_used(mixed):
    from labctl.results import ServerUsage

    assert "your server used" not in RENDERERS["terminal"].render(mixed)
    used = mixed.model_copy(update={"server_usage": ServerUsage(seconds=14.25, cpu_seconds=0.2, peak_tasks=9)})
    assert "your server used 0.20 s of CPU in 14.2 s of checks, at most 9 processes and threads" in \
        RENDERERS["terminal"].render(used)


def test_terminal_markup_in_names_is_not_interpreted():
    report = report_of([check("[bold]x[/bold] [red]", "failed", message="[link=x]m[/link]")])
    buffer = io.StringIO()
    write_reports(report, ["terminal"], Console(file=buffer, width=120, color_system=None))
    assert "[bold]x[/bold] [red]" in buffer.getvalue() and "[link=x]m[/link]" in buffer.getvalue()


def test_terminal_not_gradable(not_gradable):
    text = RENDERERS["terminal"].render(not_gradable)
    assert "not gradable: the server never listened on port 8080" in text


# -- specs, paths, errors -----------------------------------------------------------------------------

def test_parse_spec_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(gradescope, "AUTOGRADER_ROOT", tmp_path / "nope")
    monkeypatch.setattr(prairielearn, "GRADE_ROOT", tmp_path / "nope")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert parse_spec("json").target == Path("labctl-report.json")
    assert parse_spec("junit").target == Path("labctl-junit.xml")
    assert parse_spec("gradescope").target == Path("results.json")
    assert parse_spec("prairielearn").target == Path("results.json")
    assert parse_spec("terminal").target is None
    assert parse_spec("github").target is None
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", "/tmp/step_summary")
    assert parse_spec("github").target == Path("/tmp/step_summary")


def test_parse_spec_platform_paths(monkeypatch, tmp_path):
    (tmp_path / "autograder").mkdir()
    (tmp_path / "grade").mkdir()
    monkeypatch.setattr(gradescope, "AUTOGRADER_ROOT", tmp_path / "autograder")
    monkeypatch.setattr(prairielearn, "GRADE_ROOT", tmp_path / "grade")
    assert parse_spec("gradescope").target == tmp_path / "autograder" / "results" / "results.json"
    assert parse_spec("prairielearn").target == tmp_path / "grade" / "results" / "results.json"


def test_parse_spec_paths():
    assert parse_spec("junit:out/junit.xml").target == Path("out/junit.xml")
    assert parse_spec("JSON:a:b.json").target == Path("a:b.json")  # only the first ':' splits
    assert parse_spec("json:-").target is None
    assert parse_spec(" junit:x.xml").renderer.name == "junit"


@pytest.mark.parametrize("spec, words", [
    ("xml", ["'xml'", "terminal, json, junit, gradescope, prairielearn, github, classroom"]),
    ("xml:out.xml", ["'xml'", "choose one of"]),
    ("", ["no format given", "junit"]),
    (":out.xml", ["no format given"]),
    ("junit:", ["path after 'junit:' is empty"]),
])
def test_bad_specs(spec, words):
    with pytest.raises(LabctlError) as caught:
        parse_spec(spec)
    for word in words:
        assert word in str(caught.value)
    assert caught.value.exit_code == 2


def test_write_reports_all_formats(mixed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    console = Console(file=io.StringIO(), width=120)
    specs = ["terminal", "json", "junit:out/deep/junit.xml", "gradescope:gs/results.json",
             "prairielearn:pl/results.json", "github:summary.md", "terminal:report.txt"]
    written = write_reports(mixed, specs, console)
    assert written == ["labctl-report.json", "out/deep/junit.xml", "gs/results.json", "pl/results.json",
                       "summary.md", "report.txt"]
    validate_json("json", (tmp_path / "labctl-report.json").read_text(encoding="utf-8"))
    validate_json("gradescope", (tmp_path / "gs/results.json").read_text(encoding="utf-8"))
    validate_json("prairielearn", (tmp_path / "pl/results.json").read_text(encoding="utf-8"))
    junit_text = (tmp_path / "out/deep/junit.xml").read_text(encoding="utf-8")
    xsd_validate(junit_text)
    strict_structure(ET.fromstring(junit_text))
    assert "score 6/13 points" in console.file.getvalue()
    assert "\x1b" not in (tmp_path / "report.txt").read_text(encoding="utf-8")
    assert not list(tmp_path.rglob("*.tmp"))


def test_write_reports_json_to_stdout(all_passed, capsys):
    assert write_reports(all_passed, ["json:-"], Console(file=io.StringIO())) == []
    assert json.loads(capsys.readouterr().out) == all_passed.model_dump(mode="json")


def test_two_reports_one_file_refused_before_writing(mixed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gradescope, "AUTOGRADER_ROOT", tmp_path / "nope")
    monkeypatch.setattr(prairielearn, "GRADE_ROOT", tmp_path / "nope")
    with pytest.raises(LabctlError, match="would both write results.json"):
        write_reports(mixed, ["json", "gradescope", "prairielearn"], Console(file=io.StringIO()))
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(LabctlError, match="unknown report format 'yaml'"):
        write_reports(mixed, ["json", "yaml"], Console(file=io.StringIO()))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_path_is_a_clear_error(mixed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LabctlError) as caught:
        write_reports(mixed, ["junit:file/junit.xml", "json:ok.json"], Console(file=io.StringIO()))
    message = str(caught.value)
    assert "the junit report could not be written to" in message and "file" in message
    assert "written: ok.json" in message  # the other reports were still written
    assert (tmp_path / "ok.json").exists()
    with pytest.raises(LabctlError, match="the gradescope report could not be written"):
        write_reports(mixed, [f"gradescope:{tmp_path}"], Console(file=io.StringIO()))


def test_every_format_has_a_renderer_and_schema_files_exist(mixed, not_gradable, all_passed):
    assert list(RENDERERS) == ["terminal", "json", "junit", "gradescope", "prairielearn", "github", "classroom"]
    for renderer in RENDERERS.values():
        if renderer.schema:
            assert renderer.schema_path.is_file()
        for report in (mixed, not_gradable, all_passed):
            assert renderer.render(report)


# -- a lesson (0 points) is never a failure; GitHub's annotation limit ---------------------------------

@pytest.fixture
def with_lesson() -> GradeReport:
    """Full marks, and a lesson whose demonstration did what it shows (blocking's slow client)."""
    return report_of([check("serves index"),
                      check("slow client blocks", "failed", max_points=0.0, check="slow_client",
                            message="a slow client held the others 5.0 s: what a blocking server does")],
                     server_log_tail="")


def test_a_lesson_is_not_a_failure_anywhere(with_lesson):
    assert with_lesson.all_passed and with_lesson.exit_code == 0
    root = ET.fromstring(RENDERERS["junit"].render(with_lesson))
    xsd_validate(RENDERERS["junit"].render(with_lesson))
    strict_structure(root)
    suite = root.find("testsuite")
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("0", "0", "1")
    assert root.find(".//failure") is None and root.find(".//error") is None
    skipped = suite.find("testcase[@name='slow client blocks']/skipped")
    assert skipped.get("message").startswith("a lesson, not graded (failed): a slow client held")
    lines = github.annotation_lines(with_lesson)
    assert [line.split(" ", 1)[0] for line in lines] == ["::notice"]
    assert "(a lesson%2C not graded)::a slow client held" in lines[0]
    summary = RENDERERS["github"].render(with_lesson)
    assert summary.startswith("## ✅") and "| 💡 | slow client blocks |" in summary and "❌" not in summary
    assert "1 of 1 check passed, and 1 lesson" in summary
    document = validate_json("gradescope", RENDERERS["gradescope"].render(with_lesson))
    lesson = next(test for test in document["tests"] if test["name"].startswith("slow client blocks"))
    assert "status" not in lesson and lesson["max_score"] == 0
    assert "Failed:" not in document["output"]


def test_terminal_tells_a_lesson_apart(with_lesson):
    text = RENDERERS["terminal"].render(with_lesson)
    assert "a lesson, not graded" in text and "a slow client held the others" in text
    assert "1 of 1 check passed, and 1 lesson" in text


def test_github_at_most_nine_errors_then_one_to_the_summary():
    many = report_of([check(f"check {n}", "failed") for n in range(12)])
    lines = github.annotation_lines(many)
    assert len(lines) == 10 and all(line.startswith("::error ") for line in lines)
    assert "check 8 (failed)" in lines[8] and "3 more failed checks" in lines[9] and "job summary" in lines[9]
    exactly = github.annotation_lines(report_of([check(f"check {n}", "failed") for n in range(9)]))
    assert len(exactly) == 9 and "more failed" not in exactly[-1]
