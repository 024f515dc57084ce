"""docs/report.schema.json is the JSON report's contract: real reports validate against it."""

import gzip
import json
import os

import jsonschema
import pytest

from synth import known_causes
from trace_quit.analysis import build_report, load, render

HERE = os.path.dirname(__file__)
DATA = os.path.join(HERE, "data")
SCHEMA_PATH = os.path.join(HERE, "..", "..", "docs", "report.schema.json")
FIXTURES = sorted(n for n in os.listdir(DATA) if n.endswith(".tqcap.gz"))


@pytest.fixture(scope="module")
def validator():
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def report(tmp_path, name):
    path = tmp_path / name[:-3]
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        path.write_bytes(f.read())
    return build_report(load(str(path)))


@pytest.mark.parametrize("name", FIXTURES)
def test_the_report_of_every_real_capture_validates(tmp_path, validator, name):
    validator.validate(json.loads(render(report(tmp_path, name), "json")))


def test_side_by_side_reports_validate(tmp_path, validator):
    reports = [report(tmp_path, FIXTURES[0]), build_report(load(known_causes(str(tmp_path / "kc.tq"))))]
    doc = json.loads(render(reports, "json"))
    validator.validate(doc)
    assert doc["schema"] == "trace-quit/reports/1"


def test_the_schema_catches_a_broken_report(tmp_path, validator):
    doc = json.loads(render(report(tmp_path, FIXTURES[0]), "json"))
    doc["com_quit"]["by_cause"]["gc"] = "18"  # a count as text
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(doc)
    del doc["com_quit"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(doc)
