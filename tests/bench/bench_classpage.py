"""Benchmark: the class page of a class of 1000 (or N) students.

    python3 tests/bench/bench_classpage.py [N]

Makes a batch folder of N students from the real reports of tests/unit/class_reports (every status,
hostile names and long messages among them), then times write_class_page (reading, then rendering with
the plots) and prints the page's size, its bytes per student, and, when Debian's chromium is there, how
long a headless browser takes to open it and how many errors it reported (must be 0).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests")]

from integration.browser import Chromium, find_chromium  # noqa: E402
from unit.class_folder import Entry, real_entries, write_class  # noqa: E402

from labctl.batch.classpage import read_class, render, write_class_page  # noqa: E402
from labctl.project import Project  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    exercise = Project(ROOT).exercise("blocking")
    real = real_entries("blocking")
    entries = []
    for number in range(count):
        model = real[number % len(real)]
        name = f"student{number:05d}" if number % 10 else f"<b>evil</b> {number} \"quoted\""
        entries.append(Entry(name, model.status, model.message + (" took 3.2 s" * (number % 7)),
                             model.duration + number % 13, model.report))
    with tempfile.TemporaryDirectory(prefix="labctl-bench-classpage-") as scratch:
        out = write_class(Path(scratch) / "out", exercise, entries)
        started = time.monotonic()
        data = read_class(out, exercise)
        read = time.monotonic() - started
        render(data)
        first = time.monotonic() - started
        started = time.monotonic()
        page = write_class_page(out, exercise)
        whole = time.monotonic() - started
        size = page.stat().st_size
        print(f"{count} students: page {size / 1e6:.2f} MB ({size / count:.0f} bytes per student); "
              f"write_class_page {whole:.2f} s (reading {read:.2f} s; first render with matplotlib's import "
              f"{first:.2f} s)")
        executable = find_chromium()
        if executable:
            chromium = Chromium(executable, Path(scratch) / "profile", Path(scratch) / "chromium.log")
            try:
                started = time.monotonic()
                visit, seen = chromium.visit(page.as_uri(), evaluate={"rows": "document.querySelectorAll('tr').length"})
                print(f"chromium opened it in {time.monotonic() - started:.2f} s: {seen['rows']} table rows, "
                      f"{len(visit.errors)} errors {visit.errors[:3]}")
            finally:
                chromium.close()


if __name__ == "__main__":
    main()
