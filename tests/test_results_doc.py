"""docs/results.md describes every column of every table the harness writes."""

import dataclasses
import re
from pathlib import Path

import pytest

from mtl import SCHEMAS, TrainConfig

DOC = (Path(__file__).parent.parent / "docs" / "results.md").read_text()
# A family of columns the doc names once: `recall_<pattern>`, `cv_<metric>_std`, ...
FAMILIES = [
    re.sub(r"<[a-z]+>", "[a-z_]+", name)
    for name in re.findall(r"`([a-z_]*<[a-z]+>[a-z_]*)`", DOC)
    if re.sub(r"<[a-z]+>", "", name)  # not a bare placeholder, which would match anything
]


def _documented(table: str, column: str) -> bool:
    if f"`{column}`" in DOC:
        return True
    if table == "trials" and column in {f.name for f in dataclasses.fields(TrainConfig)}:
        return "every `TrainConfig` field" in DOC
    return any(re.fullmatch(family, column) for family in FAMILIES)


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_every_column_is_documented(table):
    assert f"## {table}.parquet" in DOC
    missing = [c for c in SCHEMAS[table].names if not _documented(table, c)]
    assert not missing, f"docs/results.md does not describe {table}.{missing}"
