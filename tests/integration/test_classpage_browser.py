"""The class page in a real browser: Debian's headless Chromium opens it from disk with no network, and
reports no console error, no exception, nothing refused by the page's Content-Security-Policy and no
resource that failed to load; the hostile names read as text; the plots are drawn. The check can fail: the
same browser is shown a page that logs an error, throws, loads from a network and runs a script past the
class page's policy, and must report each.

The screenshot is kept: `<pytest's tmp folder>/class-page.png`, and `$LABCTL_TEST_ARTIFACTS/class-page.png`
when that variable names a folder (CI keeps it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from unit.class_folder import Entry, real_entries, write_class

from integration.browser import Chromium, find_chromium
from labctl.batch.classpage import write_class_page
from labctl.project import Project

HOSTILE_ID = "<script>alert(1)</script>"       # a gradebook row only: a name with "/" is no folder
HOSTILE_FOLDER = "\"><img src=x onerror=alert(2)>"
HOSTILE_MESSAGE = "</svg></table><script>alert(3)</script> took 3.2 s"


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Chromium]:
    executable = find_chromium()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("no chromium on this machine (apt-get install -y chromium)")
    folder = tmp_path_factory.mktemp("chromium")
    chromium = Chromium(executable, folder / "profile", folder / "chromium.log")
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def class_page(tmp_path_factory) -> Path:
    """The blocking exercise's real class (every status), with hostile rows."""
    exercise = Project(ROOT).exercise("blocking")
    real = real_entries("blocking")
    starter = next(entry for entry in real if entry.id == "starter")
    entries = [*real,
               Entry(HOSTILE_ID, "error", HOSTILE_MESSAGE, 5.0, folder=False),
               Entry(HOSTILE_FOLDER, "graded", "", 17.0, starter.report, name="../../etc/passwd"),
               Entry("javascript:alert(4)", "not gradable", "\x1b[2J\u202ebidi " + "x" * 5000, 1.0)]
    out = write_class(tmp_path_factory.mktemp("class") / "out", exercise, entries)
    return write_class_page(out, exercise)


def test_the_class_page_opens_with_no_error(browser: Chromium, class_page: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "class-page.png"
    visit, seen = browser.visit(class_page.as_uri(), screenshot=screenshot, evaluate={
        "scripts": "document.scripts.length",
        "rows": "[...document.querySelectorAll('table')].at(-1).querySelectorAll('tr').length - 1",
        "text": "document.body.innerText",
        "plots": "[...document.querySelectorAll('svg')].map(svg => svg.getBoundingClientRect().width"
                 " * svg.getBoundingClientRect().height)",
        "links": "[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))",
    })
    artifacts = os.environ.get("LABCTL_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / "class-page.png")
    assert visit.errors == []
    assert seen["scripts"] == 0
    assert seen["rows"] == 10                               # a row per student
    assert HOSTILE_ID in seen["text"] and HOSTILE_FOLDER in seen["text"]
    assert "alert(3)" in seen["text"] and "\\x1b[2J" in seen["text"] and "\\u202e" in seen["text"]
    assert "../../etc/passwd" in seen["text"]              # the entry's own name, shown as text
    assert len(seen["plots"]) == 3 and all(area > 10_000 for area in seen["plots"])
    assert all(not link.startswith(("/", "..", "javascript:", "http")) and ":" not in link for link in seen["links"])
    assert "%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%282%29%3E/report.json" in seen["links"]
    assert screenshot.stat().st_size > 50_000


def test_the_browser_check_catches_errors(browser: Chromium, class_page: Path, tmp_path: Path) -> None:
    """Each kind of error the test above looks for, made on purpose, is reported."""
    noisy = tmp_path / "noisy.html"
    noisy.write_text("<!DOCTYPE html><html><body><p>noisy</p><script>console.error('deliberate error');</script>"
                     "<script>throw new Error('deliberate exception');</script>"
                     "<img src=\"http://192.0.2.1/from-a-network.png\"></body></html>")
    visit, _ = browser.visit(noisy.as_uri())
    text = "\n".join(visit.errors)
    assert "console.error: deliberate error" in text
    assert "deliberate exception" in text
    assert "from-a-network.png" in text or "ERR_" in text, text

    # The class page itself with a script slipped in: its Content-Security-Policy refuses it, and says so.
    injected = tmp_path / "injected.html"
    injected.write_text(class_page.read_text().replace("</main>", "<script>window.alerted = 1</script></main>"))
    visit, seen = browser.visit(injected.as_uri(), evaluate={"alerted": "typeof window.alerted"})
    assert seen["alerted"] == "undefined"
    assert any("Content Security Policy" in error for error in visit.errors), visit.errors
