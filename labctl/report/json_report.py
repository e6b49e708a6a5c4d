"""The json report: exactly `report.model_dump(mode="json")`, indented; the schema is GradeReport's own.

    python3 -m labctl.report.json_report > labctl/report/schemas/labctl-report.schema.json
regenerates the published schema after a change to labctl/results.py (a test compares them).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from labctl.results import GradeReport

SCHEMA_FILE = "labctl-report.schema.json"
DEFAULT_PATH = "labctl-report.json"


#: Characters json.dumps(ensure_ascii=False) leaves raw that a terminal or viewer acts on (C1 controls,
#: bidi controls, line separators): written as \\uNNNN escapes instead, which decode to the same text.
_RAW_UNSAFE = re.compile("[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]")


def render(report: GradeReport) -> str:
    text = json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False)
    return _RAW_UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text) + "\n"


def schema() -> dict[str, Any]:
    """The JSON Schema of the json report (draft 2020-12), generated from GradeReport."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **GradeReport.model_json_schema()}


def schema_text() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def default_path() -> Path:
    return Path(DEFAULT_PATH)


if __name__ == "__main__":
    sys.stdout.write(schema_text())
