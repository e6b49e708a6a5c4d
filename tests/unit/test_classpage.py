"""The class page's data and its escaping, on batch folders made in tmp_path from REAL reports (real gradings
of solutions, starters and mutants: tests/unit/class_reports, see regenerate.sh there) and synthetic hostile
rows. The verdicts asserted here are those the real gradings gave."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from labctl import models
from labctl.batch import classpage
from labctl.batch.classpage import (
    NOT_OBSERVED,
    failure_groups,
    io_model_of,
    model_counts,
    normalise,
    pass_rates,
    read_class,
    render,
    write_class_page,
)
from labctl.exercise import Exercise, load_exercise

from .class_folder import Entry, real_entries, write_class

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exercises() -> dict[str, Exercise]:
    return {name: load_exercise(ROOT / "exercises" / name) for name in ("blocking", "threaded", "polling")}


def real_class(tmp_path: Path, exercise: Exercise, extra: list[Entry] | None = None):
    out = write_class(tmp_path / "out", exercise, real_entries(exercise.id) + (extra or []))
    return out, read_class(out, exercise)


# -- reading --------------------------------------------------------------------------------------

def test_a_real_class_is_read_with_every_status(tmp_path, exercises):
    crashed = Entry("crashed", "error", "the grading left no report (exit 3): engine gone", 61.0)
    out, data = real_class(tmp_path, exercises["blocking"], [crashed])
    by_id = {student.id: student for student in data.students}
    assert [student.id for student in data.students] == [entry.id for entry in real_entries("blocking")] + ["crashed"]
    assert classpage.statuses(data) == {"graded": 6, "not gradable": 1, "error": 1}
    assert (by_id["solution"].score, by_id["solution"].max_score) == (14.0, 14.0)
    assert (by_id["starter"].score, by_id["crash_on_request"].score) == (8.0, 0.0)
    assert by_id["never_listens"].message.startswith("the server did not start")
    assert by_id["solution"].files[0] == "report.json" and "job.json" in by_id["solution"].files
    assert by_id["solution"].worker == "grader-1" and by_id["solution"].finished_at.startswith("2026-12-03T22:")
    assert by_id["crashed"].report is None and by_id["crashed"].problems == ()
    assert data.notes == []
    assert [student.id for student in classpage.slowest(data, 2)] == ["crashed", "never_listens"]


def test_without_a_gradebook_the_folders_are_the_class(tmp_path, exercises):
    out = write_class(tmp_path / "out", exercises["threaded"], real_entries("threaded"), gradebook=False)
    data = read_class(out, exercises["threaded"])
    assert sorted(student.id for student in data.students) == ["blocking_solution", "fork_bomb", "solution", "starter"]
    assert {student.id: student.score for student in data.students}["solution"] == 15.0   # from its report
    assert any("no gradebook.csv" in note for note in data.notes)


# -- pass rates, models, failures -----------------------------------------------------------------

def test_pass_rates_of_a_real_class(tmp_path, exercises):
    _, data = real_class(tmp_path, exercises["blocking"])
    rates = {rate.name: rate for rate in pass_rates(data)}
    assert list(rates) == [spec.name for spec in exercises["blocking"].checks]
    # Of the 6 graded: solution, busy_poll, threaded_solution, polling_solution serve files; starter, crash do not.
    assert (rates["get-index"].passed, rates["get-index"].failed) == (4, 2)
    assert (rates["asleep-in-accept"].passed, rates["asleep-in-accept"].failed) == (3, 3)
    assert (rates["io-model"].passed, rates["io-model"].ran, rates["io-model"].visibility) == (2, 6, "hidden")
    assert rates["slow-client-lesson"].lesson and rates["slow-client-lesson"].passed == 3
    assert rates["get-index"].rate == pytest.approx(4 / 6)


def test_the_class_is_classified_with_the_models_words(tmp_path, exercises):
    _, blocking = real_class(tmp_path / "b", exercises["blocking"])
    found = {count.model: (count.students, count.expected) for count in model_counts(blocking)}
    assert found == {"blocking": (2, True), "thread-per-connection": (1, False), "event-loop": (1, False),
                     "busy-polling": (1, False), NOT_OBSERVED: (1, False)}   # crash_on_request: io-model not run
    assert [count.model for count in model_counts(blocking)] == ["blocking", "thread-per-connection", "event-loop",
                                                                 "busy-polling", NOT_OBSERVED]   # models.py's order
    _, threaded = real_class(tmp_path / "t", exercises["threaded"])
    assert {count.model: count.students for count in model_counts(threaded)} == {
        "thread-per-connection": 1, "blocking": 2, NOT_OBSERVED: 1}
    _, polling = real_class(tmp_path / "p", exercises["polling"])
    counts = {count.model: count for count in model_counts(polling)}
    assert (counts["event-loop"].students, counts["event-loop"].family, counts["event-loop"].expected) == \
        (2, "event-driven", True)
    assert counts["blocking"].students == 1 and counts[NOT_OBSERVED].students == 1   # log_flood: io-model errored
    for count in [*model_counts(blocking), *model_counts(threaded), *model_counts(polling)]:
        assert count.model in models.MODELS or count.model in models.NOT_MODELS or count.model == NOT_OBSERVED


def test_a_forged_model_is_not_counted_as_one(tmp_path, exercises):
    report = json.loads((ROOT / "tests/unit/class_reports/blocking/solution/report.json").read_text())
    for result in report["results"]:
        if result["check"] == "io_model":
            result["evidence"]["model"] = "<b>quantum</b>"
    _, data = real_class(tmp_path, exercises["blocking"], [Entry("forged", report=report)])
    forged = next(student for student in data.students if student.id == "forged")
    assert io_model_of(forged) == NOT_OBSERVED
    never = next(student for student in data.students if student.id == "never_listens")
    assert io_model_of(never) is None          # not graded: nothing to classify


@pytest.mark.parametrize(("one", "other"), [
    ("the grading took 3.2 s", "the grading took 4.1 s"),
    ("no answer from 10.0.3.2:8080 after 5 s", "no answer from 172.18.0.5:9000 after 12 s"),
    ("thread 7 (python3, main) is asleep in epoll_wait (232)", "thread 12 (python3, main) is asleep in epoll_wait (232)"),
    ("lab labctl-3fa9c1 is gone", "lab labctl-b07d2e is gone"),
    ("expected sha256 7909c85a70c4…, got e3b0c44298fc…", "expected sha256 7909c85a70c4…, got 0d1042f312bf…"),
    ("see /tmp/labctl-job-x81kq/out/report.json", "see /tmp/labctl-job-0zzp1/out/report.json"),
    ("used 78% of a CPU\nIts log ends with:\nspin 1", "used 71% of a CPU\nIts log ends with:\nspin 2"),
])
def test_messages_that_differ_by_numbers_ports_and_ids_group(one, other):
    assert normalise(one) == normalise(other)


@pytest.mark.parametrize(("one", "other"), [
    ("asleep in epoll_wait", "asleep in pselect6"),
    ("answered 404", "crashed"),
])
def test_messages_that_differ_in_words_do_not(one, other):
    assert normalise(one) != normalise(other)


def test_failures_group_across_students_and_checks(tmp_path, exercises):
    starter = json.loads((ROOT / "tests/unit/class_reports/blocking/starter/report.json").read_text())
    slow = [Entry(f"slow{number}", "error", f"the grading did not end within {seconds} s and was stopped", seconds)
            for number, seconds in enumerate((240.5, 241.25, 300))]
    copies = [Entry(f"starter{number}", report=starter) for number in range(3)]
    _, data = real_class(tmp_path, exercises["blocking"], slow + copies)
    groups = {group.pattern: group for group in failure_groups(data)}
    stopped = groups["the grading did not end within N s and was stopped"]
    assert stopped.students == ["slow0", "slow1", "slow2"] and stopped.checks == {"error": 3}
    top = failure_groups(data)[0]
    assert len(top.students) == 4 and set(top.students) == {"starter", "starter0", "starter1", "starter2"}
    cascade = next(group for group in groups.values() if group.pattern.startswith("not run: the server stopped"))
    # One student, nine checks not run after the crash (the tenth is the lesson, which is no failure).
    assert cascade.students == ["crash_on_request"] and len(cascade.checks) == 9
    # A lesson is never a failure: the solution's slow-client lesson "failed" and is in no group.
    assert not any("slow-client-lesson" in group.checks for group in groups.values())
    never = next(student for student in data.students if student.id == "never_listens")
    assert groups[normalise(never.message)].checks == {"not gradable": 1}


# -- hostile rows ---------------------------------------------------------------------------------

class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs


HOSTILE = [
    Entry("<script>alert(1)</script>", "error", "</svg><script>alert(2)</script>", 1.0, folder=False),
    Entry("\"><img src=x onerror=alert(3)>", "not gradable", "<iframe src=//evil>", 1.0),
    Entry("javascript:alert(4)", "error", "\x1b]0;owned\x07 \u202eevil", 1.0),
    Entry("..", "graded", "", 1.0, folder=False),
    Entry("a&b", "not gradable", "x" * 100_000, 1.0),
    Entry("weird", "<b>bold</b>", "a status nobody knows", 1.0),
]


def test_hostile_names_and_messages_are_text(tmp_path, exercises):
    solution = json.loads((ROOT / "tests/unit/class_reports/blocking/solution/report.json").read_text())
    for result in solution["results"]:           # a failure whose message carries the server's words
        if result["name"] == "get-index":
            result.update(status="failed", points=0.0, message="got </svg><script>alert(5)</script> instead")
    forged = Entry("evidence", report=solution, name="<script>alert(6)</script>")
    out, data = real_class(tmp_path, exercises["blocking"], [*HOSTILE, forged])
    page = render(data)
    parsed = Tags()
    parsed.feed(page)
    assert not {"script", "img", "iframe", "object", "embed", "link", "base", "form"} & set(parsed.tags)
    assert not [name for name, _ in parsed.attributes if name.startswith("on")]
    hrefs = [value or "" for name, value in parsed.attributes if name == "href" and not (value or "").startswith("#")]
    assert hrefs and all(not re.match(r"^([a-z]+:|/|\.\.)", link) for link in hrefs), hrefs
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;/svg&gt;&lt;script&gt;alert(2)" in page
    assert "&lt;script&gt;alert(5)&lt;/script&gt;" in page and "&lt;script&gt;alert(6)&lt;/script&gt;" in page
    assert "%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%283%29%3E/report.json" not in page   # no report: no link
    assert "javascript%3Aalert%284%29/grading.log" in page
    assert "\x1b" not in page and "\\x1b]0;owned\\x07" in page and "\u202e" not in page
    assert "x" * (classpage.MESSAGE_LIMIT + 1) not in page
    assert "gradebook says status" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    dotdot = next(student for student in data.students if student.id == "..")
    assert dotdot.folder is None and dotdot.problems == ("no folder of its own in the output",)


def test_files_that_lie_are_not_trusted(tmp_path, exercises):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "report.json").write_text((ROOT / "tests/unit/class_reports/blocking/solution/report.json").read_text())
    entries = [Entry("broken", raw_report=b"{not json"), Entry("huge", raw_report=b" " * (classpage.MAX_REPORT_BYTES + 1)),
               Entry("other-schema", raw_report=json.dumps({"score": 99}).encode()), Entry("linked", folder=False)]
    out = write_class(tmp_path / "out", exercises["blocking"], entries)
    (out / "linked").symlink_to(outside)
    data = read_class(out, exercises["blocking"])
    problems = {student.id: student.problems for student in data.students}
    assert "not a labctl report" in problems["broken"][0] and "over" in problems["huge"][0]
    assert "not a labctl report" in problems["other-schema"][0]
    assert problems["linked"] == ("no folder of its own in the output",)     # a link out is never followed
    assert all(student.report is None for student in data.students)
    assert "secret" not in render(data)


def test_a_gradebook_that_breaks_csv_keeps_what_came_before(tmp_path, exercises):
    out = write_class(tmp_path / "out", exercises["blocking"], real_entries("blocking"))
    with open(out / "gradebook.csv", "a") as sink:
        sink.write('late,1,14,graded,1,"' + "y" * 200_000 + '"\nlast,1,14,graded,1\n')
    data = read_class(out, exercises["blocking"])
    assert len(data.students) == 7 and any("line" in note for note in data.notes)


# -- the page -------------------------------------------------------------------------------------

def test_the_page_is_self_contained_and_shows_hidden_checks(tmp_path, exercises):
    out, _ = real_class(tmp_path, exercises["blocking"])
    page = write_class_page(out, exercises["blocking"]).read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.count("<svg") == 3 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    outside = re.findall(r"(?:src|href)=\"(?!#)[a-z]+:", page) + re.findall(r"url\((?!#)", page)
    assert outside == []
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))                 # three plots, no id shared
    assert "hidden checks are shown" in page and ">io-model</td>" in page and ">hidden</td>" in page
    assert "A blocking web server" in page and "batch finished 2026-12-03 22:03 UTC" in page
    assert re.search(r"<td><b>blocking</b></td><td>one client at a time", page)


def test_a_class_of_a_thousand_stays_small(tmp_path, exercises):
    """Bounded: what a student adds to the page does not depend on how long their messages are (the page's
    time and size for 1000 students are in tests/bench/bench_classpage.py)."""
    real = real_entries("blocking")
    entries = [Entry(f"student{number:04d}", real[number % len(real)].status,
                     real[number % len(real)].message + "z" * (number * 50), 20.0, real[number % len(real)].report)
               for number in range(140)]
    out = write_class(tmp_path / "out", exercises["blocking"], entries)
    size = write_class_page(out, exercises["blocking"]).stat().st_size
    assert size < 140 * 1500 + 150_000, size
