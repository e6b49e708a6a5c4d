#!/bin/sh
# Regenerates the real report.json files the class page's unit tests read (tests/unit/test_classpage.py):
# real gradings on the Docker engine of solutions, starters and mutants, each graded by one exercise
# (a "class" per exercise: <exercise>/<student>/report.json). Run from the repository's root:
#     sh tests/unit/class_reports/regenerate.sh
# then check the tests still say what they should (the verdicts are the real ones, not chosen).
set -u
here=tests/unit/class_reports
labctl=${LABCTL:-.venv/bin/labctl}
grade() {  # grade EXERCISE STUDENT SUBMISSION
    mkdir -p "$here/$1/$2"
    "$labctl" --quiet grade "$1" --submission "exercises/$3" --report "json:$here/$1/$2/report.json" >/dev/null 2>&1
    echo "$1/$2: exit $?"
}
grade blocking solution blocking/solution
grade blocking starter blocking/starter
grade blocking crash_on_request blocking/mutants/crash_on_request
grade blocking never_listens blocking/mutants/never_listens
grade blocking busy_poll polling/mutants/busy_poll
grade blocking threaded_solution threaded/solution
grade blocking polling_solution polling/solution
grade threaded solution threaded/solution
grade threaded starter threaded/starter
grade threaded fork_bomb threaded/mutants/fork_bomb
grade threaded blocking_solution blocking/solution
grade polling solution polling/solution
grade polling starter polling/starter
grade polling select_1024 polling/mutants/select_1024
grade polling log_flood polling/mutants/log_flood
