"""The published manifest JSON Schema: matches the formats table, accepts real bundles, refuses bad ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from veca_deploy.bundle.manifest import SCHEMA_FILE, Manifest, check_schema, schema
from veca_deploy.errors import BundleError
from veca_deploy.formats import FORMATS, PRECISIONS, docs_table

ROOT = Path(__file__).resolve().parent.parent


def test_schema_enums_come_from_the_formats_table():
    art = schema()["$defs"]["artifact"]["properties"]
    assert art["format"]["enum"] == list(FORMATS)
    assert art["precision"]["enum"] == list(PRECISIONS)


def test_docs_copy_of_the_schema_is_the_packaged_one():
    assert json.loads((ROOT / "docs" / "manifest.schema.json").read_text()) == json.loads(SCHEMA_FILE.read_text())


def test_exported_bundles_validate(tiny_bundle, reference_bundle):
    for b in (tiny_bundle, reference_bundle):
        d = json.loads((b / "manifest.json").read_text())
        check_schema(d)  # no exception
        assert d["golden"]["outputs"]


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d["artifacts"][0].update(batch=0), "artifacts/0/batch"),
    (lambda d: d["artifacts"][0].update(sha256="z" * 64), "artifacts/0/sha256"),
    (lambda d: d["golden"]["inputs"]["28x28"].update(path="../escape.npz"), "golden/inputs/28x28"),
    (lambda d: d["preprocess"].update(color_order="CMYK"), "preprocess/color_order"),
])
def test_schema_violations_are_one_line_bundle_errors(tiny_bundle, mutate, where):
    d = copy.deepcopy(json.loads((tiny_bundle / "manifest.json").read_text()))
    mutate(d)
    with pytest.raises(BundleError, match=f"schema at {where}") as e:
        Manifest.from_dict(d)
    assert "\n" not in str(e.value)


def test_readme_format_table_is_generated_from_the_formats_table():
    assert docs_table() in (ROOT / "README.md").read_text()
