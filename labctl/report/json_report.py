"""The json report: exactly `report.model_dump(mode="json")`, indented; the schema is GradeReport's own.

    python3 -m labctl.report.json_report > labctl/report/schemas/labctl-report.schema.json
regenerates the published schema after a change to labctl/results.py (a test compares them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from labctl.results import GradeReport

SCHEMA_FILE = "labctl-report.schema.json"
DEFAULT_PATH = "labctl-report.json"


def render(report: GradeReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def schema() -> dict[str, Any]:
    """The JSON Schema of the json report (draft 2020-12), generated from GradeReport."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **GradeReport.model_json_schema()}


def schema_text() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def default_path() -> Path:
    return Path(DEFAULT_PATH)


if __name__ == "__main__":
    sys.stdout.write(schema_text())
