"""Names end where they end: a trailing newline is refused everywhere a name is checked.

Python's `$` matches before a final newline; the patterns here are shared with the JSON
Schemas (where `$` is the very end), so Python code must use fullmatch. Each validator that
runs in Python gets a name with a newline after it.
"""

from __future__ import annotations

import pytest

from labctl import spec
from labctl.authoring import new_exercise
from labctl.errors import LabctlError
from labctl.exercise import _check_name
from labctl.lab import Lab


@pytest.mark.parametrize("validate, good", [
    (_check_name, "get-index"),
    (spec._sysctl_name, "net.ipv4.tcp_syncookies"),
    (spec._memory, "256m"),
])
def test_python_validators_refuse_a_trailing_newline(validate, good):
    assert validate(good) in (good, good.lower())
    for bad in (good + "\n", good + "\r\n", good + "\n" + good):
        with pytest.raises(ValueError):
            validate(bad)


def test_lab_ids_and_exercise_ids_refuse_a_trailing_newline(tmp_path):
    with pytest.raises(LabctlError, match="lab name"):
        Lab.create(spec.load_lab(spec_path()), backend=None, name="mylab\n")  # type: ignore[arg-type]
    with pytest.raises(LabctlError, match="exercise id"):
        new_exercise(tmp_path, "ex\n")


def spec_path():
    from conftest import ROOT

    return ROOT / "lab.yaml"
